"""Admin logins are throttled per user name and client address (django-axes); API keys are not
Django logins and never count."""

import pytest

LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def root(django_user_model, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.AXES_FAILURE_LIMIT = 3
    django_user_model.objects.create_superuser("root", "root@example.com", "right")
    django_user_model.objects.create_superuser("other", "other@example.com", "right")


def login(client, username, password, address="203.0.113.5", **headers):
    return client.post(
        LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address, **headers
    )


def test_repeated_failures_lock_out_that_user_from_that_address(client, root, caplog):
    for _ in range(2):
        assert login(client, "root", "wrong").status_code == 200  # the form again, with an error
    assert login(client, "root", "wrong").status_code == 429
    # Locked out: even the right password is refused now.
    assert login(client, "root", "right").status_code == 429
    assert "_auth_user_id" not in client.session
    # Another user name from that address, and that user from elsewhere, still log in.
    assert login(client, "other", "right").status_code == 302
    client.logout()
    assert login(client, "root", "right", address="198.51.100.7").status_code == 302
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("axes"))
    assert 'Locking out {username: "root", ip_address: "203.0.113.5"' in logged


def test_behind_a_trusted_proxy_the_forwarded_address_counts(client, root, settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1"]
    for _ in range(3):
        login(client, "root", "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert (
        login(client, "root", "right", "127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code
        == 429
    )
    # Another client behind the same proxy is not locked out with it.
    assert (
        login(client, "root", "right", "127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7").status_code
        == 302
    )


def test_api_keys_do_not_go_through_django_logins(client, root, user_key):
    from axes.models import AccessAttempt

    for _ in range(5):
        bad = client.get("/api/tags", HTTP_AUTHORIZATION="Bearer ollama-" + "x" * 43)
        assert bad.status_code == 401
    assert not AccessAttempt.objects.exists()
    assert client.get("/api/keys", HTTP_AUTHORIZATION=f"Bearer {user_key[1]}").status_code == 403
