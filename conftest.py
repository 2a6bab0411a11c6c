"""Fixtures shared by every app's tests: keys, the development Ollama and a live gateway."""

import pytest
from rest_framework.test import APIClient

from keys.services import api_key_create


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
    from proxy.fake_ollama.server import FakeOllama

    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake_ollama(fake_ollama_server, settings):
    """The development Ollama, reset, with the gateway pointed at it."""
    fake_ollama_server.reset()
    settings.OLLAMA_BASE_URL = fake_ollama_server.url
    yield fake_ollama_server
    fake_ollama_server.reset()


@pytest.fixture
def gateway(live_server, transactional_db, fake_ollama):
    """The gateway served over real HTTP (Django's threaded live server) in front of the fake."""
    return live_server.url
