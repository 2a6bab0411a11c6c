"""Per-key limits, as a DRF throttle: requests per hour (exact) and tokens per day."""

import logging
from datetime import timedelta

from django.utils import timezone
from rest_framework.exceptions import APIException
from rest_framework.throttling import BaseThrottle

from usage.services import rate_limit_hit, tokens_used_today

logger = logging.getLogger("usage.limits")


class RateLimited(APIException):
    status_code = 429
    default_detail = "Rate limit exceeded"
    default_code = "rate_limited"

    def __init__(self, detail=None, *, wait: int):
        super().__init__(detail)
        # DRF's exception handler turns this into Retry-After.
        self.wait = wait


class KeyRateThrottle(BaseThrottle):
    """Counts every authenticated request against its key's hourly window (one upsert), then
    refuses keys whose daily token quota is spent (one read, only for keys with a quota).

    The state goes on the request so that every response carries the RateLimit-* headers.
    """

    def allow_request(self, request, view):
        key = request.user
        if key is None:
            return True
        # Counted by the authentication in the same statement as the key lookup.
        state = getattr(request._request, "rate_limit", None) or rate_limit_hit(key=key)
        request._request.rate_limit = state
        if not state.allowed:
            logger.warning(
                "rate limit exceeded",
                extra={
                    "key_preview": key.preview,
                    "limit": state.limit,
                    "request_id": getattr(request, "request_id", None),
                },
            )
            raise RateLimited(wait=state.reset)
        if key.token_quota is not None and tokens_used_today(key=key) >= key.token_quota:
            now = timezone.now()
            midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
            logger.warning(
                "token quota exceeded",
                extra={"key_preview": key.preview, "quota": key.token_quota},
            )
            raise RateLimited(
                "Token quota exceeded", wait=int((midnight - now).total_seconds()) + 1
            )
        return True
