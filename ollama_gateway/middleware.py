"""Request id, client address, rate-limit headers, and one usage record per API request."""

import ipaddress
import re
import uuid

from django.conf import settings

from keys.crypto import redact_keys
from usage.services import Exchange, usage_record

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_RECORDED_PREFIXES = ("/api/", "/v1/")
_UNRECORDED = ("/api/schema",)


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

    Views and the authentication fill the exchange in; this writes it when the response is
    ready, unless a streaming relay took it over (it writes when the stream ends).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
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
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        state = getattr(request, "rate_limit", None)
        if state is not None:
            add_rate_limit_headers(response, state)
        exchange = getattr(request, "exchange", None)
        # Only requests that reached a gateway view (and so authentication) are recorded:
        # unknown paths are not, so they cannot fill the table or mint metric series.
        if exchange is not None and not exchange.deferred and request.resolver_match:
            exchange.status = exchange.status or response.status_code
            # Written when the server closes the response, after its last byte went out: the
            # caller does not wait for the bookkeeping. (Django runs these closers before it
            # hands the database connection back.)
            response._resource_closers.append(lambda: usage_record(exchange))
        return response
