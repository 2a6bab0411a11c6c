"""The model API: Ollama's native routes and its OpenAI-compatible routes, relayed.

Every route is a DRF view, so authentication, permissions and rate limits run exactly as on the
management API; bodies are never parsed by DRF (we forward the client's bytes untouched) and
errors come out in the surface's own shape (see ollama_gateway/errors.py).
"""

import json
import logging
import re
import time
from urllib.parse import quote

import requests
from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer

from keys.permissions import IsAdminKey, IsApiKey
from ollama_gateway.api import GatewayAPIView
from ollama_gateway.errors import ANTHROPIC, OLLAMA, OPENAI, RESPONSES, error_response
from proxy import protocols
from proxy.backends import CHECK_TIMEOUT, backend_pool
from proxy.streaming import StreamRelay, usage_from_body
from usage import metrics
from usage.services import usage_record

logger = logging.getLogger("proxy")

STREAM_TYPES = ("application/x-ndjson", "text/event-stream")
MODEL_KEYS = ("model", "name")
PROGRESS_ROUTES = ("/api/pull", "/api/push", "/api/create")
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


def is_stream(response) -> bool:
    return response.ok and response.headers.get("Content-Type", "").startswith(STREAM_TYPES)


class JsonOnly(BaseContentNegotiation):
    """Our own errors are JSON whatever the client accepts (SSE clients send Accept too)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type

    def select_parser(self, request, parsers):
        return None


class RequestBodyStream:
    """A client's body as a sized iterable, so that requests streams it upstream with its
    Content-Length instead of reading gigabytes (model blobs) into memory."""

    BLOCK = 1024 * 1024

    def __init__(self, request):
        self.request = request
        self.length = int(request.META.get("CONTENT_LENGTH") or 0)

    def __len__(self):
        return self.length

    def __iter__(self):
        while block := self.request.read(self.BLOCK):
            yield block


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found_message(surface: str, model: str) -> str:
    """Exactly what Ollama says for a model it does not have, so allowlists do not leak."""
    if surface != OLLAMA:
        return f'model "{model}" not found, try pulling it first'
    return f"model '{model}' not found"


class ProxyView(GatewayAPIView):
    """Relays one request to `upstream_path` on Ollama and its answer back, streamed or not."""

    error_surface = OLLAMA
    permission_classes = [IsApiKey]
    parser_classes = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonOnly
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

    def get(self, request, **kwargs):
        return self.relay(request, **kwargs)

    post = delete = head = get

    def relay(self, request, **kwargs):
        try:
            body = b"" if self.raw_body else self.read_body(request)
        except BadRequest as exc:
            return error_response(self.error_surface, exc.status, exc.message)
        return self.route(request, backend_pool(), self.upstream_path.format(**kwargs), body)

    def route(self, request, pool, path, body):
        """Which server(s) get a validated request: lists merge the pool, the rest go to one."""
        if self.filter_list and len(pool.states) > 1:
            return self.merged(request, pool, path)
        return self.forward(request, pool, path, body)

    def forward(self, request, pool, path, body, backend=None):
        """Send to the server `pool.choose` picks (or `backend`), and relay its answer.

        A connection failure sets that server aside and tries the next one, as long as nothing
        reached the client: a whole answer is read here, so a server that dies in the middle of
        one is replaced too; a stream is not, once it began. A timeout is not retried: the
        server may still be working on it.
        """
        headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
        headers["X-Request-ID"] = request.request_id
        exchange = request.exchange
        tried = []
        while True:
            state = backend or pool.choose(exchange.model, exclude=tried)
            if state is None:
                return error_response(self.error_surface, 502, "Could not reach Ollama.")
            data = RequestBodyStream(request._request) if self.raw_body else body or None
            state.acquire()
            try:
                response = state.upstream.request(
                    request.method, path, data=data, headers=headers, stream=True
                )
                if not is_stream(response):
                    response.content  # noqa: B018  (read now, while another server can answer)
                break
            except (
                requests.ConnectTimeout,
                requests.ConnectionError,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                state.release()
                pool.mark_down(state, type(exc).__name__)
                tried.append(state)
                if backend is not None or self.raw_body:
                    # A server named by the caller, or a body already consumed: no retry.
                    return error_response(self.error_surface, 502, "Could not reach Ollama.")
            except requests.Timeout:
                state.release()
                logger.warning(
                    "upstream timeout on %s", path, extra={"request_id": request.request_id}
                )
                return error_response(self.error_surface, 504, "Ollama did not answer in time.")
            except requests.RequestException as exc:
                state.release()
                logger.warning("upstream request failed: %s", type(exc).__name__)
                return error_response(self.error_surface, 502, "Could not reach Ollama.")
        exchange.backend = state.name
        if response.status_code in (401, 403):
            # Ollama refused the gateway's own credential: not the client's doing, nor its key.
            response.close()
            state.release()
            logger.error("ollama server %s refused the gateway's credential", state.name)
            return error_response(
                self.error_surface, 502, "Ollama refused the gateway's credentials."
            )
        if response.ok and self.names_model and exchange.model:
            pool.note_loaded(state, exchange.model)
        if is_stream(response):
            return self.stream(request, response, exchange, state)
        try:
            return self.buffered(request, response, exchange)
        finally:
            state.release()

    def merged(self, request, pool, path):
        """A list route over several servers: their lists merged, without duplicates."""
        field, name_key = self.filter_list
        entries, payload = {}, None
        for state in pool.states:
            if not state.usable(time.monotonic()):
                continue
            try:
                answer = state.upstream.request("GET", path, timeout=CHECK_TIMEOUT)
                answer.raise_for_status()
                payload = answer.json()
                listed = payload[field]
            except (requests.RequestException, ValueError, KeyError, TypeError):
                continue
            for entry in listed:
                entries.setdefault(str(entry.get(name_key, "")), entry)
        if payload is None:
            return error_response(self.error_surface, 502, "Could not reach Ollama.")
        request.exchange.backend = "*"
        payload[field] = [
            entry for name, entry in sorted(entries.items()) if request.user.allows_model(name)
        ]
        return JsonResponse(payload)

    def read_body(self, request) -> bytes:
        """The client's body, validated enough that Ollama never sees a bad one."""
        limit = self.max_body_bytes or settings.MAX_REQUEST_BODY_BYTES
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > limit:
            raise BadRequest(413, f"Request body is larger than {limit} bytes.")
        try:
            # zstd (Codex) and gzip bodies: read decoded, bounded by the same limit.
            body = protocols.decode_body(
                request._request.body, request.headers.get("Content-Encoding"), limit
            )
            if self.multipart:
                return self.read_multipart(request, body)
        except protocols.ProtocolError as exc:
            raise BadRequest(exc.status, exc.message) from None
        if request.method in ("GET", "HEAD") or (not self.names_model and not body):
            return body
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest(400, "Request body is not valid JSON.") from None
        if not isinstance(payload, dict):
            raise BadRequest(400, "Request body must be a JSON object.")
        if self.names_model:
            # Ollama (Go) matches JSON keys case-insensitively and the last one wins: a
            # "MODEL" beside "model" would reach a model the allowlist never saw.
            variants = [
                k for k in payload if k.lower() in ("model", "name") and k not in MODEL_KEYS
            ]
            if variants:
                raise BadRequest(
                    400, f"Unexpected field {variants[0]!r}: field names are lowercase."
                )
            self.check_model(request, payload.get("model") or payload.get("name"))
        if self.error_surface == OPENAI and payload.get("stream") is True:
            options = payload.get("stream_options")
            if not (isinstance(options, dict) and options.get("include_usage") is True):
                # Token accounting (and quotas) need the usage event: ask for it, and keep it
                # from a client that did not (StreamRelay drops it).
                request.drop_usage_event = True
                payload["stream_options"] = {**(options or {}), "include_usage": True}
                return json.dumps(payload).encode()
        return body

    def check_model(self, request, model) -> None:
        """Note the model a request names; one this key may not use does not exist."""
        if not isinstance(model, str) or not model.strip():
            raise BadRequest(400, "model is required")
        request.exchange.model = model
        if not request.user.allows_model(model):
            raise BadRequest(404, not_found_message(self.error_surface, model))

    def read_multipart(self, request, body: bytes) -> bytes:
        """A multipart form (an audio upload): its `model` field checked, its bytes untouched."""
        model = protocols.multipart_field(body, request.headers.get("Content-Type", ""), "model")
        self.check_model(request, model)
        return body

    def stream(self, request, response, exchange, state):
        """Relay chunk by chunk; the usage record is written when the stream ends."""
        exchange.deferred = True
        exchange.status = response.status_code

        metrics.STREAMS_IN_FLIGHT.inc()

        def on_finish(outcome, ttft_ms, prompt_tokens, completion_tokens):
            state.release()
            metrics.STREAMS_IN_FLIGHT.dec()
            exchange.outcome = outcome
            exchange.ttft_ms = ttft_ms
            exchange.prompt_tokens = prompt_tokens
            exchange.completion_tokens = completion_tokens
            usage_record(exchange)

        relay = StreamRelay(
            response,
            surface=self.error_surface,
            started=exchange.started,
            on_finish=on_finish,
            drop_usage_event=getattr(request, "drop_usage_event", False),
        )
        if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
            # Give the pooled connection back for the stream's lifetime (minutes, maybe):
            # the record at its end takes one again.
            connection.close()
        streaming = StreamingHttpResponse(relay, status=response.status_code)
        self.copy_headers(response, streaming)
        streaming["Cache-Control"] = "no-cache"
        # nginx and other reverse proxies must not buffer the stream either.
        streaming["X-Accel-Buffering"] = "no"
        return streaming

    def buffered(self, request, response, exchange):
        content = response.content  # read whole by forward()
        response.close()
        exchange.status = response.status_code
        if response.ok and content and self.filter_list:
            content = self.filtered(request, content)
        if response.ok and response.headers.get("Content-Type", "").startswith("application/json"):
            exchange.prompt_tokens, exchange.completion_tokens = usage_from_body(content)
        relayed = HttpResponse(content, status=response.status_code)
        self.copy_headers(response, relayed)
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

    def route(self, request, pool, path, body):
        name = request.query_params.get("backend")
        if name is None and len(pool.states) == 1:
            return super().route(request, pool, path, body)
        if name is not None:
            state = pool.by_name(name)
            if state is None:
                return error_response(self.error_surface, 404, f"backend '{name}' not found")
            return self.forward(request, pool, path, body, backend=state)
        if self.raw_body:
            return error_response(
                self.error_surface, 400, "Several Ollama servers: name one with ?backend=<name>."
            )
        request.exchange.backend = "*"
        return fan_out(request, pool.states, path, body)


def fan_out(request, states, path: str, body: bytes):
    """Send one model-management request to every server, one after the other."""
    payload = json.loads(body) if body else {}
    # Only these answer with progress streams; copy and delete answer once.
    streamed = path in PROGRESS_ROUTES and payload.get("stream", True) is not False
    headers = {"Content-Type": "application/json", "X-Request-ID": request.request_id}

    def send(state):
        return state.upstream.request(
            request.method, path, data=body or None, headers=headers, stream=streamed
        )

    if not streamed:
        results = []
        for state in states:
            try:
                answer = send(state)
                results.append(
                    {"backend": state.name, "status": answer.status_code, "body": answer.text}
                )
            except requests.RequestException:
                results.append(
                    {"backend": state.name, "status": 502, "body": "Could not reach Ollama."}
                )
        failed = [r for r in results if not 200 <= r["status"] < 300]
        if failed:
            message = "; ".join(f"{r['backend']}: {r['body'].strip()}" for r in failed)
            return JsonResponse({"error": message, "backends": results}, status=failed[0]["status"])
        return JsonResponse({"status": "success", "backends": results})

    def progress():
        failures = []
        for state in states:
            try:
                with send(state) as answer:
                    for line in answer.iter_lines():
                        if not line:
                            continue
                        event = {**json.loads(line), "backend": state.name}
                        if "error" in event:
                            failures.append(f"{state.name}: {event['error']}")
                        elif event.get("status") != "success":
                            yield json.dumps(event).encode() + b"\n"
                    if not answer.ok and not failures:
                        failures.append(f"{state.name}: status {answer.status_code}")
            except (requests.RequestException, ValueError):
                failures.append(f"{state.name}: could not reach Ollama")
        final = {"error": "; ".join(failures)} if failures else {"status": "success"}
        yield json.dumps(final).encode() + b"\n"

    return StreamingHttpResponse(progress(), content_type="application/x-ndjson")


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

    def relay(self, request, **kwargs):
        try:
            self.read_body(request)
        except BadRequest as exc:
            return error_response(self.error_surface, exc.status, exc.message)
        return error_response(
            self.error_surface,
            404,
            "count_tokens is not available: Ollama cannot count tokens without running the "
            "model. Input token counts come with every /v1/messages answer (usage.input_tokens).",
        )


class IdentityRouteView(GatewayAPIView):
    """Ollama's ollama.com-identity routes (/api/me, /api/signout, /api/user/keys/*,
    /api/experimental/web_search, web_fetch, model-recommendations): refused for every key.

    They act with the server owner's ollama.com account and key (sign out, delete its keys, web
    searches billed to it): no gateway key, admin or not, speaks for that owner.
    """

    error_surface = OLLAMA
    permission_classes = [IsApiKey]
    parser_classes = []
    renderer_classes = [JSONRenderer]
    content_negotiation_class = JsonOnly

    def refuse(self, request, **kwargs):
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

    def get(self, request, model):
        request.exchange.model = model
        # The name becomes part of the upstream path: nothing but a model name may get there.
        if not MODEL_NAME.fullmatch(model) or ".." in model or not request.user.allows_model(model):
            return error_response(OPENAI, 404, not_found_message(OPENAI, model))
        return self.relay(request, model=quote(model, safe="/:"))
