"""What crosses the wire: recorded requests, and replies described before they are written.

Endpoints never touch sockets. They return a :class:`Reply`, and the HTTP handler in
``server.py`` is the one place that writes it (timing, chunking and injected failures).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

JSON = "application/json; charset=utf-8"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain; charset=utf-8"

# What Ollama's gin router answers for an unknown path or a known path with the wrong method.
NOT_FOUND_TEXT = "404 page not found"

# The OpenAI-compatible stream ends with this sentinel instead of a JSON object.
DONE = "[DONE]"


class Headers(dict):
    """Request headers keyed by lower-cased name; lookups ignore case, as HTTP does."""

    def __init__(self, items=()):
        super().__init__((str(name).lower(), value) for name, value in dict(items).items())

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. ``path`` is the raw target, query string included."""

    method: str
    path: str
    headers: Headers
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON (raises ``ValueError`` if it is not JSON)."""
        return json.loads(self.body)


class ApiError(Exception):
    """An error answer. Rendered as ``{"error": message}``, or in OpenAI's shape under /v1."""

    def __init__(self, status: int, message: str, openai_message: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.openai_message = openai_message or message

    def reply(self, openai: bool) -> Reply:
        """The answer for this error, shaped for a native (/api) or OpenAI (/v1) client."""
        if not openai:
            return json_reply({"error": self.message}, status=self.status)
        error_type = {400: "invalid_request_error", 404: "not_found_error"}.get(
            self.status, "api_error"
        )
        error = {"message": self.openai_message, "type": error_type, "param": None, "code": None}
        return json_reply({"error": error}, status=self.status)


@dataclass
class Reply:
    """A complete description of an HTTP answer.

    ``frames`` are body pieces: sent as one chunk each when ``streamed`` (chunked transfer
    encoding), otherwise joined and sent with a Content-Length. ``delays[i]`` is how long to wait
    before frame ``i`` (missing entries mean no wait); a plain answer waits for their sum.
    ``broken`` makes the answer fail half-way, ``hang`` makes it never come.
    """

    status: int = 200
    frames: list[bytes] = field(default_factory=list)
    content_type: str | None = None
    streamed: bool = False
    delays: list[float] = field(default_factory=list)
    broken: bool = False
    hang: bool = False


def json_bytes(obj: Any) -> bytes:
    """Compact JSON, as Go's encoder writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_reply(
    obj: Any, *, status: int = 200, delays: list[float] | None = None, broken: bool = False
) -> Reply:
    """One JSON document."""
    return Reply(status, [json_bytes(obj)], JSON, delays=delays or [], broken=broken)


def text_reply(status: int, text: str) -> Reply:
    """A plain-text answer."""
    return Reply(status, [text.encode()], TEXT)


def empty_reply(status: int = 200) -> Reply:
    """A bodiless answer (Ollama's copy, delete and blob routes)."""
    return Reply(status)


def ndjson_frame(obj: Any) -> bytes:
    """One line of an Ollama stream."""
    return json_bytes(obj) + b"\n"


def sse_frame(obj: Any) -> bytes:
    """One Server-Sent Event of an OpenAI stream (``obj`` may be the ``DONE`` sentinel)."""
    data = DONE.encode() if obj == DONE else json_bytes(obj)
    return b"data: " + data + b"\n\n"


def stream_reply(
    frames: list[bytes], content_type: str, delays: list[float] | None = None, broken: bool = False
) -> Reply:
    """A chunked stream, one chunk per frame."""
    return Reply(200, frames, content_type, streamed=True, delays=delays or [], broken=broken)
