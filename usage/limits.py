"""Per-key limits and the slowing of guessers, each one an atomic SQL statement.

- the hourly request limit: counted in the same statement that looks the key up (PostgreSQL),
  so a proxied request pays one round trip for both;
- the daily token quota: one read, only for keys that have a quota;
- tokens per minute: one read, only for keys that have that limit (counted by the statement
  that writes the request's record, usage/services.py);
- failed authentications per client address and minute.

Each has a blocking form (Django's connection: the management API, SQLite, tests) and an async
one for the event loop (`ollama_gateway.db`), running the very same SQL. `KeyRateThrottle` is
the one DRF throttle that decides, from both paths.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone
from rest_framework.exceptions import Throttled
from rest_framework.throttling import BaseThrottle

from keys.crypto import hash_key, looks_like_key
from keys.models import ApiKey
from ollama_gateway import db
from usage.models import (
    AuthFailureCounter,
    RateCounter,
    TokenCounter,
    UsageRollup,
    day_start,
    hour_start,
)

logger = logging.getLogger("usage.limits")


class RateLimited(Throttled):
    """429 with Retry-After (DRF's exception handler sets it from `wait`)."""

    default_detail = "Rate limit exceeded"
    default_code = "rate_limited"

    def __init__(self, detail=None, *, wait: int):
        # Not Throttled's own message ("Expected available in N seconds"): Retry-After says it.
        super(Throttled, self).__init__(detail)
        self.wait = wait


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset: int  # seconds until the window ends
    allowed: bool


def _rate_state(key, counted: int | None, now: datetime) -> RateLimitState:
    """The window's state after an attempt; `counted` is None when the limit was reached."""
    reset = int((hour_start(now) + timedelta(hours=1) - now).total_seconds()) + 1
    if counted is None:
        return RateLimitState(key.rate_limit, 0, reset, allowed=False)
    return RateLimitState(key.rate_limit, max(key.rate_limit - counted, 0), reset, allowed=True)


def _counter_increment_sql(table: str, keys: tuple[str, ...], column: str, *, capped=False):
    """Insert a counter row at 1 or add 1 to it, returning the new count. With `capped`, only
    while the count is under a limit passed as the last parameter (no row returned past it)."""
    names = ", ".join(keys)
    sql = (
        f"INSERT INTO {table} ({names}, {column}) VALUES ({', '.join(['%s'] * len(keys))}, 1) "
        f"ON CONFLICT ({names}) DO UPDATE SET {column} = {table}.{column} + 1 "
    )
    if capped:
        sql += f"WHERE {table}.{column} < %s "
    return sql + f"RETURNING {column}"


_RATE_HIT = _counter_increment_sql(
    RateCounter._meta.db_table, ("key_id", "window_start"), "requests", capped=True
)


def rate_limit_hit(*, key, now: datetime | None = None) -> RateLimitState:
    """Count one request in its key's current hour, unless the limit is reached.

    A single upsert: the row is only incremented while under the limit, and the database
    serializes concurrent increments of one row, so exactly `rate_limit` requests get through
    per hour whatever the number of threads and processes.
    """
    now = now or timezone.now()
    window = db.wrapper().ops.adapt_datetimefield_value(hour_start(now))
    with connection.cursor() as cursor:
        cursor.execute(_RATE_HIT, [key.pk, window, key.rate_limit])
        row = cursor.fetchone()
    return _rate_state(key, row[0] if row else None, now)


_KEY_FIELDS = [f.attname for f in ApiKey._meta.concrete_fields]
# Django's connection hands JSON columns over as text, psycopg's own as Python values.
_JSON_FIELDS = [
    (i, f) for i, f in enumerate(ApiKey._meta.concrete_fields) if hasattr(f, "from_db_value")
]
_KEY_COLUMNS = ", ".join(f.column for f in ApiKey._meta.concrete_fields)
# PostgreSQL: the key lookup and the count of the request against its window in one statement
# (one round trip). The request is counted only for a usable key under its limit; `counted`
# is NULL otherwise.
_AUTHENTICATE_AND_COUNT = f"""
WITH key AS (SELECT {_KEY_COLUMNS} FROM {ApiKey._meta.db_table} WHERE key_hash = %s),
hit AS (
    INSERT INTO {RateCounter._meta.db_table} AS counter (key_id, window_start, requests)
    SELECT id, %s, 1 FROM key WHERE is_active AND (expires_at IS NULL OR expires_at > %s)
    ON CONFLICT (key_id, window_start) DO UPDATE SET requests = counter.requests + 1
    WHERE counter.requests < (SELECT rate_limit FROM key)
    RETURNING requests
)
SELECT {_KEY_COLUMNS}, (SELECT requests FROM hit) AS counted FROM key
"""


def _key_and_state(row, now) -> tuple[ApiKey | None, RateLimitState | None]:
    if row is None:
        return None, None
    values = list(row[:-1])
    for i, field in _JSON_FIELDS:
        if isinstance(values[i], str):
            values[i] = field.from_db_value(values[i], None, connection)
    key = ApiKey.from_db("default", _KEY_FIELDS, values)
    if not key.is_usable(now):
        return key, None
    return key, _rate_state(key, row[-1], now)


def _lookup_and_count_sync(raw_key: str, now: datetime):
    if db.wrapper().vendor != "postgresql":
        # SQLite: the lookup, then the count (two statements).
        from keys.services import api_key_authenticate

        key = api_key_authenticate(raw_key)
        if key is None or not key.is_usable(now):
            return key, None
        return key, rate_limit_hit(key=key, now=now)
    with connection.cursor() as cursor:
        cursor.execute(_AUTHENTICATE_AND_COUNT, [hash_key(raw_key), hour_start(now), now])
        return _key_and_state(cursor.fetchone(), now)


def key_lookup_and_count(raw_key: str) -> tuple[ApiKey | None, RateLimitState | None]:
    """The key a raw value belongs to (whatever its state; None if unknown) and, for a usable
    key, the request counted against its hourly limit (`allowed` False past the limit)."""
    if not looks_like_key(raw_key):
        return None, None
    return _lookup_and_count_sync(raw_key, timezone.now())


async def akey_lookup_and_count(raw_key: str) -> tuple[ApiKey | None, RateLimitState | None]:
    """`key_lookup_and_count` from the event loop: one pooled statement on PostgreSQL."""
    if not looks_like_key(raw_key):
        return None, None
    now = timezone.now()
    if not db.pooled():
        return await db.in_thread(_lookup_and_count_sync)(raw_key, now)
    row = await db.fetchone(_AUTHENTICATE_AND_COUNT, [hash_key(raw_key), hour_start(now), now])
    return _key_and_state(row, now)


_TOKENS_TODAY = (
    f"SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) "
    f"FROM {UsageRollup._meta.db_table} WHERE key_pk = %s AND span = %s AND start = %s"
)


def _tokens_params(key, now):
    day = db.wrapper().ops.adapt_datetimefield_value(day_start(now or timezone.now()))
    return [key.pk, UsageRollup.Span.DAY, day]


def tokens_used_today(*, key, now: datetime | None = None) -> int:
    """Prompt + completion tokens of `key` since 00:00 UTC: its daily rollup rows."""
    with connection.cursor() as cursor:
        cursor.execute(_TOKENS_TODAY, _tokens_params(key, now))
        return int(cursor.fetchone()[0])


async def atokens_used_today(*, key) -> int:
    if not db.pooled():
        return await db.in_thread(tokens_used_today)(key=key)
    return int((await db.fetchone(_TOKENS_TODAY, _tokens_params(key, None)))[0])


def minute_start(moment: datetime) -> datetime:
    """The clock minute a moment belongs to: the `tokens_per_minute` window."""
    return moment.replace(second=0, microsecond=0)


_TOKENS_THIS_MINUTE = (
    f"SELECT COALESCE(SUM(tokens), 0) FROM {TokenCounter._meta.db_table} "
    f"WHERE key_id = %s AND window_start = %s"
)


def _minute_params(key, now):
    return [key.pk, db.wrapper().ops.adapt_datetimefield_value(minute_start(now))]


def tokens_used_this_minute(*, key, now: datetime | None = None) -> int:
    """Prompt + completion tokens of `key` recorded in the current clock minute."""
    with connection.cursor() as cursor:
        cursor.execute(_TOKENS_THIS_MINUTE, _minute_params(key, now or timezone.now()))
        return int(cursor.fetchone()[0])


async def atokens_used_this_minute(*, key) -> int:
    if not db.pooled():
        return await db.in_thread(tokens_used_this_minute)(key=key)
    row = await db.fetchone(_TOKENS_THIS_MINUTE, _minute_params(key, timezone.now()))
    return int(row[0])


_AUTH_FAILURE_HIT = _counter_increment_sql(
    AuthFailureCounter._meta.db_table, ("client_addr", "window_start"), "failures"
)


def _failure_params(client_addr, now):
    window = db.wrapper().ops.adapt_datetimefield_value(now.replace(second=0, microsecond=0))
    return [client_addr, window]


def auth_failure_hit(*, client_addr: str, now: datetime | None = None) -> tuple[int, int]:
    """Count a failed authentication from `client_addr` in the current minute.

    Returns (failures so far this minute, seconds until the minute ends). Only failures pay
    for this: requests with a valid key never touch the table.
    """
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_AUTH_FAILURE_HIT, _failure_params(client_addr, now))
        failures = cursor.fetchone()[0]
    return failures, 60 - now.second


async def aauth_failure_hit(*, client_addr: str) -> tuple[int, int]:
    if not db.pooled():
        return await db.in_thread(auth_failure_hit)(client_addr=client_addr)
    now = timezone.now()
    row = await db.fetchone(_AUTH_FAILURE_HIT, _failure_params(client_addr, now))
    return row[0], 60 - now.second


def check_auth_failures(failures: int, reset: int) -> None:
    """Past AUTH_FAILURES_PER_MINUTE from one address, 429 instead of 401."""
    from django.conf import settings

    if failures > settings.AUTH_FAILURES_PER_MINUTE:
        raise RateLimited("Too many failed authentications; slow down.", wait=reset)


def _until_midnight(now: datetime) -> int:
    midnight = day_start(now + timedelta(days=1))
    return int((midnight - now).total_seconds()) + 1


class KeyRateThrottle(BaseThrottle):
    """The request limit (counted by the authentication, in the same statement as the key
    lookup), then the daily token quota (one read, only for keys with a quota).

    `allow_request` serves DRF's views; `aallow_request` the event loop's model routes.
    """

    def allow_request(self, request, view):
        key, admission = request.user, request.auth
        if key is None:
            return True
        if admission.rate_limit is None:
            admission.rate_limit = rate_limit_hit(key=key)
        self._check_rate(key, admission)
        if key.token_quota is not None:
            self._check_quota(key, tokens_used_today(key=key))
        if key.tokens_per_minute is not None:
            self._check_minute(key, tokens_used_this_minute(key=key))
        return True

    async def aallow_request(self, key, admission) -> None:
        self._check_rate(key, admission)
        await self.acheck_tokens(key)

    async def acheck_tokens(self, key) -> None:
        """The daily quota and the minute's tokens (one read each, for keys that have them);
        also when a request that waited in the GPU queue is about to run."""
        if key.token_quota is not None:
            self._check_quota(key, await atokens_used_today(key=key))
        if key.tokens_per_minute is not None:
            self._check_minute(key, await atokens_used_this_minute(key=key))

    @staticmethod
    def _check_rate(key, admission) -> None:
        state = admission.rate_limit
        if not state.allowed:
            logger.warning(
                "rate limit exceeded",
                extra={
                    "key_preview": key.preview,
                    "limit": state.limit,
                    "request_id": admission.request_id,
                },
            )
            raise RateLimited(wait=state.reset)

    @staticmethod
    def _check_quota(key, used: int) -> None:
        _check_tokens(key, used, "token_quota", "Token quota exceeded", _until_midnight)

    @staticmethod
    def _check_minute(key, used: int) -> None:
        _check_tokens(
            key, used, "tokens_per_minute", "Tokens per minute exceeded", lambda n: 60 - n.second
        )


def _check_tokens(key, used: int, field: str, message: str, wait) -> None:
    """429 once `used` tokens reach the key's limit `field`, with Retry-After `wait(now)`."""
    limit = getattr(key, field)
    if used >= limit:
        logger.warning(message.lower(), extra={"key_preview": key.preview, field: limit})
        raise RateLimited(message, wait=wait(timezone.now()))
