"""Relaying Ollama's answers to the client as they are produced, and reading usage from them.

Chunks go out exactly as they came in (no re-framing, no buffering). The relay only looks for the
few lines that carry token counters: the native `"done":true` line, the OpenAI chunk with
`"usage"`, and the Anthropic and Responses events that carry usage (see proxy/protocols.py). A
cheap substring test picks them; only those lines are parsed. Until the final counts arrive it
counts the content lines relayed (Ollama sends one token per line or event), so a stream cut
short (the client gone, Ollama dead) is still charged for what it delivered.
"""

import asyncio
import json
import logging
import time

from ollama_gateway import runtime
from ollama_gateway.errors import OPENAI, error_body
from proxy import protocols
from proxy.upstream import UpstreamTimeout, UpstreamUnreachable
from usage import metrics
from usage.services import ausage_record

logger = logging.getLogger("proxy")

# Anthropic's message_start / message_delta and Responses' response.completed carry `"usage"`,
# their failure events an `"error"`: the same four substrings find them (each costs every chunk).
_MARKERS = (b'"done":true', b'"done": true', b'"usage"', b'"error"')
# A line that carries a token: native chunks and OpenAI deltas.
# (Anthropic and Responses deltas: `"delta"`.)
_TOKEN_MARKERS = (
    b'"response"',
    b'"content"',
    b'"thinking"',
    b'"text"',
    b'"tool_calls"',
    b'"delta"',
)
# Events that open a block or an item (Anthropic, Responses) and carry no token yet.
_OPENINGS = (b'_start"', b'.added"', b'.created"', b'.in_progress"')


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
    if "embeddings" in payload and "prompt_eval_count" in payload:  # /api/embed: no `done`
        return payload["prompt_eval_count"], 0
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
    """The async body of a streamed answer: relays Ollama's stream, then records the exchange.

    It owns the request's backend lease and Ollama's reply: both are given back when the
    stream ends, fails, or is closed because the client went away (the server closes the
    iterator, or cancels it), and the usage record is written exactly once, after the last byte.
    Closing Ollama's reply drops that connection, which stops the generation.
    """

    def __init__(self, reply, lease, *, surface, exchange, drop_usage_event=False):
        self.reply = reply
        self.lease = lease
        self.surface = surface
        self.exchange = exchange
        # The gateway asked for OpenAI's usage event; the client did not: read it, don't relay it.
        self.drop_usage_event = drop_usage_event
        self._events = b""
        self.prompt_tokens = None
        self.completion_tokens = None
        self.relayed_tokens = 0
        self.upstream_error = False
        self._tail = b""
        self._started = False
        self._finished = False
        self._generator = None

    def __aiter__(self):
        self._generator = self._relay()
        return self._generator

    def close(self) -> None:
        """The response's closer (Django registers it), run however the response ended.

        A stream that never started (the client went away before its first byte) still gives
        back its lease and reply, and is recorded. One that started and did not finish (a
        stalled reader cut off, a client gone between chunks) is closed now: the server closed
        only Django's wrapper around it, and its cleanup must not wait for the garbage
        collector."""
        if self._finished:
            return
        if self._started:
            runtime.spawn(self._generator.aclose())
            return
        self._started = True
        self.lease.release()
        self.exchange.outcome = "client_closed"
        runtime.spawn(self._abandoned())

    async def _abandoned(self) -> None:
        await self.reply.aclose()
        await ausage_record(self.exchange)

    async def _relay(self):
        if self._started:
            return
        self._started = True
        exchange = self.exchange
        outcome = "client_closed"
        metrics.STREAMS_IN_FLIGHT.inc()
        try:
            async for chunk in self.reply.chunks():
                if not chunk:
                    continue
                if exchange.ttft_ms is None:
                    exchange.ttft_ms = (time.monotonic() - exchange.started) * 1000
                self._scan(chunk)
                if self.drop_usage_event:
                    chunk = self._without_usage_event(chunk)
                if chunk:
                    yield chunk
            outcome = "upstream_error" if self.upstream_error else "ok"
        except (UpstreamUnreachable, UpstreamTimeout) as exc:
            logger.warning("upstream stream failed: %s", exc)
            outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "upstream_error"
            yield self._error_event("Ollama stopped answering in the middle of the stream.")
        finally:
            # Also reached when the client went away (GeneratorExit, CancelledError): nothing
            # here may wait on the network, so the record is handed to a background task.
            self._finished = True
            metrics.STREAMS_IN_FLIGHT.dec()
            self.lease.release()
            await asyncio.shield(self.reply.aclose())
            exchange.outcome = outcome
            exchange.prompt_tokens = self.prompt_tokens
            exchange.completion_tokens = (
                self.completion_tokens
                if self.completion_tokens is not None
                else self.relayed_tokens
            )
            await runtime.after_response(ausage_record(exchange))

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
                if prompt is not None or completion is not None:
                    continue
            if any(m in line for m in _TOKEN_MARKERS) and not any(m in line for m in _OPENINGS):
                self.relayed_tokens += 1

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
