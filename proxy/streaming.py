"""Relaying Ollama's answers to the client as they are produced, and reading usage from them.

Chunks go out exactly as they came in (no re-framing, no buffering). The relay only looks for the
few lines that carry token counters: the native `"done":true` line, the OpenAI chunk with
`"usage"`, and the Anthropic and Responses events that carry usage (see proxy/protocols.py). A
cheap substring test picks them; only those lines are parsed.
"""

import json
import logging
import time

import requests
import urllib3

from ollama_gateway.errors import OPENAI, error_body
from proxy import protocols

logger = logging.getLogger("proxy")

# Anthropic's message_start / message_delta and Responses' response.completed carry `"usage"`,
# their failure events an `"error"`: the same four substrings find them (each costs every chunk).
_MARKERS = (b'"done":true', b'"done": true', b'"usage"', b'"error"')
# What a broken or timed-out upstream stream raises while being read.
_STREAM_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


def read_usage(payload: dict) -> tuple[int | None, int | None]:
    """(prompt tokens, completion tokens) from a native final chunk, an OpenAI answer, or an
    Anthropic or Responses event or answer (either count may then be None)."""
    counted = protocols.usage_from_event(payload)
    if counted is not None:
        return counted
    usage = payload.get("usage")
    if isinstance(usage, dict):
        return usage.get("prompt_tokens"), usage.get("completion_tokens")
    if payload.get("done") is True:
        return payload.get("prompt_eval_count", 0), payload.get("eval_count", 0)
    return None, None


def usage_from_body(content: bytes) -> tuple[int | None, int | None]:
    """Token counts from a whole (non-streamed) JSON answer; (None, None) if it has none."""
    try:
        payload = json.loads(content)
    except ValueError:
        return None, None
    return read_usage(payload) if isinstance(payload, dict) else (None, None)


def _line_payload(line: bytes) -> dict | None:
    if line.startswith(b"data:"):
        line = line[5:]
    try:
        payload = json.loads(line)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _is_usage_event(event: bytes) -> bool:
    """OpenAI's closing usage event: `data: {..., "choices": [], "usage": {...}}`."""
    if b'"usage"' not in event:
        return False
    payload = _line_payload(event.strip())
    return bool(payload) and payload.get("choices") == [] and "usage" in payload


class StreamRelay:
    """An iterable WSGI body that relays an upstream stream and reports how it ended.

    `on_finish(outcome, ttft_ms, prompt_tokens, completion_tokens)` is called exactly once:
    when the stream ends, fails, or when the server closes us because the client went away
    (WSGI servers call close() then, even if iteration never started). Closing the upstream
    response drops the connection to Ollama, which stops generating.
    """

    def __init__(self, response, *, surface, started, on_finish, drop_usage_event=False):
        self.response = response
        self.surface = surface
        self.started = started
        self.on_finish = on_finish
        # The gateway asked for OpenAI's usage event; the client did not: read it, don't relay it.
        self.drop_usage_event = drop_usage_event
        self._events = b""
        self.ttft_ms = None
        self.prompt_tokens = None
        self.completion_tokens = None
        self.upstream_error = False
        self._tail = b""
        self._finished = False

    def __iter__(self):
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                if not chunk:
                    continue
                if self.ttft_ms is None:
                    self.ttft_ms = (time.monotonic() - self.started) * 1000
                self._scan(chunk)
                if self.drop_usage_event:
                    chunk = self._without_usage_event(chunk)
                if chunk:
                    yield chunk
        except _STREAM_ERRORS as exc:
            # requests wraps urllib3's read timeout in a ConnectionError while streaming.
            timed_out = any(
                isinstance(e, (requests.Timeout, urllib3.exceptions.ReadTimeoutError))
                for e in (exc, *exc.args)
            )
            logger.warning("upstream stream failed: %s", type(exc).__name__)
            yield self._error_event("Ollama stopped answering in the middle of the stream.")
            self._finish("timeout" if timed_out else "upstream_error")
            return
        self._finish("upstream_error" if self.upstream_error else "ok")

    def close(self):
        self.response.close()
        self._finish("client_closed")

    def _scan(self, chunk: bytes) -> None:
        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()[-protocols.MAX_EVENT_BYTES :]
        for line in lines:
            if any(marker in line for marker in _MARKERS):
                payload = _line_payload(line)
                if not payload:
                    continue
                if protocols.is_failure_event(payload):
                    # Ollama's own report of a failure after streaming began.
                    self.upstream_error = True
                prompt, completion = read_usage(payload)
                # Anthropic streams give the two counts in different events.
                if prompt is not None:
                    self.prompt_tokens = prompt
                if completion is not None:
                    self.completion_tokens = completion

    def _without_usage_event(self, chunk: bytes) -> bytes:
        """Complete SSE events of the stream so far, less the usage-only one."""
        *events, self._events = (self._events + chunk).split(b"\n\n")
        kept = [e for e in events if not _is_usage_event(e)]
        return b"".join(event + b"\n\n" for event in kept)

    def _error_event(self, message: str) -> bytes:
        event = protocols.stream_error_event(self.surface, 502, message)
        if event is not None:
            return event
        body = json.dumps(error_body(self.surface, 502, message)).encode()
        return b"data: " + body + b"\n\n" if self.surface == OPENAI else body + b"\n"

    def _finish(self, outcome: str) -> None:
        if self._finished:
            return
        self._finished = True
        self.response.close()
        self.on_finish(outcome, self.ttft_ms, self.prompt_tokens, self.completion_tokens)
