"""The ASGI application: the model routes on the event loop, everything else as Django serves it.

Two Django handlers share one process:
- `ModelRoutesHandler` serves the model API (`/api/*` model routes, `/v1/*`): async views behind
  async-only middleware (`MODEL_ROUTE_MIDDLEWARE`), without Django's request signals or any other
  step that would hop to a thread. A request waiting on Ollama, or on a slow client, is a
  coroutine: a socket and a few kilobytes.
- `GatewayASGIHandler` serves the admin, the management API and the docs: Django's own ASGI
  handler, whose synchronous views each run in a thread of their own request context (so admin
  requests run side by side, not behind one thread).

Both read request bodies under a deadline and a size cap, and the model routes give a client that
stops reading `CLIENT_WRITE_TIMEOUT` seconds before its stream is cut (and recorded as
`client_closed`).
"""

import asyncio
import contextlib
import logging
import time

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.http import Http404
from django.urls import set_script_prefix, set_urlconf
from django.utils.log import log_response
from django.utils.module_loading import import_string

from ollama_gateway import db, runtime
from ollama_gateway.errors import (
    MANAGEMENT_PREFIXES,
    error_response,
    handler404,
    surface_for_path,
)
from proxy.protocols import ProtocolError, too_large

logger = logging.getLogger("ollama_gateway.server")

# Uploads of model blobs are gigabytes: no size cap, only the minimum rate.
_UNCAPPED_PREFIXES = ("/api/blobs/",)


def is_model_route(path: str) -> bool:
    if path.startswith("/v1/"):
        return True
    return path.startswith("/api/") and not path.startswith(MANAGEMENT_PREFIXES)


class ClientStalled(Exception):
    """The client stopped reading the answer for CLIENT_WRITE_TIMEOUT seconds."""


def guarded_receive(scope, receive):
    """`receive`, with the request body under a deadline and a size cap.

    A body must arrive within REQUEST_BODY_TIMEOUT seconds, extended by one second per
    REQUEST_BODY_MIN_RATE bytes received (a large upload at a reasonable pace is never cut, a
    trickle is). A body larger than MAX_REQUEST_BODY_BYTES is refused (413) as soon as that is
    known: from its Content-Length, or while it arrives (chunked bodies). Once the body is
    complete, messages pass untouched (the disconnect listener waits as long as it likes).
    """
    capped = not scope["path"].startswith(_UNCAPPED_PREFIXES)
    limit = settings.MAX_REQUEST_BODY_BYTES
    for name, value in scope.get("headers", ()):
        if capped and name == b"content-length" and value.isdigit() and int(value) > limit:
            raise too_large(settings.MAX_REQUEST_BODY_BYTES)
    deadline = time.monotonic() + settings.REQUEST_BODY_TIMEOUT
    received = 0
    complete = False

    async def guarded():
        nonlocal deadline, received, complete
        if complete:
            return await receive()
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                message = await receive()
        except TimeoutError:
            raise ProtocolError(408, "The request body did not arrive in time.") from None
        chunk = message.get("body", b"")
        received += len(chunk)
        deadline += len(chunk) / settings.REQUEST_BODY_MIN_RATE
        if capped and received > limit:
            raise too_large(settings.MAX_REQUEST_BODY_BYTES)
        complete = message["type"] != "http.request" or not message.get("more_body", False)
        return message

    return guarded


class GatewayASGIHandler(ASGIHandler):
    """Django's ASGI handler, reading bodies through `guarded_receive`."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        except ProtocolError as exc:
            await _refuse(scope, send, exc, self.send_response)

    async def handle(self, scope, receive, send):
        await super().handle(scope, guarded_receive(scope, receive), send)


async def _refuse(scope, send, exc: ProtocolError, send_response) -> None:
    logger.info("request body refused: %s %s", exc.status, scope.get("path"))
    response = error_response(surface_for_path(scope["path"]), exc.status, exc.message)
    response["Connection"] = "close"
    await send_response(response, send)


class ModelRoutesHandler(GatewayASGIHandler):
    """The model API on the event loop: no thread hop, no request signals (see module doc)."""

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_inline_404)
        for path in reversed(settings.MODEL_ROUTE_MIDDLEWARE):
            middleware = import_string(path)(handler)
            if not getattr(middleware, "async_capable", False) or not iscoroutinefunction(
                middleware
            ):
                raise ImproperlyConfigured(f"{path} must be async-capable (MODEL_ROUTE_MIDDLEWARE)")
            handler = convert_exception_to_response(middleware)
        self._middleware_chain = handler

    async def _get_response_inline_404(self, request):
        """An unknown path answers here (Django's converter would build its 404 in a thread)."""
        try:
            return await self._get_response_async(request)
        except Http404:
            return handler404(request)

    async def get_response_async(self, request):
        """Django's, less its thread hop to log an error answer (logging needs no thread)."""
        set_urlconf(settings.ROOT_URLCONF)
        response = await self._middleware_chain(request)
        response._resource_closers.append(request.close)
        if response.status_code >= 400:
            log_response(
                "%s: %s", response.reason_phrase, request.path, response=response, request=request
            )
        return response

    async def __call__(self, scope, receive, send):
        # No ThreadSensitiveContext: nothing here runs in a thread.
        with runtime.request_in_flight():
            try:
                await self.handle(scope, receive, send)
            except ProtocolError as exc:
                await _refuse(scope, send, exc, self.send_response)
            except asyncio.CancelledError:
                # The server cut it at shutdown (past its graceful timeout), after its cleanup
                # ran (the record of a cut stream): an expected end, not an application error.
                logger.warning("request cut at shutdown: %s", scope.get("path"))

    async def handle(self, scope, receive, send):
        """Django's `ASGIHandler.handle`, less its thread hops (request_started/finished
        signals, `sync_to_async(response.close)`): the body, the view, and a disconnect
        listener that cancels the view (and so the request to Ollama) when the client goes."""
        receive = guarded_receive(scope, receive)
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        set_urlconf(settings.ROOT_URLCONF)
        request, error = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error, send)
            return

        responses = []

        async def process_request():
            response = await self.run_get_response(request)
            responses.append(response)
            try:
                await self.send_response(response, send)
            except ClientStalled:
                logger.warning(
                    "client stopped reading; answer cut",
                    extra={"request_id": getattr(request, "request_id", None)},
                )
            except OSError:
                pass

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        worker = asyncio.create_task(process_request())
        try:
            await asyncio.wait([listener, worker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listener, worker):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                        await task
            body_file.close()
            # A response's closers run however it ended (a stream never started included).
            for response in responses:
                for closer in response._resource_closers:
                    closer()
        if not listener.cancelled():
            listener.exception()  # retrieved: a client that went away is no error
        if not worker.cancelled() and worker.exception() is not None:
            raise worker.exception()

    async def listen_for_disconnect(self, receive):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        # Another body message after the body: not for us; keep listening.
        return await self.listen_for_disconnect(receive)

    async def send_response(self, response, send):
        """Every message under CLIENT_WRITE_TIMEOUT: the server waits for the client to take
        what it was sent before it accepts more (flow control), so a stalled reader shows
        here, and is cut instead of holding a stream (and a slot on Ollama) forever."""
        timeout = settings.CLIENT_WRITE_TIMEOUT
        if not response.streaming and not response.has_header("Content-Length"):
            # Whole answers say their length (Django's CommonMiddleware would; it is not here).
            response["Content-Length"] = str(len(response.content))

        async def timed_send(message):
            try:
                async with asyncio.timeout(timeout):
                    await send(message)
            except TimeoutError:
                raise ClientStalled() from None

        await super().send_response(response, timed_send)


_django = None
_models = None


async def application(scope, receive, send):
    """The ASGI entry point (see `ollama_gateway.asgi`)."""
    global _django, _models
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    if is_model_route(scope["path"]):
        if _models is None:
            _models = ModelRoutesHandler()
        await _models(scope, receive, send)
    else:
        if _django is None:
            _django = GatewayASGIHandler()
        await _django(scope, receive, send)


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            runtime.start_serving()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            # Within the 5 s gunicorn leaves after the graceful timeout (server.py).
            await runtime.stop_serving(timeout=4.0)
            from usage.queue import close_queue

            await close_queue()
            await db.close_pool()
            from proxy.upstream import close_sessions

            await close_sessions()
            await send({"type": "lifespan.shutdown.complete"})
            return
