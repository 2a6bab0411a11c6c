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


def _staff_with(client, django_user_model, *codenames):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("clerk", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


def _add_form(**fields):
    return {
        "name": "minted",
        "role": "user",
        "rate_limit": "",
        "expires_at_0": "",
        "expires_at_1": "",
        "allowed_models": "",
        **fields,
    }


def test_view_only_staff_cannot_revoke(client, django_user_model, make_key):
    viewer = _staff_with(client, django_user_model, "view_apikey")
    key, _ = make_key("admin", name="precious")
    response = viewer.post(
        "/admin/keys/apikey/", {"action": "revoke", "_selected_action": [key.pk]}, follow=True
    )
    assert "Revoked" not in response.content.decode()
    key.refresh_from_db()
    assert key.is_active is True
    # The action is not even offered.
    assert 'value="revoke"' not in viewer.get("/admin/keys/apikey/").content.decode()


def test_staff_with_change_permission_can_revoke(client, django_user_model, make_key):
    changer = _staff_with(client, django_user_model, "view_apikey", "change_apikey")
    key, _ = make_key(name="old")
    changer.post("/admin/keys/apikey/", {"action": "revoke", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.is_active is False


def test_add_permission_alone_mints_user_keys_only(client, django_user_model):
    adder = _staff_with(client, django_user_model, "view_apikey", "add_apikey")
    page = adder.get("/admin/keys/apikey/add/").content.decode()
    assert 'value="admin"' not in page
    response = adder.post("/admin/keys/apikey/add/", _add_form(role="admin"))
    assert "errorlist" in response.content.decode()
    assert not ApiKey.objects.filter(role="admin").exists()
    adder.post("/admin/keys/apikey/add/", _add_form(role="user"))
    assert ApiKey.objects.get(name="minted").role == "user"


def test_manage_admin_keys_permission_mints_admin_keys(client, django_user_model):
    manager = _staff_with(client, django_user_model, "add_apikey", "manage_admin_keys")
    manager.post("/admin/keys/apikey/add/", _add_form(role="admin"))
    assert ApiKey.objects.get(name="minted").role == "admin"


def test_a_key_cannot_be_raised_to_admin_by_editing(staff, make_key):
    key, _ = make_key(name="plain")
    data = {**_add_form(name="plain", role="admin", rate_limit="5"), "token_quota": ""}
    assert staff.post(f"/admin/keys/apikey/{key.pk}/change/", data).status_code == 302
    key.refresh_from_db()
    assert key.role == "user"
    assert key.rate_limit == 5  # the edit was saved, less the role


def test_reloading_the_created_page_makes_no_second_key(staff):
    form = staff.get("/admin/keys/apikey/add/").content.decode()
    token = re.search(r'name="creation_token" value="([^"]+)"', form).group(1)
    data = _add_form(name="once", creation_token=token)
    first = staff.post("/admin/keys/apikey/add/", data).content.decode()
    raw = re.search(r'id="raw-key"[^>]*>(ollama-[A-Za-z0-9_-]+)<', first).group(1)
    # The browser's reload sends the same form again.
    again = staff.post("/admin/keys/apikey/add/", data)
    assert again.status_code == 200
    page = again.content.decode()
    assert 'id="already-created"' in page and raw not in page and 'id="raw-key"' not in page
    assert ApiKey.objects.filter(name="once").count() == 1
    assert all(raw not in s.session_data for s in Session.objects.all())
    # A fresh form (a new token) still creates another key.
    fresh = staff.get("/admin/keys/apikey/add/").content.decode()
    token2 = re.search(r'name="creation_token" value="([^"]+)"', fresh).group(1)
    assert token2 != token
    staff.post("/admin/keys/apikey/add/", {**data, "creation_token": token2})
    assert ApiKey.objects.filter(name="once").count() == 2


def test_the_admin_is_titled_for_the_product_and_links_the_dashboard(staff):
    page = staff.get("/admin/").content.decode()
    assert "ollama-gateway administration" in page and "Django administration" not in page
    assert 'href="/admin/usage/usagerecord/dashboard/" id="usage-dashboard-link"' in page


def test_the_dashboard_link_needs_the_usage_view_permission(client, django_user_model):
    clerk = _staff_with(client, django_user_model, "view_apikey")
    response = clerk.get("/admin/")
    page = response.content.decode()
    assert response.status_code == 200 and "/admin/keys/apikey/" in page  # the index, served
    assert "usage-dashboard-link" not in page


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
