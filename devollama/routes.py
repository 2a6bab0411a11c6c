"""Ollama's HTTP API, native (/api) and OpenAI-compatible (/v1): one function per endpoint.

Each endpoint takes a :class:`Call` and returns a :class:`~.wire.Reply` or raises
:class:`~.wire.ApiError`; :func:`dispatch` routes, injects the configured failures and renders
errors in the shape of the route's API.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import catalog, compat
from .catalog import Catalog
from .generation import (
    EMBEDDING_DIMENSIONS,
    Plan,
    answer_plan,
    count_tokens,
    embedding,
    embedding_base64,
    load_plan,
    native_reply,
    openai_reply,
    tool_call_for,
)
from .wire import (
    NDJSON,
    NOT_FOUND_TEXT,
    ApiError,
    RecordedRequest,
    Reply,
    empty_reply,
    json_reply,
    ndjson_frame,
    stream_reply,
    text_reply,
)

if TYPE_CHECKING:
    from .server import FakeConfig

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
# Ollama's cap on a zstd body once decompressed (maxDecompressedBodySize).
MAX_DECOMPRESSED_BODY = 8 << 20
# Routes whose middleware undoes `Content-Encoding: zstd` (Ollama's cloudPassthroughMiddleware
# and ResponsesMiddleware); other routes, and gzip everywhere, read the body as sent.
ZSTD_ROUTES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
)
ERROR500_MESSAGE = "llama runner process has terminated: exit status 2 (injected by fake ollama)"
_BLOB_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")


@dataclass
class Call:
    """One API request with what answering it needs."""

    request: RecordedRequest
    path: str  # without the query string
    config: FakeConfig  # a snapshot: changes made mid-request apply to the next one
    catalog: Catalog
    started: float

    def raw_body(self) -> bytes:
        """The body as the handler reads it: zstd undone where Ollama's middleware does it."""
        raw = self.request.body
        encoding = self.request.headers.get("Content-Encoding", "")
        if encoding == "zstd" and self.path in ZSTD_ROUTES:
            import zstandard  # only needed by the routes Codex calls

            try:
                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                parts, size = [], 0
                while size <= MAX_DECOMPRESSED_BODY and (part := reader.read(1 << 16)):
                    parts.append(part)
                    size += len(part)
                raw = b"".join(parts)
            except zstandard.ZstdError:
                raise ApiError(400, "failed to decompress zstd body") from None
            if len(raw) > MAX_DECOMPRESSED_BODY:
                raise ApiError(400, "http: request body too large")
        return raw

    def body(self) -> dict:
        """The JSON object body, or a 400 as Ollama words it."""
        raw = self.raw_body()
        if not raw.strip():
            raise ApiError(400, "missing request body")
        try:
            body = json.loads(raw)
        except ValueError as error:
            raise ApiError(400, f"invalid JSON: {error}") from None
        if not isinstance(body, dict):
            raise ApiError(400, f"json: cannot unmarshal {type(body).__name__} into an object")
        return body

    def model(self, body: dict) -> tuple[str, str]:
        """The requested model as spelled (Ollama echoes that) and as listed; 400 or 404."""
        spelled = body.get("model") or body.get("name")
        if not spelled or not isinstance(spelled, str):
            raise ApiError(400, "model is required")
        listed = self.catalog.find(self.config.models, spelled)
        if listed is None:
            raise ApiError(
                404,
                f"model '{spelled}' not found",
                f'model "{spelled}" not found, try pulling it first',
            )
        return spelled, listed

    @property
    def broken(self) -> bool:
        """Whether a generation answer must fail half-way (``fail="midstream"``)."""
        return self.config.fail == "midstream"


def root(call: Call) -> Reply:
    return text_reply(200, "Ollama is running")


def version(call: Call) -> Reply:
    return json_reply({"version": call.config.version})


def tags(call: Call) -> Reply:
    return json_reply({"models": [catalog.tag_entry(name) for name in list(call.config.models)]})


def ps(call: Call) -> Reply:
    running = call.catalog.running()
    return json_reply({"models": [catalog.running_entry(name, exp) for name, exp in running]})


def show(call: Call) -> Reply:
    _, listed = call.model(call.body())
    return json_reply(catalog.show_body(listed))


def _require_completion(spelled: str, listed: str, action: str) -> None:
    if catalog.is_embedding(listed):
        raise ApiError(400, f'"{spelled}" does not support {action}')


def _num_predict(body: dict) -> object:
    options = body.get("options")
    return options.get("num_predict") if isinstance(options, dict) else None


def _message_texts(messages: list) -> list[str]:
    """The text of chat messages, native (a string) or OpenAI (a string or a list of parts)."""
    texts = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [part.get("text") or "" for part in content if isinstance(part, dict)]
    return texts


def generate(call: Call) -> Reply:
    body = call.body()
    prompt = body.get("prompt") or ""
    texts = [body.get("system") or "", prompt, body.get("suffix") or ""]
    return _native_answer(call, body, texts, empty=not prompt, chat=False)


def chat(call: Call) -> Reply:
    body = call.body()
    messages = body.get("messages") or []
    tool_call = tool_call_for(body.get("tools"))
    texts = _message_texts(messages)
    return _native_answer(call, body, texts, empty=not messages, chat=True, tool_call=tool_call)


def _native_answer(
    call: Call,
    body: dict,
    prompt_texts: list[str],
    *,
    empty: bool,
    chat: bool,
    tool_call: dict | None = None,
) -> Reply:
    """/api/generate and /api/chat: an empty prompt loads (or unloads) the model, else answer."""
    spelled, listed = call.model(body)
    keep_alive = catalog.keep_alive_seconds(body.get("keep_alive"))
    unload = empty and keep_alive == 0
    if not unload:
        _require_completion(spelled, listed, "chat" if chat else "generate")
    call.catalog.load(listed, keep_alive)
    if empty:
        plan = load_plan(call.config, spelled, call.started, unload=unload)
    else:
        plan = answer_plan(
            call.config,
            spelled,
            call.started,
            count_tokens(prompt_texts),
            limit=_num_predict(body),
            think=body.get("think"),
            tool_call=tool_call,
        )
    stream = body.get("stream") is not False
    return native_reply(plan, chat=chat, stream=stream, broken=call.broken)


def _embed_inputs(value: object) -> list[str]:
    """/api/embed's input: a string or a list of strings; nothing to embed is no error."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise ApiError(400, "invalid input type")


def _dimensions(value: object) -> int:
    if value is None or value == 0:
        return EMBEDDING_DIMENSIONS
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ApiError(400, "dimensions must be a positive integer")
    return value


def embed(call: Call) -> Reply:
    body = call.body()
    spelled, listed = call.model(body)
    texts = _embed_inputs(body.get("input"))
    dimensions = _dimensions(body.get("dimensions"))
    call.catalog.load(listed, catalog.keep_alive_seconds(body.get("keep_alive")))
    answer: dict[str, Any] = {
        "model": spelled,
        "embeddings": [embedding(text, dimensions) for text in texts],
    }
    if texts:
        answer.update(
            total_duration=1_000_000, load_duration=100_000, prompt_eval_count=count_tokens(texts)
        )
    return json_reply(answer)


def embeddings(call: Call) -> Reply:
    body = call.body()
    _, listed = call.model(body)
    prompt = body.get("prompt") or ""
    call.catalog.load(listed, catalog.keep_alive_seconds(body.get("keep_alive")))
    return json_reply({"embedding": embedding(prompt) if prompt else []})


def _name(body: dict) -> str:
    name = body.get("model") or body.get("name")
    if not name or not isinstance(name, str):
        raise ApiError(400, "model is required")
    return name


def _progress(body: dict, statuses: list[dict]) -> Reply:
    """A pull/push/create answer: the statuses streamed, or the last one when not streaming."""
    if body.get("stream") is False:
        return json_reply(statuses[-1])
    return stream_reply([ndjson_frame(status) for status in statuses], NDJSON)


def _layer_progress(verb: str, name: str) -> list[dict]:
    hexdigest = catalog.digest(name)
    total = int(hexdigest[:6], 16) + 1_000
    return [
        {
            "status": f"{verb} {hexdigest[:12]}",
            "digest": f"sha256:{hexdigest}",
            "total": total,
            "completed": completed,
        }
        for completed in (0, total // 2, total)
    ]


def pull(call: Call) -> Reply:
    body = call.body()
    name = _name(body)
    call.catalog.add(call.config.models, name)
    statuses = [
        {"status": "pulling manifest"},
        *_layer_progress("pulling", name),
        {"status": "verifying sha256 digest"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    return _progress(body, statuses)


def push(call: Call) -> Reply:
    body = call.body()
    _, listed = call.model(body)
    statuses = [
        {"status": "retrieving manifest"},
        *_layer_progress("pushing", listed),
        {"status": "pushing manifest"},
        {"status": "success"},
    ]
    return _progress(body, statuses)


def create(call: Call) -> Reply:
    body = call.body()
    name = _name(body)
    base = body.get("from") if isinstance(body.get("from"), str) else name
    call.catalog.add(call.config.models, name)
    statuses = [
        {"status": f"using existing layer sha256:{catalog.digest(base)}"},
        {"status": "writing manifest"},
        {"status": "success"},
    ]
    return _progress(body, statuses)


def copy_model(call: Call) -> Reply:
    body = call.body()
    source, destination = body.get("source"), body.get("destination")
    for role, value in (("source", source), ("destination", destination)):
        if not value or not isinstance(value, str):
            raise ApiError(400, f'{role} "{value or ""}" is invalid')
    if call.catalog.find(call.config.models, source) is None:
        raise ApiError(404, f'model "{source}" not found')
    call.catalog.add(call.config.models, destination)
    return empty_reply()


def delete_model(call: Call) -> Reply:
    _, listed = call.model(call.body())
    call.catalog.remove(call.config.models, listed)
    return empty_reply()


def _blob_digest(call: Call) -> str:
    """The ``sha256:<hex>`` of a blob route's path, normalised; 400 if malformed."""
    match = _BLOB_DIGEST.fullmatch(call.path.removeprefix("/api/blobs/"))
    if not match:
        raise ApiError(400, "invalid digest format")
    return f"sha256:{match.group(1).lower()}"


def blob_exists(call: Call) -> Reply:
    blob = _blob_digest(call)
    if not call.catalog.has_blob(blob):
        raise ApiError(404, f'blob "{blob}" not found')
    return empty_reply()


def blob_upload(call: Call) -> Reply:
    blob = _blob_digest(call)
    if f"sha256:{hashlib.sha256(call.request.body).hexdigest()}" != blob:
        raise ApiError(400, "digest mismatch")
    call.catalog.add_blob(blob)
    return empty_reply(201)


def v1_chat(call: Call) -> Reply:
    body = call.body()
    messages = body.get("messages")
    if not messages or not isinstance(messages, list):
        raise ApiError(400, "[] is too short - 'messages'")
    spelled, listed = call.model(body)
    _require_completion(spelled, listed, "chat")
    call.catalog.load(listed, catalog.DEFAULT_KEEP_ALIVE)
    plan = answer_plan(
        call.config,
        spelled,
        call.started,
        count_tokens(_message_texts(messages)),
        limit=body.get("max_completion_tokens", body.get("max_tokens")),
        tool_call=tool_call_for(body.get("tools")),
    )
    return _openai_answer(call, body, plan, chat=True)


def v1_completions(call: Call) -> Reply:
    body = call.body()
    spelled, listed = call.model(body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    _require_completion(spelled, listed, "generate")
    call.catalog.load(listed, catalog.DEFAULT_KEEP_ALIVE)
    if prompt:
        plan = answer_plan(
            call.config,
            spelled,
            call.started,
            count_tokens([prompt, body.get("suffix") or ""]),
            limit=body.get("max_tokens"),
        )
    else:
        plan = load_plan(call.config, spelled, call.started, unload=False)
    return _openai_answer(call, body, plan, chat=False)


def _openai_answer(call: Call, body: dict, plan: Plan, *, chat: bool) -> Reply:
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    stream = body.get("stream") is True
    return openai_reply(
        plan, chat=chat, stream=stream, include_usage=include_usage, broken=call.broken
    )


def v1_embeddings(call: Call) -> Reply:
    body = call.body()
    encoding = str(body.get("encoding_format") or "float").lower()
    if encoding not in ("float", "base64"):
        raise ApiError(
            400,
            f"Invalid value for 'encoding_format' = {body['encoding_format']}. "
            "Supported values: ['float', 'base64'].",
        )
    value = body.get("input")
    # Unlike /api/embed, Ollama's OpenAI layer embeds "" and refuses an empty input.
    texts = [""] if value == "" else _embed_inputs(value)
    if not texts:
        raise ApiError(400, "invalid input")
    spelled, listed = call.model(body)
    dimensions = _dimensions(body.get("dimensions"))
    call.catalog.load(listed, catalog.DEFAULT_KEEP_ALIVE)
    vectors = [embedding(text, dimensions) for text in texts]
    data = [
        {
            "object": "embedding",
            "embedding": embedding_base64(vector) if encoding == "base64" else vector,
            "index": index,
        }
        for index, vector in enumerate(vectors)
    ]
    tokens = count_tokens(texts)
    return json_reply(
        {
            "object": "list",
            "data": data,
            "model": spelled,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def v1_models(call: Call) -> Reply:
    data = [catalog.openai_model(name) for name in list(call.config.models)]
    return json_reply({"object": "list", "data": data})


def v1_model(call: Call) -> Reply:
    # Model names contain ":" but Ollama's names may also contain "/": take the rest of the path.
    _, listed = call.model({"model": call.path.removeprefix("/v1/models/")})
    return json_reply(catalog.openai_model(listed))


Endpoint = Callable[[Call], Reply]

ROUTES: dict[tuple[str, str], Endpoint] = {
    ("GET", "/"): root,
    ("HEAD", "/"): root,
    ("GET", "/api/version"): version,
    ("HEAD", "/api/version"): version,
    ("GET", "/api/tags"): tags,
    ("HEAD", "/api/tags"): tags,
    ("GET", "/api/ps"): ps,
    ("POST", "/api/show"): show,
    ("POST", "/api/generate"): generate,
    ("POST", "/api/chat"): chat,
    ("POST", "/api/embed"): embed,
    ("POST", "/api/embeddings"): embeddings,
    ("POST", "/api/pull"): pull,
    ("POST", "/api/push"): push,
    ("POST", "/api/create"): create,
    ("POST", "/api/copy"): copy_model,
    ("DELETE", "/api/delete"): delete_model,
    ("POST", "/v1/chat/completions"): v1_chat,
    ("POST", "/v1/completions"): v1_completions,
    ("POST", "/v1/embeddings"): v1_embeddings,
    ("GET", "/v1/models"): v1_models,
    ("GET", "/api/status"): compat.status,
    ("POST", "/v1/messages"): compat.messages,
    ("POST", "/v1/responses"): compat.responses,
    ("POST", "/v1/audio/transcriptions"): compat.transcriptions,
}
# Routes with a parameter at the end of the path.
PREFIX_ROUTES: dict[tuple[str, str], Endpoint] = {
    ("HEAD", "/api/blobs/"): blob_exists,
    ("POST", "/api/blobs/"): blob_upload,
    ("GET", "/v1/models/"): v1_model,
}


def _resolve(method: str, path: str) -> Endpoint | None:
    endpoint = ROUTES.get((method, path))
    if endpoint is not None:
        return endpoint
    for (route_method, prefix), endpoint in PREFIX_ROUTES.items():
        if method == route_method and path.startswith(prefix) and len(path) > len(prefix):
            return endpoint
    return None


# Routes that run a model: they take one of the `parallel` slots (Ollama's scheduler).
GENERATION_ROUTES = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/responses",
        "/v1/audio/transcriptions",
    }
)


def error_reply(path: str, error: ApiError) -> Reply:
    """An error in the shape of the route's API: native, OpenAI, or Anthropic."""
    if path == "/v1/messages":
        return compat.anthropic_error(error.status, error.openai_message)
    return error.reply(path.startswith("/v1/"))


def busy_reply(path: str) -> Reply:
    """What Ollama answers when its queue of pending requests is full."""
    return error_reply(path, ApiError(503, BUSY_MESSAGE))


def dispatch(call: Call) -> Reply:
    """Answer an API call: route it, inject the configured failure, render errors."""
    endpoint = _resolve(call.request.method, call.path)
    if endpoint is None:
        return text_reply(404, NOT_FOUND_TEXT)
    faulty = call.path.startswith(("/api/", "/v1/"))
    try:
        if faulty and call.config.fail == "hang":
            return Reply(hang=True)
        if faulty and call.config.fail == "error500":
            raise ApiError(500, ERROR500_MESSAGE)
        if faulty and call.config.fail == "busy":
            raise ApiError(503, BUSY_MESSAGE)
        return endpoint(call)
    except ApiError as error:
        return error_reply(call.path, error)
