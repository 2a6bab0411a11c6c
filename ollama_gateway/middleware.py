"""Request id, client address, rate-limit headers, and one usage record per API request."""

import asyncio
import ipaddress
import logging
import re
import uuid

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import DisallowedHost

from keys.crypto import redact_keys
from ollama_gateway import runtime
from ollama_gateway.errors import handler400
from usage.services import Exchange, ausage_record, usage_record

# What nginx and Ollama log for a request whose client closed the connection first.
CLIENT_CLOSED_STATUS = 499
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_RECORDED_PREFIXES = ("/api/", "/v1/")
_UNRECORDED = ("/api/schema",)

logger = logging.getLogger("ollama_gateway.requests")


def request_id_for(request) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _ip(value: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip())) if value else None
    except ValueError:
        return None


def client_address(request) -> str | None:
    """The caller's address; behind a trusted reverse proxy, the one it says it served."""
    remote = _ip(request.META.get("REMOTE_ADDR"))
    if remote not in settings.TRUSTED_PROXIES:
        return remote
    # The rightmost address no trusted proxy added is the client's.
    for hop in reversed(request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        address = _ip(hop)
        if address and address not in settings.TRUSTED_PROXIES:
            return address
    return remote


def add_rate_limit_headers(response, state) -> None:
    for prefix in ("RateLimit", "X-RateLimit"):
        response[f"{prefix}-Limit"] = str(state.limit)
        response[f"{prefix}-Remaining"] = str(state.remaining)
        response[f"{prefix}-Reset"] = str(state.reset)


class GatewayMiddleware:
    """Gives every request an id (returned as X-Request-ID) and an Exchange for API routes.

    Views and the authentication fill the exchange in; this writes it once the answer is out
    (after the last byte for blocking views; as a background task on the event loop), unless a
    streaming relay took it over (it writes when the stream ends). Sync and async capable: on
    the event loop's model routes it runs without a thread hop.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request):
        if iscoroutinefunction(self):
            return self.__acall__(request)
        exchange = self._begin(request)
        response = self.get_response(request)
        if self._finish(request, response, exchange):
            # Written when the server closes the response, after its last byte went out: the
            # caller does not wait for the bookkeeping. (Django runs these closers before it
            # hands the database connection back.)
            response._resource_closers.append(lambda: usage_record(exchange))
        return response

    async def __acall__(self, request):
        try:
            request.get_host()  # ALLOWED_HOSTS, as on every other route
        except DisallowedHost:
            logger.warning("refused Host header %r", request.META.get("HTTP_HOST", "")[:200])
            return handler400(request)
        exchange = self._begin(request)
        try:
            response = await self.get_response(request)
        except asyncio.CancelledError:
            # The client went away while the view waited (on Ollama, a model loading...).
            if exchange is not None and not exchange.deferred and request.resolver_match:
                exchange.status = exchange.status or CLIENT_CLOSED_STATUS
                exchange.outcome = "client_closed"
                runtime.spawn(ausage_record(exchange))
            raise
        if self._finish(request, response, exchange):
            await runtime.after_response(ausage_record(exchange))
        return response

    @staticmethod
    def _begin(request) -> Exchange | None:
        request.request_id = request_id_for(request)
        request.client_addr = client_address(request)
        path = request.path
        if path.startswith(_RECORDED_PREFIXES) and not path.startswith(_UNRECORDED):
            request.exchange = Exchange(
                method=request.method,
                route=redact_keys(path)[:64],  # a key given in a path is never stored
                request_id=request.request_id,
                client_addr=request.client_addr,
            )
            return request.exchange
        return None

    @staticmethod
    def _finish(request, response, exchange) -> bool:
        """Headers every answer gets; whether its record is still to be written."""
        response["X-Request-ID"] = request.request_id
        if exchange is None:
            return False
        admission = exchange.admission
        if admission is not None and admission.rate_limit is not None:
            add_rate_limit_headers(response, admission.rate_limit)
        # Only requests that reached a gateway view (and so authentication) are recorded:
        # unknown paths are not, so they cannot fill the table or mint metric series.
        if exchange.deferred or not request.resolver_match:
            return False
        exchange.status = exchange.status or response.status_code
        return True
