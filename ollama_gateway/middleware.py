"""Request id, and one usage record per API request."""

import logging
import re
import uuid

from django.db import DatabaseError

from usage.services import Exchange, usage_record

logger = logging.getLogger("ollama_gateway.request")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_RECORDED_PREFIXES = ("/api/", "/v1/")
_UNRECORDED = ("/api/schema",)


def request_id_for(request) -> str:
    """The client's X-Request-ID when it is sane, else a fresh one."""
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class GatewayMiddleware:
    """Gives every request an id (returned as X-Request-ID) and an Exchange for API routes.

    Views and the authentication fill the exchange in; this writes it when the response is
    ready, unless a streaming relay took it over (it writes when the stream ends).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = request_id_for(request)
        path = request.path
        if path.startswith(_RECORDED_PREFIXES) and not path.startswith(_UNRECORDED):
            request.exchange = Exchange(
                method=request.method,
                route=path[:64],
                request_id=request.request_id,
                client_addr=request.META.get("REMOTE_ADDR") or None,
            )
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        exchange = getattr(request, "exchange", None)
        if exchange is not None and not exchange.deferred:
            exchange.status = exchange.status or response.status_code
            try:
                usage_record(exchange)
            except DatabaseError:
                logger.exception(
                    "could not write the usage record", extra={"request_id": request.request_id}
                )
        return response
