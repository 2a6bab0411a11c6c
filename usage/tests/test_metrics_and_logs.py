import json
import logging
import re

import pytest

from ollama_gateway.logs import JsonFormatter
from testsupport import wait_for_records


def test_metrics_for_allowed_addresses(client, user_key, client_for, fake_ollama):
    client_for(user_key[1]).post(
        "/api/generate",
        {"model": "llama3.2", "prompt": "hi", "stream": False},
        format="json",
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert (
        'gateway_requests_total{model="llama3.2:latest",outcome="ok",route="/api/generate",'
        'status="200"}' in text
    )
    assert "gateway_request_duration_seconds_bucket" in text
    assert 'gateway_tokens_total{kind="completion",model="llama3.2:latest"}' in text
    assert "gateway_streams_in_flight" in text
    server = "ollama-1"
    assert f'gateway_backend_requests_total{{backend="{server}",outcome="ok"}}' in text
    assert f'gateway_backend_in_flight{{backend="{server}"}} 0.0' in text


def test_metrics_refused_elsewhere_unless_token(client, settings):
    assert client.get("/metrics", REMOTE_ADDR="203.0.113.9").status_code == 403
    settings.METRICS_TOKEN = "scrape-me"
    wrong = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 403
    right = client.get("/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer scrape-me")
    assert right.status_code == 200


@pytest.mark.parametrize(
    ("remote", "headers", "trusted", "status"),
    [
        ("127.0.0.1", {}, [], 200),
        # A local nginx in front, not declared: the client is elsewhere.
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, [], 403),
        ("127.0.0.1", {"HTTP_X_REAL_IP": "203.0.113.9"}, [], 403),
        ("127.0.0.1", {"HTTP_FORWARDED": "for=203.0.113.9"}, [], 403),
        # Declared: the forwarded address decides.
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "203.0.113.9"}, ["127.0.0.1"], 403),
        ("127.0.0.1", {"HTTP_X_FORWARDED_FOR": "::1"}, ["127.0.0.1"], 200),
    ],
)
def test_metrics_through_a_local_reverse_proxy(client, settings, remote, headers, trusted, status):
    settings.TRUSTED_PROXIES = trusted
    assert client.get("/metrics", REMOTE_ADDR=remote, **headers).status_code == status
    settings.METRICS_TOKEN = "scrape-me"
    with_token = client.get(
        "/metrics", REMOTE_ADDR=remote, HTTP_AUTHORIZATION="Bearer scrape-me", **headers
    )
    assert with_token.status_code == 200


def _model_labels(text: str) -> set[str]:
    return set(re.findall(r'gateway_requests_total\{model="([^"]*)"', text))


def test_model_labels_collapse_unknown_names(client, user_key, client_for, fake_ollama):
    from proxy.backends import backend_pool

    backend_pool().check_all()  # the pool's catalog: what the server lists
    gateway = client_for(user_key[1])
    typos = [f"llama3.{n}-typo" for n in range(20)]
    for name in ["llama3.2", "LLAMA3.2", "llama3.2:latest", *typos]:
        gateway.post(
            "/api/generate", {"model": name, "prompt": "hi", "stream": False}, format="json"
        )
    labels = _model_labels(client.get("/metrics").content.decode())
    assert "llama3.2:latest" in labels and "other" in labels
    assert not labels & {"llama3.2", "LLAMA3.2", *typos}


def test_model_labels_are_bounded_without_a_catalog(monkeypatch):
    from proxy import backends
    from usage import metrics

    monkeypatch.setattr(backends, "_pool", None)  # no pool yet: no catalog
    monkeypatch.setattr(metrics, "_seen_models", set())
    labels = {metrics.model_label(f"model-{n}", "ok") for n in range(200)}
    assert len(labels) == metrics.MAX_MODEL_LABELS + 1 and "other" in labels
    assert metrics.model_label("model-0", "ok") == "model-0:latest"
    assert metrics.model_label("model-0", "upstream_error") == "other"


def test_no_raw_key_ever_reaches_the_logs(gateway, admin_key, make_key, caplog, fake_ollama):
    import requests

    caplog.set_level(logging.DEBUG)
    _, user_raw = make_key(name="logged")
    created = requests.post(
        f"{gateway}/api/keys",
        json={"name": "new"},
        headers={"Authorization": f"Bearer {admin_key[1]}"},
        timeout=10,
    ).json()["key"]
    for raw in (admin_key[1], user_raw, created, "ollama-" + "g" * 43):
        requests.post(
            f"{gateway}/api/generate",
            json={"model": "llama3.2", "prompt": "x", "stream": False},
            headers={"Authorization": f"Bearer {raw}"},
            timeout=10,
        )
    # A key sent where a model name goes (pasted in the wrong field).
    requests.post(
        f"{gateway}/api/chat",
        json={"model": created, "messages": []},
        headers={"Authorization": f"Bearer {user_raw}"},
        timeout=10,
    )
    records = wait_for_records(5, key__isnull=False)  # request lines are logged with them
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    logged = "\n".join(lines)
    assert "authentication failed" in logged and "/api/generate" in logged
    for raw in (admin_key[1], user_raw, created, "g" * 43):
        assert raw not in logged
        assert not any(raw in r.model for r in records)
    assert created[:15] + "…" in [r.model for r in records]


def test_the_log_filter_cuts_keys_in_fields_too(make_key):
    from ollama_gateway.logs import RedactKeys

    _, raw = make_key()
    record = logging.makeLogRecord({"msg": "said %s", "args": (raw,), "model": raw, "n": 3})
    assert RedactKeys().filter(record)
    line = JsonFormatter().format(record)
    assert raw not in line
    assert json.loads(line)["model"] == json.loads(line)["message"][5:] == raw[:15] + "…"


def test_json_log_lines(caplog):
    logger = logging.getLogger("usage")
    record = logger.makeRecord(
        "usage",
        logging.INFO,
        __file__,
        1,
        "POST %s",
        ("/api/chat",),
        None,
        extra={"request_id": "abc", "key_preview": "ollama-abcdefgh"},
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /api/chat"
    assert line["request_id"] == "abc" and line["key_preview"] == "ollama-abcdefgh"
    assert line["level"] == "INFO"


@pytest.mark.parametrize("path", ["/api/version", "/v1/models"])
def test_database_down_fails_closed_with_503(client, user_key, settings, path, monkeypatch):
    from django.db import OperationalError

    from keys import authentication

    async def broken(raw):
        raise OperationalError("connection refused")

    monkeypatch.setattr(authentication, "akey_lookup_and_count", broken)
    response = client.get(path, HTTP_AUTHORIZATION=f"Bearer {user_key[1]}")
    assert response.status_code == 503
    assert "database is unavailable" in response.content.decode()


def test_a_key_in_any_log_line_is_cut_to_its_preview():
    """Even Django's own lines ("Service Unavailable: <path>" for a 5xx) never show a key: the
    stdout handler the settings configure redacts whatever it writes."""
    from ollama_gateway.logs import RedactKeys

    raw = "ollama-" + "k" * 43
    handler = next(
        h for h in logging.getLogger().handlers if any(isinstance(f, RedactKeys) for f in h.filters)
    )
    record = logging.getLogger("django.request").makeRecord(
        "django.request",
        logging.ERROR,
        __file__,
        1,
        "Service Unavailable: %s",
        (f"/api/keys/{raw}",),
        None,
    )
    assert handler.filter(record)
    line = handler.format(record)
    assert "Service Unavailable: /api/keys/ollama-kkkkkkkk" in line and raw not in line
