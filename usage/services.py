"""Usage: what each request consumed, written once when it ends.

`usage_record` (blocking) and `ausage_record` (the event loop) write the raw record and add it
to its hourly and daily rollups: one statement on PostgreSQL. Limits are in usage/limits.py.
"""

import bisect
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from ollama_gateway import db
from usage import metrics
from usage.models import (
    LATENCY_BUCKETS_MS,
    LATENCY_COLUMNS,
    OUTCOME_COLUMNS,
    ROLLUP_SUM_COLUMNS,
    AuthFailureCounter,
    RateCounter,
    TokenCounter,
    UsageRecord,
    UsageRollup,
    day_start,
    hour_start,
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
    # What authentication learned (keys.authentication.Admission): the key's rate-limit state.
    admission: object = None
    model: str = ""
    backend: str = ""
    status: int = 0
    outcome: str = ""
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Time spent waiting for a slot (usage/queue.py); None when no queue applied.
    queue_wait_ms: float | None = None
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


def _pg_rollup_upsert() -> str:
    """PostgreSQL: the hourly and the daily rollup row of one request, computed in SQL from
    one small row of values (`counted`), so that the statement has few parameters: psycopg
    caches the conversion of a statement of at most 50, and prepares it on the server after
    a few uses. The same sums as `_rollup_params`, which SQLite and the checks use."""
    table = UsageRollup._meta.db_table
    indicator = "({})::int"
    sums = {
        "requests": "1",
        "prompt_tokens": "v.prompt_tokens",
        "completion_tokens": "v.completion_tokens",
        "latency_ms_sum": "v.latency_ms",
        "ttft_ms_sum": "COALESCE(v.ttft_ms, 0)",
        "ttft_count": indicator.format("v.ttft_ms IS NOT NULL"),
        "queue_wait_ms_sum": "COALESCE(v.queue_wait_ms, 0)",
        "queue_count": indicator.format("v.queue_wait_ms IS NOT NULL"),
        **{
            column: indicator.format(f"v.outcome = '{outcome}'")
            for outcome, column in OUTCOME_COLUMNS.items()
        },
        **{column: indicator.format(f"v.bucket = {i}") for i, column in enumerate(LATENCY_COLUMNS)},
    }
    columns = ", ".join(_ROLLUP_KEYS + _ROLLUP_SUMS)
    values = ", ".join(sums[c] for c in _ROLLUP_SUMS)
    updates = ", ".join(f"{c} = r.{c} + excluded.{c}" for c in _ROLLUP_SUMS)
    return (
        f"INSERT INTO {table} AS r ({columns}) "
        f"SELECT v.key_pk, v.model, s.span, "
        f"CASE s.span WHEN '{UsageRollup.Span.HOUR}' THEN v.hour ELSE v.day END, {values} "
        f"FROM counted v CROSS JOIN (VALUES ('{UsageRollup.Span.HOUR}'), "
        f"('{UsageRollup.Span.DAY}')) AS s(span) "
        f"ON CONFLICT ({', '.join(_ROLLUP_KEYS)}) DO UPDATE SET {updates}"
    )


_PG_COUNTED = (
    "WITH counted AS (SELECT %s::bigint AS key_pk, %s::text AS model, %s::text AS outcome, "
    "%s::int AS bucket, %s::bigint AS prompt_tokens, %s::bigint AS completion_tokens, "
    "%s::float8 AS latency_ms, %s::float8 AS ttft_ms, %s::float8 AS queue_wait_ms, "
    "%s::timestamptz AS hour, %s::timestamptz AS day)"
)
# A key with `tokens_per_minute`: its tokens added to the minute's counter too (key, window,
# tokens). Counted when the request ends, so answers running meanwhile can overshoot the
# limit, as they can the daily quota.
_MINUTES = TokenCounter._meta.db_table
_MINUTE_ADD = (
    f"INSERT INTO {_MINUTES} AS counter (key_id, window_start, tokens) VALUES (%s, %s, %s) "
    "ON CONFLICT (key_id, window_start) DO UPDATE SET tokens = counter.tokens + excluded.tokens"
)
# PostgreSQL, one statement, one round trip, atomically: the record and its two rollup rows;
# or (a request refused without a key) the rollup rows alone.
_PG_RECORD_AND_ROLLUP = f"{_PG_COUNTED}, record AS ({_RECORD_INSERT}) {_pg_rollup_upsert()}"
_PG_ROLLUP_ONLY = f"{_PG_COUNTED} {_pg_rollup_upsert()}"
# ... and, for a key with `tokens_per_minute`, the minute's counter: still one round trip.
_PG_RECORD_ROLLUP_AND_MINUTE = (
    f"{_PG_COUNTED}, record AS ({_RECORD_INSERT}), minute AS ({_MINUTE_ADD}) {_pg_rollup_upsert()}"
)


def _pg_counted_params(record: UsageRecord) -> list:
    return [
        record.key_id or 0,
        record.model,
        record.outcome,
        bisect.bisect_left(LATENCY_BUCKETS_MS, record.latency_ms),
        record.prompt_tokens or 0,
        record.completion_tokens or 0,
        record.latency_ms,
        record.ttft_ms,
        record.queue_wait_ms,
        hour_start(record.started_at),
        day_start(record.started_at),
    ]


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
        "queue_wait_ms_sum": record.queue_wait_ms or 0.0,
        "queue_count": 1 if record.queue_wait_ms is not None else 0,
        **{column: int(outcome == record.outcome) for outcome, column in OUTCOME_COLUMNS.items()},
        **{column: int(i == bucket) for i, column in enumerate(LATENCY_COLUMNS)},
    }
    start = (day_start if span == UsageRollup.Span.DAY else hour_start)(record.started_at)
    start = db.wrapper().ops.adapt_datetimefield_value(start)
    return [record.key_id or 0, record.model, span, start, *(sums[c] for c in _ROLLUP_SUMS)]


def _record_params(record: UsageRecord) -> list:
    return [f.get_db_prep_save(f.value_from_object(record), db.wrapper()) for f in _RECORD_FIELDS]


def _pg_statement(record: UsageRecord) -> tuple[str, list]:
    """The one PostgreSQL statement that writes `record` (see usage_record)."""
    if record.key_id is None:
        return _PG_ROLLUP_ONLY, _pg_counted_params(record)
    counted = _pg_counted_params(record) + _record_params(record)
    minute_params = _minute_params(record)
    if minute_params:
        return _PG_RECORD_ROLLUP_AND_MINUTE, counted + minute_params
    return _PG_RECORD_AND_ROLLUP, counted


def _minute_params(record: UsageRecord) -> list | None:
    """The minute counter's row for a key with `tokens_per_minute` that used tokens."""
    key = record.key
    tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
    if key is None or key.tokens_per_minute is None or not tokens:
        return None
    window = timezone.now().replace(second=0, microsecond=0)
    return [key.pk, db.wrapper().ops.adapt_datetimefield_value(window), tokens]


def _write(record: UsageRecord) -> None:
    if db.wrapper().vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(*_pg_statement(record))
        return
    # SQLite: a short transaction; its hourly and daily rows in one statement.
    rollup_params = _rollup_params(record) + _rollup_params(record, UsageRollup.Span.DAY)
    minute_params = _minute_params(record)
    with transaction.atomic(), connection.cursor() as cursor:
        if record.key_id is not None:
            cursor.execute(_RECORD_INSERT, _record_params(record))
        # Refused without a valid key (a flood, a guesser): counted in the rollups only, so
        # such traffic costs a constant number of rows (see usage_record).
        cursor.execute(_ROLLUP_UPSERT, rollup_params)
        if minute_params:
            cursor.execute(_MINUTE_ADD, minute_params)


def _record_of(exchange: Exchange) -> UsageRecord | None:
    """The record of a finished exchange; None if it was already taken (once per exchange)."""
    if exchange.recorded:
        return None
    exchange.recorded = True
    return UsageRecord(
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
        queue_wait_ms=exchange.queue_wait_ms,
        request_id=exchange.request_id,
        client_addr=exchange.client_addr,
    )


def usage_record(exchange: Exchange) -> None:
    """Write the record of a finished request and add it to its rollups (once per exchange).

    One round trip on PostgreSQL (a CTE), one short transaction of two statements on SQLite.
    A request refused without a valid key adds to its hourly and daily rollup rows (key 0) but
    writes no raw record: a flood of them costs two rows an hour, not one per request, and
    still shows in the statistics and the dashboard (the failures per address and minute are
    counted by usage/limits.py). A database error is logged, never raised: the answer matters
    more than its bookkeeping.
    """
    record = _record_of(exchange)
    if record is None:
        return
    try:
        _write(record)
    except DatabaseError:
        # Never let bookkeeping break an answer (a stream would be cut off mid-way): say so.
        logger.exception("usage record lost", extra={"request_id": record.request_id})
    _observe(record, exchange)


async def ausage_record(exchange: Exchange) -> None:
    """`usage_record` from the event loop: one pooled statement on PostgreSQL (retried once
    on a fresh connection if its connection died), Django's connection in a thread elsewhere."""
    if not db.pooled():
        await db.in_thread(usage_record)(exchange)
        return
    record = _record_of(exchange)
    if record is None:
        return
    try:
        await db.fetchone(*_pg_statement(record), patient=True)
    except DatabaseError:
        logger.exception("usage record lost", extra={"request_id": record.request_id})
    _observe(record, exchange)


def _observe(record: UsageRecord, exchange: Exchange) -> None:
    """Metrics and the request's log line."""
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
    TokenCounter.objects.filter(window_start__lt=timezone.now() - timedelta(minutes=10)).delete()
    AuthFailureCounter.objects.filter(
        window_start__lt=timezone.now() - timedelta(minutes=10)
    ).delete()
    return deleted
