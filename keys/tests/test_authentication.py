from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from keys.models import ApiKey
from keys.services import api_key_revoke


@pytest.fixture
def anon():
    return APIClient()


def assert_401(response):
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "detail" in response.json()


def test_bearer_key_authenticates(admin_key, client_for):
    response = client_for(admin_key[1]).get("/api/keys")
    assert response.status_code == 200


def test_x_api_key_header_authenticates(admin_key, anon):
    response = anon.get("/api/keys", HTTP_X_API_KEY=admin_key[1])
    assert response.status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer",
        "Bearer ollama-unknownunknownunknownunknownunknownunknown",
        "Bearer not-even-a-key",
        "Bearer a b",
    ],
)
def test_missing_or_bad_credentials_get_401(header, anon, db):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    assert_401(anon.get("/api/keys", **kwargs))


def test_foreign_scheme_counts_as_no_credentials(anon, db):
    assert_401(anon.get("/api/keys", HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz"))


def test_revoked_key_is_refused_on_the_next_request(admin_key, client_for):
    client = client_for(admin_key[1])
    assert client.get("/api/keys").status_code == 200
    api_key_revoke(preview=admin_key[0].preview)
    response = client.get("/api/keys")
    assert_401(response)
    assert "revoked" in response.json()["detail"]


def test_expired_key_is_refused(admin_key, client_for):
    ApiKey.objects.filter(pk=admin_key[0].pk).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    response = client_for(admin_key[1]).get("/api/keys")
    assert_401(response)
    assert "expired" in response.json()["detail"]


def test_user_key_on_admin_endpoint_gets_403(user_key, client_for):
    response = client_for(user_key[1]).get("/api/keys")
    assert response.status_code == 403
    assert "admin" in response.json()["detail"]


def test_last_used_is_recorded_without_a_write_per_request(admin_key, client_for):
    client = client_for(admin_key[1])
    client.get("/api/keys")
    first = ApiKey.objects.get(pk=admin_key[0].pk).last_used_at
    assert first is not None
    client.get("/api/keys")
    assert ApiKey.objects.get(pk=admin_key[0].pk).last_used_at == first
