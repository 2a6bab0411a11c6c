"""The development Ollama, one per test module, reset before each test."""

import pytest

from devollama import FakeOllama


@pytest.fixture(scope="module")
def server():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.reset()
    return server
