"""`Authorization: Bearer <key>` (or `X-API-Key: <key>`) authentication.

One class decides who a key is, for DRF's views (`authenticate`) and for the event loop's model
routes (`aauthenticate`): the same checks, the blocking or the async form of the same statement.
What it learned travels as `request.auth`, an `Admission`.
"""

import logging
from dataclasses import dataclass

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from keys.models import ApiKey
from keys.services import aapi_key_touch, api_key_touch
from ollama_gateway import db
from usage.limits import (
    KeyRateThrottle,
    RateLimitState,
    aauth_failure_hit,
    akey_lookup_and_count,
    auth_failure_hit,
    check_auth_failures,
    key_lookup_and_count,
)

logger = logging.getLogger("keys.auth")


@dataclass
class Admission:
    """What authentication learned about a request: its key and its place in the key's hourly
    window (counted in the same statement as the lookup; None when not counted yet)."""

    key: ApiKey
    rate_limit: RateLimitState | None
    request_id: str | None = None


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


def _client_addr(request) -> str:
    return getattr(request, "client_addr", None) or "unknown"


def count_auth_failure(request) -> None:
    """Count a failed (or missing) authentication against the caller's address; past
    AUTH_FAILURES_PER_MINUTE, answer 429 instead of 401."""
    check_auth_failures(*auth_failure_hit(client_addr=_client_addr(request)))


async def acount_auth_failure(request) -> None:
    check_auth_failures(*await aauth_failure_hit(client_addr=_client_addr(request)))


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        raw = raw_key_from_request(request)
        if raw is None:
            return None
        # One statement on PostgreSQL: the lookup, and the request counted against the key's
        # hourly limit if the key may be used (KeyRateThrottle then only reads the result).
        key, rate_limit = key_lookup_and_count(raw)
        refusal = self._refusal(request, key)
        if refusal is not None:
            count_auth_failure(request)
            raise exceptions.AuthenticationFailed(refusal)
        api_key_touch(key)
        return self._admit(request, key, rate_limit)

    async def aauthenticate(self, request):
        """`authenticate` for the event loop: (key, Admission), or None without credentials."""
        raw = raw_key_from_request(request)
        if raw is None:
            return None
        key, rate_limit = await akey_lookup_and_count(raw)
        refusal = self._refusal(request, key)
        if refusal is not None:
            await acount_auth_failure(request)
            raise exceptions.AuthenticationFailed(refusal)
        await aapi_key_touch(key)
        return self._admit(request, key, rate_limit)

    @staticmethod
    def _admit(request, key, rate_limit):
        exchange = getattr(request, "exchange", None)
        if exchange is not None:
            exchange.key = key
        admission = Admission(key, rate_limit, getattr(request, "request_id", None))
        if exchange is not None:
            exchange.admission = admission
        return key, admission

    @staticmethod
    def _refusal(request, key) -> str | None:
        """Why `key` may not be used (logged), or None if it may."""
        if key is None:
            message, preview = "Invalid API key.", None
        elif not key.is_active:
            message, preview = "This API key has been revoked.", key.preview
        elif key.is_expired():
            message, preview = "This API key has expired.", key.preview
        else:
            return None
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
        return message

    def authenticate_header(self, request):
        # Makes DRF answer 401 (not 403) when credentials are missing or wrong.
        return 'Bearer realm="ollama-gateway"'


_KEY_STATE = f"SELECT is_active, expires_at FROM {ApiKey._meta.db_table} WHERE id = %s"


def _key_state(pk):
    return ApiKey.objects.filter(pk=pk).values_list("is_active", "expires_at").first()


async def areadmit(key: ApiKey, exchange=None) -> None:
    """A request that waited in the GPU queue (usage/queue.py), about to run: its key as it is
    now (revoked or expired meanwhile: 401, as authentication says it) and its token limits
    with what the requests that ran meanwhile spent (429). One statement, plus one per token
    limit the key has."""
    if db.pooled():
        row = await db.fetchone(_KEY_STATE, [key.pk])
    else:
        row = await db.in_thread(_key_state)(key.pk)
    key.is_active, key.expires_at = row or (False, None)  # gone: as good as revoked
    refusal = ApiKeyAuthentication._refusal(exchange, key)
    if refusal is not None:
        raise exceptions.AuthenticationFailed(refusal)
    await KeyRateThrottle().acheck_tokens(key)
