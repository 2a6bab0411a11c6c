"""Ollama's other protocols: Anthropic Messages (/v1/messages), OpenAI Responses (/v1/responses)
and audio transcriptions (/v1/audio/transcriptions), as Ollama's `anthropic/`, `openai/` and
`middleware/` packages shape them.

Ollama converts each request to a chat, runs it, and converts every chat chunk into the events
of the protocol: here a :class:`~.generation.Plan` plays the chat, and each of its pieces becomes
one written frame holding that chunk's events (Ollama writes them in one go, too).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import time
from typing import TYPE_CHECKING

from .catalog import is_embedding
from .generation import Plan, Said, answer_plan, count_tokens, tool_call_for
from .wire import JSON, SSE, TEXT, ApiError, Reply, json_bytes, json_reply, stream_reply

if TYPE_CHECKING:
    from .routes import Call

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _ident(prefix: str) -> str:
    # Not a secret: ids shaped like Ollama's (crypto/rand there, but nobody relies on that).
    return f"{prefix}_{random.getrandbits(96):024x}"


def sse_event(name: str, data: dict) -> bytes:
    """`event: <name>` and its JSON data, as Ollama's writeSSE frames them."""
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


def _texts(content: object) -> list[str]:
    """The words a message, system prompt or tool result carries (a string or a list of blocks)."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            for key in ("text", "thinking"):
                if isinstance(block.get(key), str):
                    texts.append(block[key])
            if "content" in block:
                texts += _texts(block["content"])
            if isinstance(block.get("input"), dict):
                texts.append(json.dumps(block["input"]))
    return texts


def _function_tools(tools: object, *, nested: bool) -> list[dict] | None:
    """Anthropic (`name`, `input_schema`) or Responses (`name`, `parameters`) tools, in the
    native shape `tool_call_for` reads."""
    if not isinstance(tools, list):
        return None
    native = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        parameters = tool.get("parameters") if nested else tool.get("input_schema")
        native.append({"function": {"name": tool.get("name", ""), "parameters": parameters}})
    return native


def _with_ids(plan: Plan) -> None:
    """Ollama gives each tool call an id (`call_...`); the protocols carry it."""
    for piece in plan.pieces:
        for call in piece.tool_calls:
            call.setdefault("id", f"call_{random.getrandbits(40):010x}")


# --- Anthropic Messages -----------------------------------------------------------------------


def anthropic_error(status: int, message: str) -> Reply:
    """Ollama's anthropic.NewError: the type the SDK maps to its exception classes."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        503: "overloaded_error",
        529: "overloaded_error",
    }
    body = {
        "type": "error",
        "error": {"type": kinds.get(status, "api_error"), "message": message},
        "request_id": _ident("req"),
    }
    return json_reply(body, status=status)


def messages(call: Call) -> Reply:
    body = call.body()
    if not body.get("model"):
        raise ApiError(400, "model is required")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        raise ApiError(400, "max_tokens is required and must be positive")
    conversation = body.get("messages")
    if not conversation or not isinstance(conversation, list):
        raise ApiError(400, "messages is required")
    spelled, listed = call.model(body)
    _require_chat(spelled, listed)
    thinking = body.get("thinking")
    texts = _texts(body.get("system")) + [
        text
        for message in conversation
        if isinstance(message, dict)
        for text in _texts(message.get("content"))
    ]
    plan = answer_plan(
        call.config,
        spelled,
        call.started,
        count_tokens(texts),
        limit=max_tokens,
        think=isinstance(thinking, dict) and thinking.get("type") == "enabled",
        tool_call=tool_call_for(_function_tools(body.get("tools"), nested=False)),
    )
    _with_ids(plan)
    ident = _ident("msg")
    if body.get("stream") is True:
        return _messages_stream(plan, ident, call.broken)
    return json_reply(_message(plan, ident), delays=plan.delays, broken=call.broken)


def _require_chat(spelled: str, listed: str) -> None:
    if is_embedding(listed):
        raise ApiError(400, f'"{spelled}" does not support chat')


def _stop_reason(plan: Plan, tool_use: bool) -> str:
    return "tool_use" if tool_use else _STOP_REASONS.get(plan.done_reason, "stop_sequence")


def _message(plan: Plan, ident: str) -> dict:
    whole = Said.join(plan.pieces)
    content: list[dict] = []
    if whole.thinking:
        content.append({"type": "thinking", "thinking": whole.thinking})
    if whole.content:
        content.append({"type": "text", "text": whole.content})
    for call in whole.tool_calls:
        function = call["function"]
        content.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": function["arguments"],
            }
        )
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": plan.model,
        "content": content,
        "stop_reason": _stop_reason(plan, bool(whole.tool_calls)),
        "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": plan.eval_tokens},
    }


class _AnthropicStream:
    """Ollama's anthropic.StreamConverter: chat chunks in, Messages events out."""

    def __init__(self, plan: Plan, ident: str):
        self.plan = plan
        self.ident = ident
        self.index = 0
        self.open: str | None = None  # the kind of the content block being written
        self.tool_use = False

    def start(self) -> bytes:
        message = {
            "id": self.ident,
            "type": "message",
            "role": "assistant",
            "model": self.plan.model,
            "content": [],
            "usage": {"input_tokens": self.plan.prompt_tokens, "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _block(self, kind: str, block: dict) -> bytes:
        frames = self._close()
        self.open = kind
        start = {"type": "content_block_start", "index": self.index, "content_block": block}
        return frames + sse_event("content_block_start", start)

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        stop = sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index})
        self.index += 1
        self.open = None
        return stop

    def _delta(self, delta: dict) -> bytes:
        event = {"type": "content_block_delta", "index": self.index, "delta": delta}
        return sse_event("content_block_delta", event)

    def piece(self, said: Said) -> bytes:
        frames = b""
        if said.thinking:
            if self.open != "thinking":
                frames += self._block("thinking", {"type": "thinking", "thinking": ""})
            frames += self._delta({"type": "thinking_delta", "thinking": said.thinking})
        if said.content:
            if self.open != "text":
                frames += self._block("text", {"type": "text", "text": ""})
            frames += self._delta({"type": "text_delta", "text": said.content})
        for call in said.tool_calls:
            function = call["function"]
            block = {"type": "tool_use", "id": call["id"], "name": function["name"], "input": {}}
            frames += self._block("tool_use", block)
            arguments = json.dumps(function["arguments"], separators=(",", ":"))
            frames += self._delta({"type": "input_json_delta", "partial_json": arguments})
            frames += self._close()
            self.tool_use = True
        return frames

    def done(self) -> bytes:
        usage = {"input_tokens": self.plan.prompt_tokens, "output_tokens": self.plan.eval_tokens}
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(self.plan, self.tool_use)},
            "usage": usage,
        }
        return (
            self._close()
            + sse_event("message_delta", delta)
            + sse_event("message_stop", {"type": "message_stop"})
        )


def _messages_stream(plan: Plan, ident: str, broken: bool) -> Reply:
    converter = _AnthropicStream(plan, ident)
    frames = [converter.piece(piece) for piece in plan.pieces] or [b""]
    frames[0] = converter.start() + frames[0]
    frames.append(converter.done())
    return stream_reply(frames, SSE, plan.delays, broken)


# --- OpenAI Responses -------------------------------------------------------------------------


def responses(call: Call) -> Reply:
    body = call.body()
    spelled, listed = call.model(body)
    _require_chat(spelled, listed)
    given = body.get("input")
    texts = _texts(body.get("instructions")) + _texts(given)
    reasoning = body.get("reasoning")
    plan = answer_plan(
        call.config,
        spelled,
        call.started,
        count_tokens(texts),
        limit=body.get("max_output_tokens"),
        think=isinstance(reasoning, dict) and bool(reasoning.get("effort")),
        tool_call=tool_call_for(_function_tools(body.get("tools"), nested=True)),
    )
    _with_ids(plan)
    stream = _ResponsesStream(plan, body)
    if body.get("stream") is True:
        start = stream.start()  # first: events are numbered in order
        frames = [stream.piece(piece) for piece in plan.pieces] or [b""]
        frames[0] = start + frames[0]
        frames.append(stream.done())
        return stream_reply(frames, SSE, plan.delays, call.broken)
    for piece in plan.pieces:
        stream.piece(piece)
    stream.done()
    return json_reply(
        stream.response("completed", stream.usage()), delays=plan.delays, broken=call.broken
    )


class _ResponsesStream:
    """Ollama's openai.ResponsesStreamConverter: chat chunks in, Responses events out."""

    def __init__(self, plan: Plan, request: dict):
        self.plan = plan
        self.request = request
        self.ident = f"resp_{random.randrange(999999)}"  # noqa: S311
        self.created = int(time.time())
        self.sequence = 0
        self.output_index = 0
        self.items: list[dict] = []
        self.reasoning: dict | None = None
        self.message: dict | None = None
        self.tool_calls = False

    def event(self, name: str, data: dict) -> bytes:
        data = {**data, "type": name, "sequence_number": self.sequence}
        self.sequence += 1
        return sse_event(name, data)

    def response(self, status: str, usage: dict | None = None) -> dict:
        reasoning = self.request.get("reasoning")
        return {
            "id": self.ident,
            "object": "response",
            "created_at": self.created,
            "completed_at": int(time.time()) if status == "completed" else None,
            "status": status,
            "incomplete_details": None,
            "model": self.plan.model,
            "previous_response_id": None,
            "instructions": self.request.get("instructions"),
            "output": list(self.items) if status == "completed" else [],
            "error": None,
            "tools": self.request.get("tools") or [],
            "tool_choice": "auto",
            "truncation": "disabled",
            "parallel_tool_calls": True,
            "text": {"format": {"type": "text"}},
            "top_p": 1.0,
            "temperature": 1.0,
            "reasoning": reasoning if isinstance(reasoning, dict) else None,
            "usage": usage if status == "completed" else None,
            "max_output_tokens": self.request.get("max_output_tokens"),
            "store": False,
            "metadata": {},
        }

    def usage(self) -> dict:
        return {
            "input_tokens": self.plan.prompt_tokens,
            "output_tokens": self.plan.eval_tokens,
            "total_tokens": self.plan.prompt_tokens + self.plan.eval_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }

    def start(self) -> bytes:
        return self.event(
            "response.created", {"response": self.response("in_progress")}
        ) + self.event("response.in_progress", {"response": self.response("in_progress")})

    def piece(self, said: Said) -> bytes:
        frames = b""
        if said.thinking:
            if self.reasoning is None:
                self.reasoning = {"id": f"rs_{random.randrange(999999)}", "text": ""}  # noqa: S311
                item = {"id": self.reasoning["id"], "type": "reasoning", "summary": []}
                frames += self.event(
                    "response.output_item.added", {"output_index": self.output_index, "item": item}
                )
            self.reasoning["text"] += said.thinking
            frames += self.event(
                "response.reasoning_summary_text.delta",
                {
                    "item_id": self.reasoning["id"],
                    "output_index": self.output_index,
                    "summary_index": 0,
                    "delta": said.thinking,
                },
            )
        if said.tool_calls:
            frames += self._finish_reasoning()
            frames += self._function_calls(said.tool_calls)
        if said.content:
            frames += self._finish_reasoning()
            frames += self._text(said.content)
        return frames

    def _finish_reasoning(self) -> bytes:
        if self.reasoning is None:
            return b""
        ident, text = self.reasoning["id"], self.reasoning["text"]
        item = {
            "id": ident,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}],
            "encrypted_content": text,
        }
        self.items.append(item)
        self.reasoning = None
        index = self.output_index
        self.output_index += 1
        return self.event(
            "response.reasoning_summary_text.done",
            {"item_id": ident, "output_index": index, "summary_index": 0, "text": text},
        ) + self.event("response.output_item.done", {"output_index": index, "item": item})

    def _function_calls(self, calls: list[dict]) -> bytes:
        frames = b""
        for call in calls:
            function = call["function"]
            arguments = json.dumps(function["arguments"])
            ident = f"fc_{random.randrange(999999)}_0"  # noqa: S311
            item = {
                "id": ident,
                "type": "function_call",
                "status": "completed",
                "call_id": call["id"],
                "name": function["name"],
                "arguments": arguments,
            }
            index = self.output_index
            self.output_index += 1
            self.items.append(item)
            self.tool_calls = True
            added = {**item, "status": "in_progress", "arguments": ""}
            frames += (
                self.event("response.output_item.added", {"output_index": index, "item": added})
                + self.event(
                    "response.function_call_arguments.delta",
                    {"item_id": ident, "output_index": index, "delta": arguments},
                )
                + self.event(
                    "response.function_call_arguments.done",
                    {"item_id": ident, "output_index": index, "arguments": arguments},
                )
                + self.event("response.output_item.done", {"output_index": index, "item": item})
            )
        return frames

    def _part(self, text: str) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _text(self, content: str) -> bytes:
        frames = b""
        if self.message is None:
            self.message = {"id": f"msg_{self.ident[5:]}_{self.output_index}", "text": ""}
            item = {
                "id": self.message["id"],
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            frames += self.event(
                "response.output_item.added", {"output_index": self.output_index, "item": item}
            ) + self.event(
                "response.content_part.added",
                {
                    "item_id": self.message["id"],
                    "output_index": self.output_index,
                    "content_index": 0,
                    "part": self._part(""),
                },
            )
        self.message["text"] += content
        return frames + self.event(
            "response.output_text.delta",
            {
                "item_id": self.message["id"],
                "output_index": self.output_index,
                "content_index": 0,
                "delta": content,
                "logprobs": [],
            },
        )

    def done(self) -> bytes:
        frames = self._finish_reasoning()
        if self.message is not None:
            ident, text = self.message["id"], self.message["text"]
            item = {
                "id": ident,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [self._part(text)],
            }
            self.items.append(item)
            where = {"item_id": ident, "output_index": self.output_index, "content_index": 0}
            frames += (
                self.event("response.output_text.done", {**where, "text": text, "logprobs": []})
                + self.event("response.content_part.done", {**where, "part": self._part(text)})
                + self.event(
                    "response.output_item.done", {"output_index": self.output_index, "item": item}
                )
            )
        completed = self.response("completed", self.usage())
        return frames + self.event("response.completed", {"response": completed})


# --- Audio transcriptions ---------------------------------------------------------------------


def _form_fields(call: Call) -> dict[str, bytes]:
    content_type = call.request.headers.get("Content-Type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(
            400, "failed to parse multipart form: request Content-Type isn't multipart/form-data"
        )
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    parsed = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + call.request.body)
    fields: dict[str, bytes] = {}
    for part in parsed.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name and name not in fields:  # Go's FormValue reads the first
            fields[name] = part.get_payload(decode=True) or b""
    return fields


def transcriptions(call: Call) -> Reply:
    fields = _form_fields(call)
    model = fields.get("model", b"").decode()
    if not model:
        raise ApiError(400, "model is required")
    if "file" not in fields:
        raise ApiError(400, "file is required: http: no such file")
    if not fields["file"]:
        raise ApiError(400, "audio file is empty")
    spelled, listed = call.model({"model": model})
    _require_chat(spelled, listed)
    plan = answer_plan(call.config, spelled, call.started, 1)
    text = "".join(piece.content for piece in plan.pieces).strip()
    if fields.get("response_format", b"").decode() == "text":
        return Reply(200, [text.encode()], TEXT.split(";")[0], delays=plan.delays)
    return Reply(200, [json_bytes({"text": text}) + b"\n"], JSON.split(";")[0], delays=plan.delays)


def status(call: Call) -> Reply:
    return json_reply({"cloud": {"disabled": False, "source": "none"}})
