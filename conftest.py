"""Fixtures shared by every app's tests: keys, the development Ollama and a live gateway."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

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


def _test_database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_gunicorn(port: int, **env) -> subprocess.Popen:
    """The gateway under its production gunicorn configuration, on the test database."""
    environment = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "PORT": str(port),
        "GUNICORN_WORKERS": "2",
        "GUNICORN_THREADS": "32",
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ollama_gateway.wsgi"],
        cwd=Path(__file__).parent,
        env=environment,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("gunicorn exited at start") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not start listening")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def gunicorn_gateway(django_db_setup, django_db_blocker, fake_ollama_server):
    """A gunicorn gateway (2 workers) in front of the session's development Ollama."""
    port = free_port()
    process = start_gunicorn(port, OLLAMA_BASE_URL=fake_ollama_server.url)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def served(gunicorn_gateway, transactional_db, fake_ollama_server):
    """The gunicorn gateway, with a fresh development Ollama state for this test."""
    fake_ollama_server.reset()
    yield gunicorn_gateway
    fake_ollama_server.reset()


@pytest.fixture(scope="session")
def second_gunicorn_gateway(gunicorn_gateway, fake_ollama_server):
    """Another gateway process group on the same database: limits must hold across both."""
    port = free_port()
    process = start_gunicorn(port, OLLAMA_BASE_URL=fake_ollama_server.url)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def served_pair(served, second_gunicorn_gateway):
    return served, second_gunicorn_gateway
