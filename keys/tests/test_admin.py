"""Key management in the Django admin: create shows the key once, revoke is an action."""

import re

import pytest
from django.contrib.sessions.models import Session

from keys import crypto
from keys.models import ApiKey


@pytest.fixture
def staff(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


def test_create_shows_the_raw_key_once(staff):
    response = staff.post(
        "/admin/keys/apikey/add/",
        {
            "name": "team",
            "role": "user",
            "rate_limit": "",
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": "llama3.2, qwen2.5:0.5b",
        },
    )
    assert response.status_code == 200
    page = response.content.decode()
    raw = re.search(r'id="raw-key"[^>]*>(ollama-[A-Za-z0-9_-]+)<', page).group(1)
    key = ApiKey.objects.get(name="team")
    assert key.key_hash == crypto.hash_key(raw)
    assert key.allowed_models == ["llama3.2", "qwen2.5:0.5b"]
    assert key.created_by == "admin:root"
    assert "no-store" in response["Cache-Control"]
    # Never again: not in the list, the change page, the session or a cookie.
    for url in ("/admin/keys/apikey/", f"/admin/keys/apikey/{key.pk}/change/"):
        assert raw not in staff.get(url).content.decode()
    assert all(raw not in s.session_data for s in Session.objects.all())
    assert all(raw not in c.value for c in staff.cookies.values())


def test_create_rejects_bad_input_on_the_form(staff):
    response = staff.post(
        "/admin/keys/apikey/add/",
        {
            "name": "late",
            "role": "user",
            "rate_limit": "0",
            "expires_at_0": "2001-01-01",
            "expires_at_1": "00:00:00",
            "allowed_models": "",
        },
    )
    assert response.status_code == 200
    assert "errorlist" in response.content.decode()
    assert not ApiKey.objects.filter(name="late").exists()


def test_revoke_action(staff, make_key):
    key, _ = make_key(name="to-revoke")
    response = staff.post(
        "/admin/keys/apikey/",
        {"action": "revoke", "_selected_action": [key.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Revoked 1 key" in response.content.decode()
    key.refresh_from_db()
    assert key.is_active is False and key.revoked_at is not None


def test_list_search_and_filters(staff, make_key):
    make_key(name="findme")
    make_key("admin", name="other")
    page = staff.get("/admin/keys/apikey/?q=findme").content.decode()
    assert "findme" in page and "other" not in page
    page = staff.get("/admin/keys/apikey/?role__exact=admin").content.decode()
    assert "other" in page and "findme" not in page


def test_keys_cannot_be_deleted_from_the_admin(staff, make_key):
    key, _ = make_key()
    assert staff.get(f"/admin/keys/apikey/{key.pk}/delete/").status_code == 403


def test_editing_validates_like_creating(staff, make_key):
    key, _ = make_key(name="edit-me")
    url = f"/admin/keys/apikey/{key.pk}/change/"
    data = {
        "name": "edit-me",
        "rate_limit": "0",
        "token_quota": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "allowed_models": "",
    }
    assert "errorlist" in staff.post(url, data).content.decode()
    key.refresh_from_db()
    assert key.rate_limit > 0
    saved = staff.post(url, {**data, "rate_limit": "7"})
    assert saved.status_code == 302
    key.refresh_from_db()
    assert key.rate_limit == 7


def test_create_sets_the_gpu_sharing_fields(staff):
    response = staff.post(
        "/admin/keys/apikey/add/",
        {
            "name": "nightly",
            "role": "user",
            "max_concurrent": "2",
            "priority": "batch",
            "tokens_per_minute": "1000",
            "expires_at_0": "",
            "expires_at_1": "",
        },
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(name="nightly")
    assert (key.max_concurrent, key.priority, key.tokens_per_minute) == (2, "batch", 1000)
