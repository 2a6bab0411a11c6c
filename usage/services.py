"""Usage: how much each key consumed, and the limits on it.

Write paths on every request (each one a single atomic SQL statement, so limits hold exactly
across threads and processes):
- `rate_limit_hit`: count a request against its key's hourly window, refusing past the limit;
- `usage_record`: write the raw record and add it to the hourly rollup, once per request;
- `auth_failure_hit`: count a failed authentication against the client's address.
"""

import bisect
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from keys.crypto import hash_key, looks_like_key
from keys.models import ApiKey
from keys.services import api_key_authenticate
from usage import metrics
from usage.models import (
    LATENCY_BUCKETS_MS,
    LATENCY_COLUMNS,
    OUTCOME_COLUMNS,
    ROLLUP_SUM_COLUMNS,
    AuthFailureCounter,
    RateCounter,
    UsageRecord,
    UsageRollup,
)

logger = logging.getLogger("usage")

Outcome = UsageRecord.Outcome


def outcome_for_status(status: int) -> str:
    if status < 400:
        return Outcome.OK
    if status in (401, 403):
        return Outcome.DENIED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status == 504:
        return Outcome.TIMEOUT
    if status < 500:
        return Outcome.BAD_REQUEST
    return Outcome.UPSTREAM_ERROR


@dataclass
class Exchange:
    """What one API request did, filled in as it goes and written once when it ends."""

    method: str
    route: str
    request_id: str
    client_addr: str | None
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=timezone.now)
    key: object = None
    model: str = ""
    backend: str = ""
    status: int = 0
    outcome: str = ""
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # A streamed answer is recorded by its relay when it ends, not when the view returns.
    deferred: bool = False
    recorded: bool = False


# --- Records and rollups ------------------------------------------------------------------------

_RECORD_FIELDS = [f for f in UsageRecord._meta.concrete_fields if not f.primary_key]
_RECORD_INSERT = "INSERT INTO {table} ({columns}) VALUES ({values})".format(
    table=UsageRecord._meta.db_table,
    columns=", ".join(f.column for f in _RECORD_FIELDS),
    values=", ".join(["%s"] * len(_RECORD_FIELDS)),
)
_ROLLUP_KEYS = ("key_pk", "model", "span", "start")
_ROLLUP_SUMS = ROLLUP_SUM_COLUMNS
_ROLLUP_UPSERT = (
    "INSERT INTO {table} ({columns}) VALUES ({row}), ({row}) "
    "ON CONFLICT ({keys}) DO UPDATE SET {sums}".format(
        table=UsageRollup._meta.db_table,
        columns=", ".join(_ROLLUP_KEYS + _ROLLUP_SUMS),
        row=", ".join(["%s"] * (len(_ROLLUP_KEYS) + len(_ROLLUP_SUMS))),
        keys=", ".join(_ROLLUP_KEYS),
        sums=", ".join(
            f"{c} = {UsageRollup._meta.db_table}.{c} + excluded.{c}" for c in _ROLLUP_SUMS
        ),
    )
)
# PostgreSQL: the record and its rollup in one statement, one round trip, atomically.
_RECORD_AND_ROLLUP = f"WITH record AS ({_RECORD_INSERT}) {_ROLLUP_UPSERT}"


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _rollup_params(record: UsageRecord, span: str = UsageRollup.Span.HOUR) -> list:
    """What one request adds to its rollup row of `span` (the row's key, then the sums)."""
    tokens_in, tokens_out = record.prompt_tokens or 0, record.completion_tokens or 0
    bucket = bisect.bisect_left(LATENCY_BUCKETS_MS, record.latency_ms)
    sums = {
        "requests": 1,
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "latency_ms_sum": record.latency_ms,
        "ttft_ms_sum": record.ttft_ms or 0.0,
        "ttft_count": 1 if record.ttft_ms is not None else 0,
        **{column: int(outcome == record.outcome) for outcome, column in OUTCOME_COLUMNS.items()},
        **{column: int(i == bucket) for i, column in enumerate(LATENCY_COLUMNS)},
    }
    start = (_day if span == UsageRollup.Span.DAY else _hour)(record.started_at)
    start = connection.ops.adapt_datetimefield_value(start)
    return [record.key_id or 0, record.model, span, start, *(sums[c] for c in _ROLLUP_SUMS)]


def _write(record: UsageRecord) -> None:
    record_params = [
        f.get_db_prep_save(f.value_from_object(record), connection) for f in _RECORD_FIELDS
    ]
    # Its hourly and its daily row, in the same statement.
    rollup_params = _rollup_params(record) + _rollup_params(record, UsageRollup.Span.DAY)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_RECORD_AND_ROLLUP, record_params + rollup_params)
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_RECORD_INSERT, record_params)
            cursor.execute(_ROLLUP_UPSERT, rollup_params)


def usage_record(exchange: Exchange) -> None:
    """Write the record of a finished request and add it to its rollup (once per exchange).

    One round trip on PostgreSQL (a CTE), one short transaction of two statements on SQLite.
    A database error is logged, never raised: the answer matters more than its bookkeeping.
    """
    if exchange.recorded:
        return
    exchange.recorded = True
    record = UsageRecord(
        key=exchange.key,
        started_at=exchange.started_at,
        method=exchange.method,
        route=exchange.route,
        model=exchange.model[:200],
        backend=exchange.backend,
        status=exchange.status,
        outcome=exchange.outcome or outcome_for_status(exchange.status),
        latency_ms=(time.monotonic() - exchange.started) * 1000,
        ttft_ms=exchange.ttft_ms,
        prompt_tokens=exchange.prompt_tokens,
        completion_tokens=exchange.completion_tokens,
        request_id=exchange.request_id,
        client_addr=exchange.client_addr,
    )
    try:
        _write(record)
    except DatabaseError:
        # Never let bookkeeping break an answer (a stream would be cut off mid-way): say so.
        logger.exception("usage record lost", extra={"request_id": record.request_id})
    metrics.observe(record)
    logger.info(
        "%s %s %s %s %.1fms",
        record.method,
        record.route,
        record.status,
        record.outcome,
        record.latency_ms,
        extra={
            "request_id": record.request_id,
            "key_preview": getattr(exchange.key, "preview", None),
            "model": record.model,
            "client_addr": record.client_addr,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
        },
    )


# --- Limits -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RateLimitState:
    limit: int
    remaining: int
    reset: int  # seconds until the window ends
    allowed: bool


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


def _rate_state(key, counted: int | None, now: datetime) -> RateLimitState:
    """The window's state after an attempt; `counted` is None when the limit was reached."""
    reset = int((_hour(now) + timedelta(hours=1) - now).total_seconds()) + 1
    if counted is None:
        return RateLimitState(key.rate_limit, 0, reset, allowed=False)
    return RateLimitState(key.rate_limit, max(key.rate_limit - counted, 0), reset, allowed=True)


def rate_limit_hit(*, key, now: datetime | None = None) -> RateLimitState:
    """Count one request in its key's current hour, unless the limit is reached.

    A single upsert: the row is only incremented while under the limit, and the database
    serializes concurrent increments of one row, so exactly `rate_limit` requests get through
    per hour whatever the number of threads and processes.
    """
    now = now or timezone.now()
    window = connection.ops.adapt_datetimefield_value(_hour(now))
    with connection.cursor() as cursor:
        cursor.execute(_RATE_HIT, [key.pk, window, key.rate_limit])
        row = cursor.fetchone()
    return _rate_state(key, row[0] if row else None, now)


_KEY_TABLE = ApiKey._meta.db_table
_KEY_COLUMNS = ", ".join(f.column for f in ApiKey._meta.concrete_fields)
# PostgreSQL: the key lookup and the count of the request against its window in one statement
# (one round trip). The request is counted only for a usable key under its limit; `counted`
# is NULL otherwise.
_AUTHENTICATE_AND_COUNT = f"""
WITH key AS (SELECT {_KEY_COLUMNS} FROM {_KEY_TABLE} WHERE key_hash = %s),
hit AS (
    INSERT INTO {RateCounter._meta.db_table} AS counter (key_id, window_start, requests)
    SELECT id, %s, 1 FROM key WHERE is_active AND (expires_at IS NULL OR expires_at > %s)
    ON CONFLICT (key_id, window_start) DO UPDATE SET requests = counter.requests + 1
    WHERE counter.requests < (SELECT rate_limit FROM key)
    RETURNING requests
)
SELECT {_KEY_COLUMNS}, (SELECT requests FROM hit) AS counted FROM key
"""


def api_key_authenticate_and_count(raw_key: str) -> tuple[ApiKey | None, RateLimitState | None]:
    """The key a raw value belongs to (whatever its state; None if unknown) and, for a usable
    key, the request counted against its hourly limit (`allowed` False past the limit).

    PostgreSQL: one statement. SQLite: the lookup, then `rate_limit_hit`.
    """
    now = timezone.now()
    if connection.vendor != "postgresql":
        key = api_key_authenticate(raw_key)
        if key is None or not key.is_active or key.is_expired(now):
            return key, None
        return key, rate_limit_hit(key=key, now=now)
    if not looks_like_key(raw_key):
        return None, None
    params = [hash_key(raw_key), _hour(now), now]
    found = list(ApiKey.objects.raw(_AUTHENTICATE_AND_COUNT, params))
    if not found:
        return None, None
    key = found[0]
    if not key.is_active or key.is_expired(now):
        return key, None
    return key, _rate_state(key, key.counted, now)


def tokens_used_today(*, key, now: datetime | None = None) -> int:
    """Prompt + completion tokens of `key` since 00:00 UTC: its daily rollup rows."""
    day = _day(now or timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) "
            f"FROM {UsageRollup._meta.db_table} WHERE key_pk = %s AND span = %s AND start = %s",
            [key.pk, UsageRollup.Span.DAY, connection.ops.adapt_datetimefield_value(day)],
        )
        return int(cursor.fetchone()[0])


_AUTH_FAILURE_HIT = _counter_increment_sql(
    AuthFailureCounter._meta.db_table, ("client_addr", "window_start"), "failures"
)


def auth_failure_hit(*, client_addr: str, now: datetime | None = None) -> tuple[int, int]:
    """Count a failed authentication from `client_addr` in the current minute.

    Returns (failures so far this minute, seconds until the minute ends). Only failures pay
    for this: requests with a valid key never touch the table.
    """
    now = now or timezone.now()
    window = now.replace(second=0, microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute(
            _AUTH_FAILURE_HIT, [client_addr, connection.ops.adapt_datetimefield_value(window)]
        )
        failures = cursor.fetchone()[0]
    return failures, 60 - now.second


# --- Retention ----------------------------------------------------------------------------------


def usage_prune(*, older_than: timedelta, batch_size: int = 10_000, pause: float = 0.0) -> int:
    """Delete raw records older than `older_than` in short batches (no long table lock).

    Rollups are kept: statistics for old periods stay available. Expired limit counters go too.
    Returns the number of records deleted.
    """
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        ids = list(
            UsageRecord.objects.filter(started_at__lt=cutoff)
            .order_by()
            .values_list("pk", flat=True)[:batch_size]
        )
        if not ids:
            break
        deleted += UsageRecord.objects.filter(pk__in=ids).delete()[0]
        if pause:
            time.sleep(pause)
    RateCounter.objects.filter(window_start__lt=timezone.now() - timedelta(hours=2)).delete()
    AuthFailureCounter.objects.filter(
        window_start__lt=timezone.now() - timedelta(minutes=10)
    ).delete()
    return deleted
