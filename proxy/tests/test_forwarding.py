"""What crosses the hop: the client's bytes untouched, never its credentials."""

import base64
import json

import requests


def test_body_reaches_ollama_byte_for_byte(gateway, user_key, fake_ollama):
    image = base64.b64encode(bytes(range(256)) * 64).decode()
    body = (
        '{"model":"llama3.2",  "messages":[{"role":"user","content":"Ünïcode ✓",'
        f'"images":["{image}"]}}],'
        '"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],'
        '"format":{"type":"object","properties":{"a":{"type":"integer"}}},'
        '"think":"high","truncate":false,"stream":false}'
    )
    # (Bodies naming options or keep_alive from user keys are rebuilt: see test_policy.py.)
    response = requests.post(
        f"{gateway}/api/chat",
        data=body.encode(),
        headers={"Authorization": f"Bearer {user_key[1]}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200
    assert fake_ollama.requests[-1].body == body.encode()


def test_credentials_stay_at_the_gateway(gateway, user_key, fake_ollama):
    requests.get(
        f"{gateway}/api/tags",
        headers={
            "Authorization": f"Bearer {user_key[1]}",
            "X-API-Key": user_key[1],
            "Cookie": "sessionid=abc",
        },
        timeout=10,
    )
    sent = fake_ollama.requests[-1].headers
    assert sent.get("Authorization") is None
    assert sent.get("X-API-Key") is None and sent.get("Cookie") is None
    assert sent.get("Host") == fake_ollama.url.removeprefix("http://")
    assert user_key[1] not in json.dumps(dict(sent.items()))


def test_gateway_credential_goes_upstream_when_configured(gateway, user_key, fake_ollama, settings):
    settings.OLLAMA_API_KEY = "upstream-secret"
    requests.get(
        f"{gateway}/api/version", headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert fake_ollama.requests[-1].headers.get("Authorization") == "Bearer upstream-secret"


def test_request_id_is_accepted_forwarded_and_returned(gateway, user_key, fake_ollama):
    auth = {"Authorization": f"Bearer {user_key[1]}"}
    given = requests.get(
        f"{gateway}/api/version", headers={**auth, "X-Request-ID": "trace-42"}, timeout=10
    )
    assert given.headers["X-Request-ID"] == "trace-42"
    assert fake_ollama.requests[-1].headers.get("X-Request-ID") == "trace-42"
    for insane in ("bad id; drop", "x" * 65):
        fresh = requests.get(
            f"{gateway}/api/version", headers={**auth, "X-Request-ID": insane}, timeout=10
        )
        assert len(fresh.headers["X-Request-ID"]) == 32


def test_blobs_stream_raw_bytes_for_admins(gateway, admin_key, user_key, fake_ollama):
    import hashlib

    blob = bytes(range(256)) * 4096
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    admin = {"Authorization": f"Bearer {admin_key[1]}"}
    assert (
        requests.head(f"{gateway}/api/blobs/{digest}", headers=admin, timeout=10).status_code == 404
    )
    created = requests.post(f"{gateway}/api/blobs/{digest}", data=blob, headers=admin, timeout=10)
    assert created.status_code == 201
    assert fake_ollama.requests[-1].body == blob
    assert (
        requests.head(f"{gateway}/api/blobs/{digest}", headers=admin, timeout=10).status_code == 200
    )
    wrong = requests.post(f"{gateway}/api/blobs/{digest}", data=b"other", headers=admin, timeout=10)
    assert wrong.status_code == 400
    user = {"Authorization": f"Bearer {user_key[1]}"}
    assert (
        requests.post(
            f"{gateway}/api/blobs/{digest}", data=blob, headers=user, timeout=10
        ).status_code
        == 403
    )
