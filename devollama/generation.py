"""What the fake model "says", and the one place each answer shape is built.

A request becomes a :class:`Plan`: the pieces of the answer (one streamed frame each), the delay
before each piece, and the counters. A renderer then turns the plan into Ollama's native shapes
(NDJSON) or OpenAI's (SSE), streamed or whole.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import string
import struct
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from .catalog import rfc3339
from .wire import DONE, NDJSON, SSE, Reply, json_reply, ndjson_frame, sse_frame, stream_reply

if TYPE_CHECKING:
    from .server import FakeConfig

EMBEDDING_DIMENSIONS = 8  # small on purpose: benchmarks measure the gateway, not JSON size
THINKING = ("Let ", "me ", "think.")
# Fake per-token costs, so that reported durations are never zero even without delays.
_PROMPT_TOKEN_NS = 20_000
_EVAL_TOKEN_NS = 1_000_000
_LOAD_NS = 1_000_000
_SAMPLE_ARGUMENTS = {"string": "fake", "integer": 1, "number": 1.5, "boolean": True}


def token_texts(count: int) -> list[str]:
    """The fake's output, one string per token: ``["tok0 ", "tok1 ", ...]``."""
    return [f"tok{index} " for index in range(count)]


def count_tokens(texts: list[str]) -> int:
    """The prompt token count the fake reports: whitespace-separated words, at least 1."""
    return max(1, sum(len(text.split()) for text in texts))


@dataclass
class Said:
    """Something the model says: a whole answer, or one streamed piece of it."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict] = field(default_factory=list)

    @classmethod
    def join(cls, pieces: list[Said]) -> Said:
        """The whole answer made of ``pieces``."""
        return cls(
            "".join(piece.content for piece in pieces),
            "".join(piece.thinking for piece in pieces),
            [call for piece in pieces for call in piece.tool_calls],
        )


@dataclass
class Plan:
    """A generation, decided before the first byte is sent."""

    model: str  # as the client spelled it: Ollama echoes that
    started: float  # epoch seconds when the request arrived
    pieces: list[Said]
    delays: list[float]  # before each piece; a load plan has one delay and no piece
    done_reason: str = "stop"
    prompt_tokens: int = 0
    eval_tokens: int = 0
    metrics: dict = field(default_factory=dict)

    @property
    def is_load(self) -> bool:
        """Whether this only loads or unloads the model (empty prompt or messages)."""
        return self.done_reason in ("load", "unload")

    def times(self) -> list[float]:
        """When each piece is sent (epoch seconds)."""
        return [self.started + elapsed for elapsed in accumulate(self.delays)]

    @property
    def end(self) -> float:
        """When the answer completes."""
        return self.started + sum(self.delays)


def answer_plan(
    config: FakeConfig,
    model: str,
    started: float,
    prompt_tokens: int,
    *,
    limit: object = None,
    think: object = False,
    tool_call: dict | None = None,
) -> Plan:
    """Plan an answer: ``config.tokens`` tokens (fewer when ``limit`` caps them), or a tool call.

    ``limit`` is the request's num_predict / max_tokens; ``think`` adds thinking pieces first.
    """
    count, reason = config.tokens, "stop"
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < count:
        count, reason = limit, "length"
    pieces = [Said(thinking=text) for text in THINKING] if think else []
    if tool_call:
        pieces.append(Said(tool_calls=[tool_call]))
    else:
        pieces += [Said(content=text) for text in token_texts(count)]
    # The ttft delay holds even for an answer of no token: it then precedes the final frame.
    delays = [config.ttft] + [config.token_delay] * max(len(pieces) - 1, 0)
    eval_tokens = count + (len(THINKING) if think else 0)
    return Plan(
        model,
        started,
        pieces,
        delays,
        reason,
        prompt_tokens,
        eval_tokens,
        _metrics(config, prompt_tokens, eval_tokens),
    )


def load_plan(config: FakeConfig, model: str, started: float, *, unload: bool) -> Plan:
    """Plan the answer to an empty prompt: the model is loaded (or unloaded), nothing is said."""
    return Plan(model, started, [], [config.ttft], "unload" if unload else "load")


def _metrics(config: FakeConfig, prompt_tokens: int, eval_tokens: int) -> dict:
    prompt_ns = round(config.ttft * 1e9) + prompt_tokens * _PROMPT_TOKEN_NS
    eval_ns = round(config.token_delay * 1e9 * max(eval_tokens - 1, 0))
    eval_ns += eval_tokens * _EVAL_TOKEN_NS
    return {
        "total_duration": _LOAD_NS + prompt_ns + eval_ns,
        "load_duration": _LOAD_NS,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_ns,
        "eval_count": eval_tokens,
        "eval_duration": eval_ns,
    }


def tool_call_for(tools: object) -> dict | None:
    """A native tool call of the first tool offered, with a sample value per parameter."""
    if not isinstance(tools, list) or not tools or not isinstance(tools[0], dict):
        return None
    function = tools[0].get("function") or {}
    properties = (function.get("parameters") or {}).get("properties") or {}
    arguments = {name: _sample(spec) for name, spec in properties.items()}
    return {"function": {"name": function.get("name", ""), "arguments": arguments}}


def _sample(spec: object) -> Any:
    if not isinstance(spec, dict):
        return "fake"
    if spec.get("enum"):
        return spec["enum"][0]
    kind = spec.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    if kind == "array":
        return []
    if kind == "object":
        return {}
    return _SAMPLE_ARGUMENTS.get(kind, "fake")


def native_reply(plan: Plan, *, chat: bool, stream: bool, broken: bool) -> Reply:
    """An /api/generate or /api/chat answer: NDJSON chunks, or one object when not streaming.

    A load answer is always one object, as Ollama sends it.
    """

    def frame(said: Said, at: float, done: bool) -> dict:
        body: dict[str, Any] = {"model": plan.model, "created_at": rfc3339(at)}
        body.update(_native_message(said) if chat else _native_response(said))
        body["done"] = done
        if done:
            body["done_reason"] = plan.done_reason
            if not chat and not plan.is_load:
                body["context"] = list(range(1, plan.prompt_tokens + plan.eval_tokens + 1))
            body.update(plan.metrics)
        return body

    if plan.is_load or not stream:
        whole = frame(Said.join(plan.pieces), plan.end, True)
        return json_reply(whole, delays=plan.delays, broken=broken and not plan.is_load)
    frames = [frame(piece, at, False) for piece, at in zip(plan.pieces, plan.times(), strict=False)]
    frames.append(frame(Said(), plan.end, True))
    return stream_reply([ndjson_frame(obj) for obj in frames], NDJSON, plan.delays, broken)


def _native_response(said: Said) -> dict:
    body = {"response": said.content}
    if said.thinking:
        body["thinking"] = said.thinking
    return body


def _native_message(said: Said) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": said.content}
    if said.thinking:
        message["thinking"] = said.thinking
    if said.tool_calls:
        message["tool_calls"] = said.tool_calls
    return {"message": message}


def openai_reply(
    plan: Plan, *, chat: bool, stream: bool, include_usage: bool, broken: bool
) -> Reply:
    """A /v1/chat/completions or /v1/completions answer, as Ollama's OpenAI layer shapes it.

    Streaming sends one SSE chunk per piece, a chunk carrying the finish reason, a usage chunk
    when asked for, then ``[DONE]``.
    """
    # Not a secret: an id shaped like Ollama's, which draws it from math/rand too.
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{random.randrange(999)}"  # noqa: S311

    def envelope(kind: str) -> dict:
        return {
            "id": ident,
            "object": kind,
            "created": int(plan.started),
            "model": plan.model,
            "system_fingerprint": "fp_ollama",
        }

    whole = Said.join(plan.pieces)
    finish = "tool_calls" if whole.tool_calls else plan.done_reason
    usage = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": plan.eval_tokens,
        "total_tokens": plan.prompt_tokens + plan.eval_tokens,
    }

    def choice(said: Said, finish_reason: str | None, delta: bool) -> dict:
        if not chat:
            return {"text": said.content, "index": 0, "finish_reason": finish_reason}
        key = "delta" if delta else "message"
        return {"index": 0, key: _openai_message(said), "finish_reason": finish_reason}

    if not stream:
        body = envelope("chat.completion" if chat else "text_completion")
        body.update(choices=[choice(whole, finish, False)], usage=usage)
        return json_reply(body, delays=plan.delays, broken=broken)
    kind = "chat.completion.chunk" if chat else "text_completion"
    frames: list[Any] = [
        {**envelope(kind), "choices": [choice(piece, None, True)]} for piece in plan.pieces
    ]
    frames.append({**envelope(kind), "choices": [choice(Said(), finish, True)]})
    if include_usage:
        frames.append({**envelope(kind), "choices": [], "usage": usage})
    frames.append(DONE)
    return stream_reply([sse_frame(obj) for obj in frames], SSE, plan.delays, broken)


def _openai_message(said: Said) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": said.content}
    if said.thinking:
        message["reasoning"] = said.thinking
    if said.tool_calls:
        message["tool_calls"] = [
            {
                "id": f"call_{_random_suffix()}",
                "index": index,
                "type": "function",
                # OpenAI carries arguments as a JSON string, Ollama as an object.
                "function": {
                    "name": call["function"]["name"],
                    "arguments": json.dumps(call["function"]["arguments"]),
                },
            }
            for index, call in enumerate(said.tool_calls)
        ]
    return message


def _random_suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=8))  # noqa: S311


def embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector: equal texts embed equally, different texts differently."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [int.from_bytes(raw[i : i + 2], "big") / 32767.5 - 1 for i in range(0, len(raw), 2)]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [round(value / norm, 6) for value in values]


def embedding_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32s, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
