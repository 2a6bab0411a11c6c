"""Fixtures shared by every app's tests: keys, the development Ollama, live gateways (uvicorn in
this process, and gunicorn) and a headless chromium. The helpers they use are in testsupport/."""

import os
import shutil

import pytest
from rest_framework.test import APIClient

from keys.services import api_key_create
from testsupport import InProcessGateway, gunicorn_serving, settle
from testsupport.chromium import CHROMIUM, Chromium


@pytest.fixture
def make_key(db):
    """Create a key through the service; returns (ApiKey, raw key)."""

    def make(role="user", **fields):
        fields.setdefault("name", f"test-{role}")
        return api_key_create(role=role, **fields)

    return make


@pytest.fixture
def admin_key(make_key):
    return make_key("admin")


@pytest.fixture
def user_key(make_key):
    return make_key("user")


@pytest.fixture
def client_for():
    """A DRF test client sending `Authorization: Bearer <raw>`."""

    def make(raw):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture(scope="session")
def fake_ollama_server():
    from devollama.server import FakeOllama

    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake_ollama(fake_ollama_server, settings):
    """The development Ollama, reset, with the gateway pointed at it."""
    fake_ollama_server.reset()
    settings.OLLAMA_BASE_URL = fake_ollama_server.url
    yield fake_ollama_server
    fake_ollama_server.reset()


@pytest.fixture(scope="session")
def asgi_gateway(django_db_setup, django_db_blocker):
    with InProcessGateway() as server:
        yield server


@pytest.fixture
def gateway(asgi_gateway, transactional_db, fake_ollama):
    """The gateway served over real HTTP (uvicorn, in this process) in front of the fake."""
    yield asgi_gateway.url
    # Records are written after the answers: let them land before the tables are emptied.
    settle()


@pytest.fixture(scope="session")
def gunicorn_gateway(django_db_setup, django_db_blocker, fake_ollama_server):
    """A gunicorn gateway in front of the session's development Ollama."""
    with gunicorn_serving(fake_ollama_server) as url:
        yield url


@pytest.fixture
def served(gunicorn_gateway, transactional_db, fake_ollama_server):
    """The gunicorn gateway, with a fresh development Ollama state for this test."""
    fake_ollama_server.reset()
    yield gunicorn_gateway
    fake_ollama_server.reset()
    settle()


@pytest.fixture(scope="session")
def second_gunicorn_gateway(gunicorn_gateway, fake_ollama_server):
    """Another gateway process group on the same database: limits must hold across both."""
    with gunicorn_serving(fake_ollama_server) as url:
        yield url


@pytest.fixture
def served_pair(served, second_gunicorn_gateway):
    return served, second_gunicorn_gateway


@pytest.fixture
def chromium(tmp_path):
    """A headless chromium tab; skipped where chromium is absent, unless REQUIRE_BROWSER=1."""
    if not shutil.which(CHROMIUM):
        message = f"{CHROMIUM} is not installed"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {message}: install the `chromium` package.")
        pytest.skip(message)
    browser = Chromium(tmp_path / "chromium-profile")
    yield browser
    browser.close()
