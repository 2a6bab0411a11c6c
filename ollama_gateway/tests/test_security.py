"""Security regressions: what a user key cannot reach, what error bodies never contain, and
revocation seen by every gateway process at once."""

import re

import pytest
import requests

from testsupport import bearer


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/keys"),
        ("POST", "/api/keys"),
        ("DELETE", "/api/keys/ollama-whatever"),
        ("GET", "/api/admin/stats"),
        ("GET", "/api/admin/usage.csv"),
        ("POST", "/api/pull"),
        ("POST", "/api/create"),
        ("DELETE", "/api/delete"),
        ("POST", "/api/copy"),
    ],
)
def test_user_keys_are_refused_on_admin_routes(client, user_key, method, path, fake_ollama):
    response = client.generic(method, path, "{}", "application/json", headers=bearer(user_key[1]))
    assert response.status_code == 403
    assert fake_ollama.requests == []


def test_a_key_does_not_open_the_admin_site_or_metrics(client, admin_key):
    # The Django admin is for staff accounts (sessions), never for API keys.
    dashboard = client.get("/admin/usage/usagerecord/dashboard/", headers=bearer(admin_key[1]))
    assert dashboard.status_code == 302 and "/admin/login/" in dashboard["Location"]
    metrics = client.get("/metrics", REMOTE_ADDR="203.0.113.7", headers=bearer(admin_key[1]))
    assert metrics.status_code == 403


def test_own_stats_never_include_other_keys(client, make_key, client_for):
    _, alice = make_key(name="alice")
    bob_key, bob = make_key(name="bob")
    client_for(bob).get("/api/version")
    stats = client_for(alice).get("/api/stats", {"key": bob_key.preview}).json()
    assert stats["totals"]["requests"] == 0


LEAKS = re.compile(r"Traceback|File \"|SELECT |INSERT |psycopg|sqlite|127\.0\.0\.1:\d+|django\.")


def test_error_bodies_leak_nothing(gateway, user_key, settings, fake_ollama):
    headers = bearer(user_key[1])
    bodies = [
        requests.get(f"{gateway}/api/nothing", headers=headers, timeout=10),
        requests.get(f"{gateway}/v1/nothing", headers=headers, timeout=10),
        requests.get(f"{gateway}/api/generate", headers=headers, timeout=10),
        requests.post(f"{gateway}/api/generate", data=b"{{", headers=headers, timeout=10),
        requests.post(f"{gateway}/api/keys", data=b"[" * 50_000, headers=headers, timeout=10),
        requests.post(
            f"{gateway}/api/chat",
            json={"model": "nope", "messages": []},
            headers=headers,
            timeout=10,
        ),
        requests.get(f"{gateway}/api/tags", headers=bearer("ollama-" + "x" * 43), timeout=10),
    ]
    settings.OLLAMA_BASE_URL = "http://127.0.0.1:9"
    bodies.append(requests.get(f"{gateway}/api/tags", headers=headers, timeout=10))
    for response in bodies:
        assert 400 <= response.status_code < 600
        assert response.status_code != 500, response.text
        assert not LEAKS.search(response.text), response.text
        assert response.headers["Content-Type"].startswith("application/json"), response.text


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{", b'{"name": "x", "role": ' + b"9" * 5000 + b"}"],
    ids=["deeply-nested", "not-utf8", "huge-number"],
)
def test_management_routes_reject_hostile_bodies_with_400(client, admin_key, body):
    response = client.post("/api/keys", body, "application/json", headers=bearer(admin_key[1]))
    assert response.status_code == 400


def test_revocation_is_seen_by_every_process_at_once(served_pair, make_key, admin_key):
    first, second = served_pair
    key, raw = make_key()
    assert requests.get(f"{second}/api/version", headers=bearer(raw), timeout=10).status_code == 200
    revoked = requests.delete(
        f"{first}/api/keys/{key.preview}", headers=bearer(admin_key[1]), timeout=10
    )
    assert revoked.status_code == 204
    for base in (first, second):
        assert (
            requests.get(f"{base}/api/version", headers=bearer(raw), timeout=10).status_code == 401
        )


@pytest.mark.parametrize(
    ("method", "path", "shape", "served"),
    [
        ("POST", "/api/chat", lambda b: b["error"].startswith("Bad request"), 200),
        (
            "POST",
            "/v1/chat/completions",
            lambda b: b["error"]["type"] == "invalid_request_error",
            200,
        ),
        ("POST", "/v1/messages", lambda b: b["type"] == "error", 200),
        # A user key may not list keys: 403 once the host is allowed.
        ("GET", "/api/keys", lambda b: b["detail"].startswith("Bad request"), 403),
        ("HEAD", "/", None, 200),
    ],
)
def test_a_host_not_allowed_is_refused_on_every_route(
    gateway, user_key, method, path, shape, served
):
    """ALLOWED_HOSTS holds for the model routes as for the rest (DNS rebinding), each answer
    in its route's shape; an allowed host is served."""
    headers = {**bearer(user_key[1]), "Host": "evil.example"}
    body = {"model": "llama3.2", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    refused = requests.request(method, gateway + path, json=body, headers=headers, timeout=10)
    assert refused.status_code == 400
    if shape is not None:
        assert shape(refused.json())
    headers["Host"] = "localhost"
    allowed = requests.request(method, gateway + path, json=body, headers=headers, timeout=10)
    assert allowed.status_code == served
