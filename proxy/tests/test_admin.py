"""Backends in the admin: only server addresses, and every change logged with its author."""

import logging

import pytest
from django.core.exceptions import ImproperlyConfigured

from proxy.models import Backend
from proxy.services import backends_bootstrap


@pytest.fixture
def staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", None))
    return client


def _form(**fields):
    return {
        "name": "gpu-1",
        "url": "http://gpu-1:11434",
        "weight": "1",
        "enabled": "on",
        "credential_env": "",
        **fields,
    }


def test_the_form_refuses_a_metadata_address(staff):
    response = staff.post("/admin/proxy/backend/add/", _form(url="http://169.254.169.254"))
    assert response.status_code == 200
    assert "link-local or cloud metadata" in response.content.decode()
    assert not Backend.objects.exists()


def test_every_change_is_logged_with_the_staff_user(staff, caplog):
    caplog.set_level(logging.INFO, logger="proxy.backends.audit")
    assert staff.post("/admin/proxy/backend/add/", _form()).status_code == 302
    backend = Backend.objects.get()
    url = f"/admin/proxy/backend/{backend.pk}/change/"
    assert staff.post(url, _form(url="http://gpu-2:11434")).status_code == 302
    assert (
        staff.post(f"/admin/proxy/backend/{backend.pk}/delete/", {"post": "yes"}).status_code == 302
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.backends.audit"]
    assert len(lines) == 3, lines
    created, changed, deleted = lines
    assert created.startswith("backend created: gpu-1 by root") and "gpu-1:11434" in created
    assert changed.startswith("backend changed: gpu-1 by root")
    assert "http://gpu-1:11434" in changed and "http://gpu-2:11434" in changed
    assert "weight" not in changed  # only what changed
    assert deleted.startswith("backend deleted: gpu-1 by root")


def test_seeding_validates_ollama_base_url(db, settings):
    settings.OLLAMA_BASE_URL = "http://127.0.0.1:11434,http://127.0.0.2:11434"
    backends_bootstrap()
    assert sorted(Backend.objects.values_list("url", flat=True)) == [
        "http://127.0.0.1:11434",
        "http://127.0.0.2:11434",
    ]
    Backend.objects.all().delete()
    settings.OLLAMA_BASE_URL = "http://127.0.0.1:11434,http://169.254.169.254"
    with pytest.raises(ImproperlyConfigured, match="BACKEND_ALLOW_LINK_LOCAL"):
        backends_bootstrap()
    assert not Backend.objects.exists()
