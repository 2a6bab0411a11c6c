"""A faithful development Ollama: the real HTTP API, with configurable timing and failures."""

from .generation import token_texts
from .server import FakeConfig, FakeOllama, main
from .wire import RecordedRequest

__all__ = ["FakeConfig", "FakeOllama", "RecordedRequest", "main", "token_texts"]
