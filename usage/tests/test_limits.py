"""Per-key limits: exact under concurrency across processes, with headers and 429s in each
surface's shape; token quotas; slowed key guessing."""

import concurrent.futures
import time
from datetime import timedelta

import openai
import pytest
import requests
from django.utils import timezone

from testsupport import bearer, wait_for_record, wait_for_records
from usage.models import RateCounter, UsageRecord, UsageRollup


def hour_now():
    return timezone.now().replace(minute=0, second=0, microsecond=0)


def test_exactly_the_limit_gets_through_two_gateway_processes(served_pair, make_key):
    key, raw = make_key(rate_limit=100)
    window = hour_now()
    urls = [f"{base}/api/version" for base in served_pair] * 150

    def call(url):
        return requests.get(url, headers=bearer(raw), timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool:
        statuses = list(pool.map(call, urls))
    if hour_now() != window:
        pytest.skip("the hourly window turned during the test")
    assert statuses.count(200) == 100
    assert statuses.count(429) == 200
    assert RateCounter.objects.get(key=key).requests == 100
    # Every request has exactly one record, and the rollups add up to the same.
    assert len(wait_for_records(300, key=key)) == 300
    assert UsageRecord.objects.filter(key=key, outcome="rate_limited").count() == 200
    for span in ("h", "d"):
        rows = UsageRollup.objects.filter(key_pk=key.pk, span=span)
        assert sum(rows.values_list("requests", flat=True)) == 300


def test_headers_on_every_authenticated_response(gateway, make_key, client_for):
    _, raw = make_key(rate_limit=5)
    for path in ("/api/version", "/v1/models", "/api/stats", "/api/keys"):
        response = requests.get(gateway + path, headers=bearer(raw), timeout=10)
        assert response.status_code in (200, 403), path
        for prefix in ("RateLimit", "X-RateLimit"):
            assert response.headers[f"{prefix}-Limit"] == "5"
            assert int(response.headers[f"{prefix}-Reset"]) <= 3601
    assert response.headers["RateLimit-Remaining"] == "1"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/keys", {"detail": "Rate limit exceeded"}),
        ("/api/version", {"error": "Rate limit exceeded"}),
        ("/api/stats", {"detail": "Rate limit exceeded"}),
    ],
)
def test_429_with_retry_after_in_the_surface_shape(gateway, make_key, path, body):
    _, raw = make_key("admin", rate_limit=1)
    assert requests.get(gateway + path, headers=bearer(raw), timeout=10).status_code == 200
    refused = requests.get(gateway + path, headers=bearer(raw), timeout=10)
    assert refused.status_code == 429
    assert refused.json() == body
    assert 0 < int(refused.headers["Retry-After"]) <= 3601
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_openai_sdk_raises_rate_limit_error(gateway, make_key):
    _, raw = make_key(rate_limit=1)
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=raw, max_retries=0)
    client.models.list()
    with pytest.raises(openai.RateLimitError) as raised:
        client.models.list()
    assert raised.value.body["type"] == "rate_limit_error"


def test_limit_change_applies_to_the_current_window(gateway, make_key):
    key, raw = make_key(rate_limit=1)
    requests.get(f"{gateway}/api/version", headers=bearer(raw), timeout=10)
    assert (
        requests.get(f"{gateway}/api/version", headers=bearer(raw), timeout=10).status_code == 429
    )
    key.rate_limit = 3
    key.save(update_fields=["rate_limit"])
    assert (
        requests.get(f"{gateway}/api/version", headers=bearer(raw), timeout=10).status_code == 200
    )


def test_token_quota_refuses_once_spent(gateway, make_key, fake_ollama):
    key, raw = make_key()
    key.token_quota = 10
    key.save(update_fields=["token_quota"])
    payload = {"model": "llama3.2", "prompt": "one two three", "stream": False}
    first = requests.post(f"{gateway}/api/generate", json=payload, headers=bearer(raw), timeout=10)
    assert first.status_code == 200
    used = first.json()["prompt_eval_count"] + first.json()["eval_count"]
    assert used < 10
    # Tokens are counted once each answer has gone out.
    wait_for_records(1, key=key)
    second = requests.post(f"{gateway}/api/generate", json=payload, headers=bearer(raw), timeout=10)
    assert second.status_code == 200
    wait_for_records(2, key=key)
    third = requests.post(f"{gateway}/api/generate", json=payload, headers=bearer(raw), timeout=10)
    assert third.status_code == 429
    assert third.json() == {"error": "Token quota exceeded"}
    midnight = (timezone.now() + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    assert int(third.headers["Retry-After"]) <= (midnight - timezone.now()).total_seconds() + 2


def test_guessing_keys_is_slowed(gateway, settings, db):
    settings.AUTH_FAILURES_PER_MINUTE = 3
    guesses = [
        requests.get(
            f"{gateway}/api/tags", headers=bearer(f"ollama-{i:043d}"), timeout=10
        ).status_code
        for i in range(5)
    ]
    assert guesses == [401, 401, 401, 429, 429]
    time.sleep(0.3)  # counted after the answers went out, in the rollups (no raw records)
    keyless = UsageRollup.objects.get(key_pk=0, span=UsageRollup.Span.HOUR)
    assert (keyless.n_denied, keyless.n_rate_limited) == (3, 2)


def test_openai_streams_count_tokens_even_unasked(gateway, make_key, fake_ollama):
    """The OpenAI API sends usage in a stream only when asked: the gateway asks for it, counts
    it, and keeps the extra event from a client that did not ask."""
    key, raw = make_key()
    key.token_quota = 20  # a call here uses about 8 tokens
    key.save(update_fields=["token_quota"])
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=raw, max_retries=0)
    messages = [{"role": "user", "content": "one two three"}]
    chunks = list(client.chat.completions.create(model="llama3.2", messages=messages, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    record = wait_for_record(key=key, route="/v1/chat/completions")
    assert record.completion_tokens == 5 and record.prompt_tokens > 0
    # Asked for, it is relayed as usual.
    asked = list(
        client.chat.completions.create(
            model="llama3.2",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage.completion_tokens == 5
    # The quota fills from streams too.
    list(client.chat.completions.create(model="llama3.2", messages=messages, stream=True))
    assert len(wait_for_records(3, key=key)) == 3
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="llama3.2", messages=messages, stream=True)
