"""`Authorization: Bearer <key>` (or `X-API-Key: <key>`) authentication for DRF views."""

import logging

from django.conf import settings
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from keys.services import api_key_touch
from usage.services import api_key_authenticate_and_count, auth_failure_hit
from usage.throttling import RateLimited

logger = logging.getLogger("keys.auth")


def raw_key_from_request(request) -> str | None:
    """The key the client sent, or None when it sent none (a foreign scheme counts as none)."""
    header = get_authorization_header(request).split()
    if header and header[0].lower() == b"bearer":
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Bearer <key>'."
            )
        try:
            return header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid API key.") from None
    return request.META.get("HTTP_X_API_KEY") or None


def count_auth_failure(request) -> None:
    """Count a failed (or missing) authentication against the caller's address; past
    AUTH_FAILURES_PER_MINUTE, answer 429 instead of 401."""
    address = getattr(request, "client_addr", None) or "unknown"
    failures, reset = auth_failure_hit(client_addr=address)
    if failures > settings.AUTH_FAILURES_PER_MINUTE:
        raise RateLimited("Too many failed authentications; slow down.", wait=reset)


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw = raw_key_from_request(request)
        if raw is None:
            return None
        # One statement on PostgreSQL: the lookup, and the request counted against the key's
        # hourly limit if the key may be used (KeyRateThrottle then only reads the result).
        key, rate_limit = api_key_authenticate_and_count(raw)
        if key is None:
            self.fail(request, "Invalid API key.", preview=None)
        if not key.is_active:
            self.fail(request, "This API key has been revoked.", preview=key.preview)
        if key.is_expired():
            self.fail(request, "This API key has expired.", preview=key.preview)
        request._request.rate_limit = rate_limit
        api_key_touch(key)
        exchange = getattr(request, "exchange", None)
        if exchange is not None:
            exchange.key = key
        return key, key

    def fail(self, request, message: str, *, preview: str | None):
        logger.warning(
            "authentication failed: %s",
            message,
            extra={
                "client_addr": getattr(request, "client_addr", None),
                # A known key's preview; never anything of an unknown one.
                "key_preview": preview,
                "request_id": getattr(request, "request_id", None),
            },
        )
        count_auth_failure(request)
        raise exceptions.AuthenticationFailed(message)

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) when credentials are missing or wrong.
        return 'Bearer realm="ollama-gateway"'
