"""One usage record per request that reached authentication, whatever its outcome, written
with a constant, small number of database round trips."""

import asyncio
import concurrent.futures
import time
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from keys.models import ApiKey
from proxy.backends import backend_pool
from testsupport import bearer, wait_for_records
from usage.models import UsageRecord, UsageRollup
from usage.stats import usage_stats


def test_records_name_their_outcome(gateway, user_key, fake_ollama, settings):
    key, raw = user_key
    url = gateway
    requests.post(
        f"{url}/api/generate",
        json={"model": "llama3.2", "prompt": "hi", "stream": False},
        headers=bearer(raw),
        timeout=10,
    )
    requests.post(f"{url}/api/generate", data=b"{", headers=bearer(raw), timeout=10)
    requests.post(f"{url}/api/pull", json={"model": "x"}, headers=bearer(raw), timeout=10)
    requests.get(f"{url}/api/tags", timeout=10)
    fake_ollama.configure(fail="error500")
    requests.post(
        f"{url}/api/chat",
        json={"model": "llama3.2", "messages": []},
        headers=bearer(raw),
        timeout=10,
    )
    records = wait_for_records(4)
    assert [(r.route, r.status, r.outcome) for r in records] == [
        ("/api/generate", 200, "ok"),
        ("/api/generate", 400, "bad_request"),
        ("/api/pull", 403, "denied"),
        ("/api/chat", 500, "upstream_error"),
    ]
    # Refused without a key: no raw record, counted in the rollups of key 0.
    keyless = UsageRollup.objects.filter(key_pk=0, span=UsageRollup.Span.HOUR).get()
    assert (keyless.requests, keyless.n_denied) == (1, 1)
    ok = records[0]
    assert ok.key == key and ok.model == "llama3.2"
    assert ok.completion_tokens == 5 and ok.prompt_tokens > 0
    assert ok.client_addr == "127.0.0.1" and len(ok.request_id) == 32
    assert ok.latency_ms > 0 and ok.ttft_ms is None


def test_upstream_timeout_is_recorded(gateway, user_key, fake_ollama, settings):
    settings.OLLAMA_READ_TIMEOUT = 0.3
    fake_ollama.configure(fail="hang")
    requests.post(
        f"{gateway}/api/chat",
        json={"model": "llama3.2", "messages": []},
        headers=bearer(user_key[1]),
        timeout=10,
    )
    assert [r.outcome for r in wait_for_records(1)] == ["timeout"]


@pytest.mark.parametrize("stream", [False, True])
def test_database_round_trips_per_proxied_request(client, user_key, fake_ollama, stream):
    """Through Django's connection (SQLite, or PostgreSQL outside the ASGI server): two
    statements on PostgreSQL, the key lookup with the rate-limit upsert, then the record with
    its rollups; SQLite runs each of those as two. The ASGI server's pooled path is counted in
    ollama_gateway/tests/test_event_loop.py."""
    key, raw = user_key
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    # The backend configuration is read once per BACKEND_CONFIG_INTERVAL per process, not per
    # request: read it before counting.
    backend_pool()
    with CaptureQueriesContext(connection) as queries:
        response = client.post(
            "/api/generate",
            {"model": "llama3.2", "prompt": "hi", "stream": stream},
            content_type="application/json",
            headers=bearer(raw),
        )
    assert response.status_code == 200, response.content
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    expected = 2 if connection.vendor == "postgresql" else 4
    assert len(statements) == expected, statements
    assert UsageRecord.objects.filter(key=key, outcome="ok").count() == 1


def test_unknown_routes_are_not_recorded(gateway, user_key):
    for path in ("/api/junk", "/v1/nothing/here", "/v1/messages/nothing"):
        response = requests.get(f"{gateway}{path}", headers=bearer(user_key[1]), timeout=10)
        assert response.status_code == 404
    assert UsageRecord.objects.count() == 0


def test_an_unauthenticated_flood_costs_a_constant_number_of_rows(gateway, settings):
    settings.AUTH_FAILURES_PER_MINUTE = 10
    wrong = bearer("ollama-" + "x" * 43)
    statuses = [
        requests.get(f"{gateway}/api/tags", headers=wrong, timeout=10).status_code
        for _ in range(40)
    ]
    assert statuses == [401] * 10 + [429] * 30
    time.sleep(0.5)  # written after the answers went out
    assert UsageRecord.objects.count() == 0
    # One hourly and one daily row, whatever the number of requests; the statistics see them.
    rows = UsageRollup.objects.filter(key_pk=0)
    assert rows.count() == 2
    hourly = rows.get(span=UsageRollup.Span.HOUR)
    assert (hourly.requests, hourly.n_denied, hourly.n_rate_limited) == (40, 10, 30)
    totals = usage_stats(start=timezone.now() - timedelta(hours=1), end=timezone.now())["totals"]
    assert (totals["requests"], totals["outcomes"]["denied"], totals["rate_limited"]) == (
        40,
        10,
        30,
    )


def test_requests_without_credentials_are_slowed_too(gateway, settings, db):
    settings.AUTH_FAILURES_PER_MINUTE = 2
    statuses = [requests.get(f"{gateway}/api/tags", timeout=10).status_code for _ in range(4)]
    assert statuses == [401, 401, 429, 429]


def test_a_lost_record_never_cuts_a_stream(gateway, user_key, fake_ollama, monkeypatch, caplog):

    from usage import services

    # A real statement that fails, on whichever path the record takes.
    monkeypatch.setattr(services, "_RECORD_INSERT", "INSERT INTO no_such_table VALUES (1)")
    failing = "SELECT {} FROM no_such_table".format(", ".join(["%s"] * 29))  # noqa: S608
    monkeypatch.setattr(services, "_pg_records_statement", lambda: failing)
    response = requests.post(
        f"{gateway}/api/generate",
        json={"model": "llama3.2", "prompt": "hi"},
        headers=bearer(user_key[1]),
        timeout=10,
    )
    lines = [line for line in response.iter_lines() if line]
    assert response.status_code == 200 and b'"done": true' in lines[-1].replace(
        b'":true', b'": true'
    )
    # The record is written after the answer went out: wait for its failure to be logged.
    deadline = time.monotonic() + 5
    while "usage record lost" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "usage record lost" in caplog.text


def test_a_stream_cut_short_is_charged_for_what_it_delivered(gateway, user_key, fake_ollama):
    """The client hangs up before Ollama's final counters: the tokens relayed still count."""
    fake_ollama.configure(tokens=50, token_delay=0.02)
    response = requests.post(
        f"{gateway}/api/generate",
        json={"model": "llama3.2", "prompt": "hi"},
        headers=bearer(user_key[1]),
        stream=True,
        timeout=10,
    )
    lines = response.iter_lines()
    for _ in range(10):
        next(lines)
    response.close()
    (record,) = wait_for_records(1)
    assert record.outcome == "client_closed"
    assert 10 <= record.completion_tokens < 50


def test_rate_limited_records_keep_their_model(gateway, make_key, fake_ollama):
    _, raw = make_key(rate_limit=1)
    for _ in range(2):
        answer = requests.post(
            f"{gateway}/v1/chat/completions",
            json={"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}]},
            headers=bearer(raw),
            timeout=10,
        )
    assert answer.status_code == 429
    records = wait_for_records(2)
    assert [(r.status, r.model) for r in records] == [(200, "qwen2.5:0.5b"), (429, "qwen2.5:0.5b")]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/messages", {"max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"input": "hi"}),
    ],
)
def test_a_cut_anthropic_or_responses_stream_is_charged(gateway, user_key, fake_ollama, path, body):
    fake_ollama.configure(tokens=50, token_delay=0.02)
    response = requests.post(
        f"{gateway}{path}",
        json={"model": "llama3.2", "stream": True, **body},
        headers=bearer(user_key[1]),
        stream=True,
        timeout=10,
    )
    events = (line for line in response.iter_lines() if line.startswith(b"data:"))
    deltas = 0
    while deltas < 10:
        deltas += b"delta" in next(events)
    response.close()
    (record,) = wait_for_records(1)
    assert record.outcome == "client_closed"
    assert 8 <= record.completion_tokens < 50


def test_concurrent_records_add_up_exactly(gateway, make_key, fake_ollama):
    """Many requests ending at once (written several per statement on PostgreSQL): every
    record once, and the rollups and the minute counters equal the sums of the records."""
    from django.db.models import Count, Sum

    from usage.models import TokenCounter

    fake_ollama.configure(tokens=5)
    keys = [make_key(rate_limit=1000, tokens_per_minute=10**6 if i % 2 else None) for i in range(4)]

    def call(i):
        _, raw = keys[i % 4]
        model = "llama3.2" if i % 5 else "no-such-model"
        return requests.post(
            f"{gateway}/api/generate",
            json={"model": model, "prompt": "hi", "stream": bool(i % 3)},
            headers=bearer(raw),
            timeout=30,
        ).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(pool.map(call, range(160)))
    assert statuses.count(200) == 128 and statuses.count(404) == 32
    records = wait_for_records(160)
    assert len(records) == 160
    for key, _ in keys:
        mine = UsageRecord.objects.filter(key=key)
        expected = mine.aggregate(n=Count("id"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"))
        for span in (UsageRollup.Span.HOUR, UsageRollup.Span.DAY):
            rows = UsageRollup.objects.filter(key_pk=key.pk, span=span)
            assert sum(r.requests for r in rows) == expected["n"] == 40
            assert sum(r.prompt_tokens for r in rows) == expected["p"]
            assert sum(r.completion_tokens for r in rows) == expected["c"] > 0
            assert sum(r.n_ok for r in rows) == 32
        counted = TokenCounter.objects.filter(key=key).aggregate(t=Sum("tokens"))["t"]
        if key.tokens_per_minute:
            assert counted == expected["p"] + expected["c"]
        else:
            assert counted is None


def test_hostile_values_cannot_make_a_record_fail(gateway, user_key, fake_ollama, caplog):
    """A NUL or a lone surrogate in the model name (PostgreSQL refuses both): the request is
    still recorded, with the name made storable."""
    key, raw = user_key
    body = '{"model": "llama\\u0000evil", "prompt": "hi", "stream": false}'
    response = requests.post(
        f"{gateway}/api/generate",
        data=body,
        headers={**bearer(raw), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 404
    # JSON allows a lone surrogate, which no database encoding takes.
    body = '{"model": "llama\\ud800evil", "prompt": "hi", "stream": false}'
    response = requests.post(
        f"{gateway}/api/generate",
        data=body,
        headers={**bearer(raw), "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code in (404, 502)  # whatever Ollama makes of it
    records = wait_for_records(2, key=key)
    assert [r.model for r in records] == ["llama\ufffdevil", "llama?evil"]
    assert [r.status for r in records] == [404, response.status_code]
    assert "usage record lost" not in caplog.text


@pytest.mark.skipif("connection.vendor != 'postgresql'", reason="the pooled writer")
def test_one_record_that_cannot_be_written_loses_no_other(gateway, make_key, caplog):
    """Records written together: one whose key was deleted meanwhile (from a shell: the
    admin cannot) fails alone, and the other is written."""
    from ollama_gateway import runtime
    from usage.services import Exchange, ausage_record

    (gone, _), (kept, _) = make_key(), make_key()
    exchanges = [
        Exchange(method="POST", route="/api/chat", request_id=f"r{i}", client_addr="::1")
        for i in range(2)
    ]
    for exchange, key in zip(exchanges, (gone, kept), strict=True):
        exchange.key, exchange.status, exchange.model = key, 200, "llama3.2"
    ApiKey.objects.filter(pk=gone.pk).delete()

    async def both():
        await asyncio.gather(*(ausage_record(e) for e in exchanges))

    asyncio.run_coroutine_threadsafe(both(), runtime._serving_loop).result(timeout=30)
    assert list(UsageRecord.objects.values_list("request_id", "key")) == [("r1", kept.pk)]
    assert UsageRollup.objects.filter(key_pk=kept.pk).count() == 2
    assert caplog.text.count("usage record lost") == 1
