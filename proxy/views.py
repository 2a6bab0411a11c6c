"""The model API: Ollama's native routes and its OpenAI-compatible routes, relayed.

The views run on the event loop (`ollama_gateway.handlers.ModelRoutesHandler`): a request
waiting on Ollama or on its client is a coroutine, holding no thread and no database connection.
They are DRF views in their declarations (the OpenAPI schema, permission classes) and call the
same authentication and throttle classes as every DRF view, in their async forms. Bodies are
never parsed by DRF (we forward the client's bytes) and errors come out in the surface's own
shape (see ollama_gateway/errors.py).
"""

import asyncio
import json
import logging
import re
from urllib.parse import quote

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, StreamingHttpResponse
from rest_framework import exceptions
from rest_framework.views import APIView

from keys.authentication import ApiKeyAuthentication, acount_auth_failure
from keys.permissions import IsAdminKey, IsApiKey
from ollama_gateway import runtime
from ollama_gateway.errors import (
    ANTHROPIC,
    OLLAMA,
    OPENAI,
    RESPONSES,
    api_exception_response,
    database_unavailable,
    error_response,
)
from proxy import protocols, upstream
from proxy.backends import Lease, abackend_pool
from proxy.policy import apply_server_policy
from proxy.protocols import ProtocolError
from proxy.streaming import StreamRelay, usage_from_body
from usage.limits import KeyRateThrottle
from usage.queue import slot_acquire

logger = logging.getLogger("proxy")

STREAM_TYPES = ("application/x-ndjson", "text/event-stream")
# What Ollama's API answers with. Anything else (an HTML page from whatever sits at the
# server's address) is not relayed: it would be served on the gateway's (and the admin's) origin.
ANSWER_TYPES = (*STREAM_TYPES, "application/json", "application/octet-stream", "text/plain")
MODEL_KEYS = ("model", "name")
# Headers of Ollama's answers worth relaying; others (Location, Set-Cookie, WWW-Authenticate...)
# would describe the hop, not the answer.
RELAYED_HEADERS = ("Content-Type", "Cache-Control")
# Ollama's model names: [host/][namespace/]name[:tag], no empty or dot-dot segments.
MODEL_NAME = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*(?::[A-Za-z0-9._-]+)?"
)
# Client headers worth passing on; everything else (Authorization, X-API-Key, cookies, Host,
# Content-Encoding: bodies go decoded...) stays here. Ollama ignores the anthropic-* ones today;
# they are passed on so that a future Ollama can honour them.
FORWARDED_HEADERS = ("Content-Type", "Accept", "User-Agent", "anthropic-version", "anthropic-beta")
# Bodies above this are read and parsed in a thread, so the loop keeps serving meanwhile, and
# at most BIG_BODIES_AT_ONCE at a time per worker: parsing a JSON body takes several times its
# size in memory, so three 50 MB bodies at once would cost a worker a gigabyte and more.
BIG_BODY = 1024 * 1024
BIG_BODIES_AT_ONCE = 2
_big_bodies: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

_authentication = ApiKeyAuthentication()
_throttle = KeyRateThrottle()


def is_stream(reply) -> bool:
    return reply.ok and reply.headers.get("Content-Type", "").startswith(STREAM_TYPES)


def not_found_message(surface: str, model: str) -> str:
    """Exactly what Ollama says for a model it does not have, so allowlists do not leak."""
    if surface != OLLAMA:
        return f'model "{model}" not found, try pulling it first'
    return f"model '{model}' not found"


class ModelView(APIView):
    """An async DRF view: authentication, throttle and permissions, then the handler.

    The order is the gateway's (ollama_gateway/api.py): authenticate, count a request without
    credentials as a failure, throttle (so a 403 is counted too), check permissions.
    """

    error_surface = OLLAMA
    permission_classes = [IsApiKey]

    async def dispatch(self, request, *args, **kwargs):
        self.args, self.kwargs, self.request = args, kwargs, request
        method = request.method.lower()
        handler = getattr(self, method, None) if method in self.http_method_names else None
        if handler is None:
            return error_response(self.error_surface, 405, f"Method {request.method} not allowed.")
        try:
            await self.admit(request)
            return await handler(request, *args, **kwargs)
        except exceptions.APIException as exc:
            if getattr(request, "user", None) is not None:
                self.note_model(request)
            return api_exception_response(exc, self.error_surface)
        except (OperationalError, InterfaceError) as exc:
            return database_unavailable(request, self.error_surface, exc)

    def note_model(self, request) -> None:
        """A refused request's record names the model it asked for, where that is cheap to
        know (see ProxyView)."""

    async def admit(self, request) -> None:
        admitted = await _authentication.aauthenticate(request)
        request.user, request.auth = admitted or (None, None)
        if admitted is None:
            # No credentials at all: counted like a wrong key, so probing is slowed too.
            await acount_auth_failure(request)
        else:
            await _throttle.aallow_request(*admitted)
        for permission in self.get_permissions():
            if not permission.has_permission(request, self):
                if request.user is None:
                    raise exceptions.NotAuthenticated()
                raise exceptions.PermissionDenied(getattr(permission, "message", None))


class ProxyView(ModelView):
    """Relays one request to `upstream_path` on Ollama and its answer back, streamed or not."""

    upstream_path = ""
    # Whether the JSON body must name a model (checked against the key's allowlist).
    names_model = False
    # Whether the body is passed through as a raw byte stream (model blobs: gigabytes).
    raw_body = False
    # For list answers: the JSON list to filter by the key's allowlist, and each entry's name key.
    filter_list = None
    # Whether the body is a multipart form whose `model` field names the model (transcriptions).
    multipart = False
    # Largest body accepted (after decompression); None: settings.MAX_REQUEST_BODY_BYTES.
    max_body_bytes = None
    # Whether the route runs a generation on the server: it takes a queue slot first
    # (usage/queue.py; set in proxy/urls.py).
    generation = False

    async def get(self, request, **kwargs):
        return await self.relay(request, **kwargs)

    def note_model(self, request) -> None:
        """A rate-limited (or refused) request was stopped before its body was read: read the
        model name from a small JSON body for its record (nothing else is done with it)."""
        if request.exchange.model:
            return  # read already (refused after its body was parsed: a queue timeout, say)
        if not self.names_model or self.multipart or request.content_type != "application/json":
            return
        length = request.META.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > BIG_BODY:
            return
        try:
            payload = json.loads(request.body)
            model = payload.get("model") or payload.get("name")
        except (ValueError, RecursionError, AttributeError):
            return
        if isinstance(model, str):
            request.exchange.model = model

    post = delete = head = get

    async def relay(self, request, **kwargs):
        try:
            body = b"" if self.raw_body else await self.read_body(request)
        except ProtocolError as exc:
            return error_response(self.error_surface, exc.status, exc.message)
        pool = await abackend_pool()
        return await self.route(request, pool, self.upstream_path.format(**kwargs), body)

    async def route(self, request, pool, path, body):
        """Which server(s) get a validated request: lists merge the pool, the rest go to one."""
        if self.filter_list and len(pool.states) > 1:
            from proxy.fanout import merged

            return await merged(request, pool, path, self.filter_list, self.error_surface)
        return await self.forward(request, pool, path, body)

    async def forward(self, request, pool, path, body, backend=None):
        """Send to the server `pool.achoose` picks (or `backend`), and relay its answer.

        A connection failure sets that server aside and tries the next one, as long as nothing
        reached the client: a whole answer is read here, so a server that dies in the middle of
        one is replaced too; a stream is not, once it began. A timeout is not retried: the
        server may still be working on it. The backend lease is released when the answer is
        read, or by the stream relay when the stream ends; on any other way out, here.
        """
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        headers["X-Request-ID"] = request.request_id
        method = request.method
        if method == "HEAD" and "get" in self.http_method_names:
            # As Go answers HEAD: the GET answer's headers, its length included (the server
            # sends no body). This key's GET answer: a list filtered by its allowlist.
            method = "GET"
        exchange = request.exchange
        tried = []
        lease = reply = None
        handed_off = False
        try:
            while True:
                state = backend or await pool.achoose(exchange.model, exclude=tried)
                if state is None:
                    return error_response(self.error_surface, 502, upstream.UNREACHABLE)
                data = body or None
                if self.raw_body:
                    data = request._stream  # the spooled upload, streamed with its length
                    headers["Content-Length"] = request.META.get("CONTENT_LENGTH") or "0"
                # A generation waits here for its turn on the server (usage/queue.py); the
                # slot is the lease's, given back with it.
                slot = None
                if self.generation:
                    slot = await slot_acquire(key=request.user, state=state, exchange=exchange)
                lease, reply = Lease(state, slot), None
                try:
                    reply = await upstream.send(
                        state.url,
                        state.upstream.api_key,
                        method,
                        path,
                        data=data,
                        headers=headers,
                    )
                    if not is_stream(reply):
                        await reply.read()  # now, while another server can still answer
                    break
                except upstream.UpstreamUnreachable as exc:
                    lease.release()
                    if reply is not None:
                        await reply.aclose()
                        reply = None
                    pool.mark_down(state, str(exc))
                    tried.append(state)
                    if backend is not None or self.raw_body:
                        # A server named by the caller, or a body already consumed: no retry.
                        return error_response(self.error_surface, 502, upstream.UNREACHABLE)
                except upstream.UpstreamTimeout:
                    logger.warning(
                        "upstream timeout on %s", path, extra={"request_id": request.request_id}
                    )
                    return error_response(self.error_surface, 504, "Ollama did not answer in time.")
            response = await self.answer(request, reply, lease, state)
            # A stream's relay owns the lease and the reply from here on.
            handed_off = isinstance(response, StreamingHttpResponse)
            return response
        finally:
            if not handed_off:
                if lease is not None:
                    lease.release()
                if reply is not None:
                    await reply.aclose()

    async def answer(self, request, reply, lease, state):
        exchange = request.exchange
        exchange.backend = state.name
        if reply.status in (401, 403):
            # Ollama refused the gateway's own credential: not the client's doing, nor its key.
            logger.error("ollama server %s refused the gateway's credential", state.name)
            return error_response(
                self.error_surface, 502, "Ollama refused the gateway's credentials."
            )
        content_type = reply.headers.get("Content-Type", "")
        if content_type and not content_type.startswith(ANSWER_TYPES):
            logger.error("ollama server %s answered %s", state.name, content_type.split(";")[0])
            return error_response(
                self.error_surface, 502, "Ollama answered with an unexpected content type."
            )
        if reply.ok and self.names_model and exchange.model:
            pool = await abackend_pool()
            pool.note_loaded(state, exchange.model)
        if is_stream(reply):
            return await self.stream(request, reply, lease)
        return self.buffered(request, reply)

    async def read_body(self, request) -> bytes:
        """The client's body, validated enough that Ollama never sees a bad one."""
        if request.method in ("GET", "HEAD"):
            return b""
        length = request.META.get("CONTENT_LENGTH") or ""
        encoded = request.headers.get("Content-Encoding", "identity").lower() != "identity"
        if encoded or not length.isdigit() or int(length) > BIG_BODY:
            # Read (decoded) and parsed off the loop: a big body, one whose size is not known
            # up front (chunked), or a compressed one (4 KB of zstd can be 50 MB of JSON).
            if not runtime.serving():
                return await asyncio.to_thread(self.parse_body, request)
            loop = asyncio.get_running_loop()
            turn = _big_bodies.setdefault(loop, asyncio.Semaphore(BIG_BODIES_AT_ONCE))
            async with turn:
                return await asyncio.to_thread(self.parse_body, request)
        return self.parse_body(request)

    def parse_body(self, request) -> bytes:
        limit = self.max_body_bytes or settings.MAX_REQUEST_BODY_BYTES
        length = request.META.get("CONTENT_LENGTH") or "0"
        if (length.isdigit() and int(length) > limit) or len(request.body) > limit:
            raise protocols.too_large(limit)
        # zstd (Codex) and gzip bodies: read decoded, bounded by the same limit.
        body = protocols.decode_body(request.body, request.headers.get("Content-Encoding"), limit)
        if self.multipart:
            return self.read_multipart(request, body)
        if not self.names_model and not body:
            return body
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise ProtocolError(400, "Request body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise ProtocolError(400, "Request body must be a JSON object.")
        if self.names_model:
            # Ollama (Go) matches JSON keys case-insensitively and the last one wins: a
            # "MODEL" beside "model" would reach a model the allowlist never saw.
            variants = [
                k for k in payload if k.lower() in ("model", "name") and k not in MODEL_KEYS
            ]
            if variants:
                raise ProtocolError(
                    400, f"Unexpected field {variants[0]!r}: field names are lowercase."
                )
            self.check_model(request, payload.get("model") or payload.get("name"))
        # Server-wide fields from user keys, and the migration aid: see proxy/policy.py.
        sent = apply_server_policy(
            payload, is_admin=request.user.is_admin, route=self.upstream_path
        )
        if self.error_surface == OPENAI and sent.get("stream") is True:
            options = sent.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # Token accounting (and quotas) need the usage event: ask for it, and keep it
                # from a client that did not (StreamRelay drops it).
                request.drop_usage_event = True
                sent = {**sent, "stream_options": {**(options or {}), "include_usage": True}}
        # Re-serialized only when something changed: otherwise Ollama gets the client's bytes.
        return body if sent is payload else json.dumps(sent).encode()

    def check_model(self, request, model) -> None:
        """Note the model a request names; one this key may not use does not exist."""
        if not isinstance(model, str) or not model.strip():
            raise ProtocolError(400, "model is required")
        request.exchange.model = model
        if not request.user.allows_model(model):
            raise ProtocolError(404, not_found_message(self.error_surface, model))

    def read_multipart(self, request, body: bytes) -> bytes:
        """A multipart form (an audio upload): its `model` field checked, its bytes untouched."""
        model = protocols.multipart_field(body, request.headers.get("Content-Type", ""), "model")
        self.check_model(request, model)
        return body

    async def stream(self, request, reply, lease):
        """Relay chunk by chunk; the usage record is written when the stream ends."""
        exchange = request.exchange
        exchange.deferred = True
        exchange.status = reply.status
        relay = StreamRelay(
            reply,
            lease,
            surface=self.error_surface,
            exchange=exchange,
            drop_usage_event=getattr(request, "drop_usage_event", False),
        )
        if runtime.serving():
            # Django registers `relay.close` as the response's closer.
            streaming = StreamingHttpResponse(relay, status=reply.status)
        else:
            # A per-request loop (Django's test client, WSGI) ends with the view: relay it all
            # before it does. Only the ASGI server streams.
            streaming = HttpResponse(b"".join([c async for c in relay]), status=reply.status)
        self.copy_headers(reply, streaming)
        streaming["Cache-Control"] = "no-cache"
        # nginx and other reverse proxies must not buffer the stream either.
        streaming["X-Accel-Buffering"] = "no"
        return streaming

    def buffered(self, request, reply):
        exchange = request.exchange
        content = reply.content  # read whole by forward()
        exchange.status = reply.status
        if reply.ok and content and self.filter_list:
            content = self.filtered(request, content)
        if (
            reply.ok
            and not self.filter_list  # a list of models counts no tokens
            and reply.headers.get("Content-Type", "").startswith("application/json")
        ):
            exchange.prompt_tokens, exchange.completion_tokens = usage_from_body(content)
        relayed = HttpResponse(content, status=reply.status)
        self.copy_headers(reply, relayed)
        if "Content-Type" not in reply.headers:
            del relayed["Content-Type"]
        return relayed

    def filtered(self, request, content: bytes) -> bytes:
        """Drop the models this key may not use from a list answer."""
        field, name_key = self.filter_list
        try:
            payload = json.loads(content)
            entries = payload[field]
        except (ValueError, KeyError, TypeError):
            return content
        payload[field] = [
            entry for entry in entries if request.user.allows_model(str(entry.get(name_key, "")))
        ]
        return json.dumps(payload).encode()

    @staticmethod
    def copy_headers(source, target) -> None:
        for name in RELAYED_HEADERS:
            if name in source.headers:
                target[name] = source.headers[name]


class AdminProxyView(ProxyView):
    """Model management: changes the server for everyone, so admin keys only.

    With several servers, `?backend=<name>` sends the request to one of them; without it the
    request goes to each in turn, and the answer reports each server's outcome (streamed
    progress lines carry a `backend` field).
    """

    permission_classes = [IsAdminKey]

    async def route(self, request, pool, path, body):
        name = request.GET.get("backend")
        if name is None and len(pool.states) == 1:
            return await super().route(request, pool, path, body)
        if name is not None:
            state = pool.by_name(name)
            if state is None:
                return error_response(self.error_surface, 404, f"backend '{name}' not found")
            return await self.forward(request, pool, path, body, backend=state)
        if self.raw_body:
            return error_response(
                self.error_surface, 400, "Several Ollama servers: name one with ?backend=<name>."
            )
        from proxy.fanout import fan_out

        request.exchange.backend = "*"
        return await fan_out(request, pool.states, path, body)


class OpenAIProxyView(ProxyView):
    error_surface = OPENAI


class ResponsesProxyView(OpenAIProxyView):
    """POST /v1/responses: OpenAI's error shape; a failed stream ends with `response.failed`."""

    error_surface = RESPONSES


class TranscriptionProxyView(OpenAIProxyView):
    """POST /v1/audio/transcriptions: a multipart upload, the model one of its fields."""

    multipart = True
    max_body_bytes = protocols.TRANSCRIPTION_MAX_BYTES


class AnthropicProxyView(ProxyView):
    """Anthropic's Messages API as Ollama serves it: errors in Anthropic's shape."""

    error_surface = ANTHROPIC


class CountTokensView(AnthropicProxyView):
    """POST /v1/messages/count_tokens: Ollama has no such route, nor any tokenizer route.

    Answered 404 in Anthropic's shape once the key and the model were checked (Claude Code then
    falls back to its own estimate). A real count would cost a prompt evaluation on the shared
    server per call; an estimate passed off as a count would be a lie.
    """

    async def relay(self, request, **kwargs):
        try:
            await self.read_body(request)
        except ProtocolError as exc:
            return error_response(self.error_surface, exc.status, exc.message)
        return error_response(
            self.error_surface,
            404,
            "count_tokens is not available: Ollama cannot count tokens without running the "
            "model. Input token counts come with every /v1/messages answer (usage.input_tokens).",
        )


class IdentityRouteView(ModelView):
    """Ollama's ollama.com-identity routes (/api/me, /api/signout, /api/user/keys/*,
    /api/experimental/web_search, web_fetch, model-recommendations): refused for every key.

    They act with the server owner's ollama.com account and key (sign out, delete its keys, web
    searches billed to it): no gateway key, admin or not, speaks for that owner.
    """

    async def refuse(self, request, **kwargs):
        return error_response(
            OLLAMA,
            403,
            "This route acts with the Ollama server owner's ollama.com identity: the gateway "
            "does not relay it.",
        )

    get = post = put = delete = head = refuse


class OpenAIModelView(OpenAIProxyView):
    """GET /v1/models/{model}: a model the key may not use does not exist."""

    upstream_path = "/v1/models/{model}"

    async def get(self, request, model):
        request.exchange.model = model
        # The name becomes part of the upstream path: nothing but a model name may get there.
        if not MODEL_NAME.fullmatch(model) or ".." in model or not request.user.allows_model(model):
            return error_response(OPENAI, 404, not_found_message(OPENAI, model))
        return await self.relay(request, model=quote(model, safe="/:"))
