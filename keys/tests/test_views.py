"""POST/GET /api/keys and DELETE /api/keys/{preview}."""

import logging
from datetime import timedelta

import pytest
from django.utils import timezone

from keys import crypto
from keys.models import ApiKey


@pytest.fixture
def admin(admin_key, client_for):
    return client_for(admin_key[1])


def test_create_returns_the_raw_key_once_and_it_works(admin, client_for):
    response = admin.post(
        "/api/keys",
        {
            "name": "alice",
            "role": "user",
            "rate_limit": 50,
            "token_quota": 100000,
            "allowed_models": ["llama3.2"],
        },
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    raw = body["key"]
    assert raw.startswith("ollama-") and body["preview"] == raw[:15]
    assert body["rate_limit"] == 50 and body["allowed_models"] == ["llama3.2"]
    assert body["token_quota"] == 100000
    assert "key_hash" not in body
    stored = ApiKey.objects.get(preview=body["preview"])
    assert stored.key_hash == crypto.hash_key(raw)
    assert stored.created_by.startswith("key:ollama-")
    # The new key authenticates (a user key: admin routes answer 403, not 401).
    assert client_for(raw).get("/api/keys").status_code == 403


def test_rate_limit_defaults_by_role(admin, settings):
    settings.DEFAULT_RATE_LIMIT_ADMIN = 777
    response = admin.post("/api/keys", {"name": "ops", "role": "admin"}, format="json")
    assert response.json()["rate_limit"] == 777


def test_list_never_shows_secrets(admin, admin_key, make_key):
    _, raw = make_key("user", name="bob")
    response = admin.get("/api/keys")
    assert response.status_code == 200
    names = {k["name"] for k in response.json()}
    assert names == {"bob", admin_key[0].name}
    assert raw not in response.content.decode()
    assert all("key" not in k and "key_hash" not in k for k in response.json())


def test_revoke_by_preview(admin, make_key, client_for):
    key, raw = make_key("admin", name="old")
    assert client_for(raw).get("/api/keys").status_code == 200
    response = admin.delete(f"/api/keys/{key.preview}")
    assert response.status_code == 204
    assert client_for(raw).get("/api/keys").status_code == 401
    listed = {k["preview"]: k for k in admin.get("/api/keys").json()}
    assert listed[key.preview]["is_active"] is False
    assert listed[key.preview]["revoked_at"] is not None


def test_revoke_by_the_whole_key_never_stores_or_logs_it(admin, make_key, client_for, caplog):
    from usage.models import UsageRecord

    caplog.set_level(logging.DEBUG)
    key, raw = make_key(name="leaked")
    response = admin.delete(f"/api/keys/{raw}")
    assert response.status_code == 204
    assert client_for(raw).get("/api/version").status_code == 401
    key.refresh_from_db()
    assert key.is_active is False
    record = UsageRecord.objects.get(method="DELETE")
    assert raw not in record.route and record.route == f"/api/keys/{key.preview}…"
    assert raw not in "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    # An unknown whole key: 404, without echoing it.
    unknown = "ollama-" + "Z" * 43
    response = admin.delete(f"/api/keys/{unknown}")
    assert response.status_code == 404
    assert unknown not in response.content.decode()
    assert not UsageRecord.objects.filter(route__contains=unknown).exists()


def test_revoke_unknown_key_is_404(admin):
    response = admin.delete("/api/keys/ollama-nothere1")
    assert response.status_code == 404
    assert "ollama-nothere1" in response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"name": "x", "role": "root"}, "role", ["admin", "user"]),
        ({"name": "x", "rate_limit": 0}, "rate_limit", ["greater than or equal to 1"]),
        ({"name": "x", "rate_limit": -5}, "rate_limit", ["greater than or equal to 1"]),
        ({"name": "x", "rate_limit": "lots"}, "rate_limit", ["integer"]),
        ({"role": "user"}, "name", ["required"]),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at", ["future"]),
        ({"name": "x", "expires_at": "tomorrow"}, "expires_at", ["format"]),
        ({"name": "x", "allowed_models": "llama3.2"}, "allowed_models", ["list"]),
        ({"name": "x", "token_quota": 0}, "token_quota", ["greater than or equal to 1"]),
        ({"name": "x", "rate_limit": 10**23}, "rate_limit", ["less than or equal to"]),
        ({"name": "x", "token_quota": 2**64}, "token_quota", ["less than or equal to"]),
        ({"name": "x", "max_concurrent": 0}, "max_concurrent", ["greater than or equal to 1"]),
        ({"name": "x", "priority": "urgent"}, "priority", ["interactive", "batch"]),
        ({"name": "x", "tokens_per_minute": 0}, "tokens_per_minute", ["greater than"]),
    ],
)
def test_bad_input_gets_400_naming_the_field(admin, payload, field, words):
    response = admin.post("/api/keys", payload, format="json")
    assert response.status_code == 400
    body = response.json()
    assert field in body
    message = " ".join(body[field])
    for word in words:
        assert word in message
    assert ApiKey.objects.count() == 1  # only the admin's own key


def test_malformed_json_gets_400(admin):
    response = admin.post("/api/keys", data='{"name": ', content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_body_that_is_not_an_object_gets_400(admin):
    response = admin.post("/api/keys", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400


def test_expiry_in_the_future_is_kept(admin):
    expires = (timezone.now() + timedelta(days=3)).isoformat()
    response = admin.post("/api/keys", {"name": "temp", "expires_at": expires}, format="json")
    assert response.status_code == 201
    assert ApiKey.objects.get(name="temp").expires_at is not None


def test_a_body_announced_too_large_gets_413(admin, settings):
    response = admin.generic(
        "POST",
        "/api/keys",
        b'{"name": "big"}',
        content_type="application/json",
        CONTENT_LENGTH=str(60 * 1024 * 1024),
    )
    assert response.status_code == 413
    assert str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE) in response.json()["detail"]
    assert not ApiKey.objects.filter(name="big").exists()


def test_create_with_gpu_sharing_fields(admin):
    response = admin.post(
        "/api/keys",
        {"name": "batch", "max_concurrent": 3, "priority": "batch", "tokens_per_minute": 9000},
        format="json",
    )
    assert response.status_code == 201
    body = response.json()
    assert (body["max_concurrent"], body["priority"], body["tokens_per_minute"]) == (
        3,
        "batch",
        9000,
    )
    stored = ApiKey.objects.get(preview=body["preview"])
    assert (stored.max_concurrent, stored.priority, stored.tokens_per_minute) == (3, "batch", 9000)
    # Defaults: no cap, interactive, no per-minute limit.
    plain = admin.post("/api/keys", {"name": "plain"}, format="json").json()
    assert (plain["max_concurrent"], plain["priority"], plain["tokens_per_minute"]) == (
        None,
        "interactive",
        None,
    )
