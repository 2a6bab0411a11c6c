"""Usage: what each request consumed, written once when it ends.

`usage_record` (blocking) and `ausage_record` (the event loop) write the raw record and add it
to its hourly and daily rollups: one statement on PostgreSQL. Limits are in usage/limits.py.
"""

import asyncio
import bisect
import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import DatabaseError, OperationalError, connection, transaction
from django.utils import timezone

from keys.crypto import redact_keys
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


# A key with `tokens_per_minute`: its tokens added to the minute's counter too (key, window,
# tokens). Counted when the request ends, so answers running meanwhile can overshoot the
# limit, as they can the daily quota.
_MINUTES = TokenCounter._meta.db_table
_MINUTE_ADD = (
    f"INSERT INTO {_MINUTES} AS counter (key_id, window_start, tokens) VALUES (%s, %s, %s) "
    "ON CONFLICT (key_id, window_start) DO UPDATE SET tokens = counter.tokens + excluded.tokens"
)


# --- PostgreSQL: any number of records in one statement --------------------------------------
#
# The records finished while the previous statement was in flight go together in the next one
# (`_RecordWriter`): with one request at a time each goes alone, at once; under load a worker
# writes several per round trip instead of one statement each. The values travel as one array
# per column, so the statement's text and its 29 parameters are the same for any number of
# records: psycopg caches its conversion and PostgreSQL runs it prepared after a few uses.

# What the rollups add up, one array element per request (keyless refusals included).
_COUNTED_COLUMNS = (
    ("key_pk", "bigint"),
    ("model", "text"),
    ("outcome", "text"),
    ("bucket", "int"),
    ("prompt_tokens", "bigint"),
    ("completion_tokens", "bigint"),
    ("latency_ms", "float8"),
    ("ttft_ms", "float8"),
    ("queue_wait_ms", "float8"),
    ("hour", "timestamptz"),
    ("day", "timestamptz"),
)
RECORD_BATCH_MAX = 200
RECORD_PENDING_MAX = 20_000


def _pg_rollup_upsert() -> str:
    """The hourly and the daily rollup rows of the `counted` requests, summed per row in SQL,
    in one fixed order (concurrent statements then lock shared rows in the same order and
    cannot deadlock). The same sums as `_rollup_params`, which SQLite and the checks use."""
    table = UsageRollup._meta.db_table
    indicator = "sum(({})::int)"
    sums = {
        "requests": "count(*)",
        "prompt_tokens": "sum(v.prompt_tokens)",
        "completion_tokens": "sum(v.completion_tokens)",
        "latency_ms_sum": "sum(v.latency_ms)",
        "ttft_ms_sum": "COALESCE(sum(v.ttft_ms), 0)",
        "ttft_count": "count(v.ttft_ms)",
        "queue_wait_ms_sum": "COALESCE(sum(v.queue_wait_ms), 0)",
        "queue_count": "count(v.queue_wait_ms)",
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
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
        f"ON CONFLICT ({', '.join(_ROLLUP_KEYS)}) DO UPDATE SET {updates}"
    )


def _pg_records_sql() -> str:
    counted = "SELECT * FROM unnest({}) AS v({})".format(
        ", ".join(f"%s::{kind}[]" for _, kind in _COUNTED_COLUMNS),
        ", ".join(name for name, _ in _COUNTED_COLUMNS),
    )
    connection_ = db.wrapper()
    record = "INSERT INTO {} ({}) SELECT * FROM unnest({})".format(
        UsageRecord._meta.db_table,
        ", ".join(f.column for f in _RECORD_FIELDS),
        ", ".join(f"%s::{f.db_type(connection_)}[]" for f in _RECORD_FIELDS),
    )
    # Keys with `tokens_per_minute`: their tokens added to the minute's counter too.
    minute = (
        f"INSERT INTO {_MINUTES} AS counter (key_id, window_start, tokens) "
        "SELECT k, w, sum(t) FROM unnest(%s::bigint[], %s::timestamptz[], %s::bigint[]) "
        "AS m(k, w, t) GROUP BY k, w ORDER BY k, w "
        "ON CONFLICT (key_id, window_start) DO UPDATE SET tokens = counter.tokens + excluded.tokens"
    )
    return (
        f"WITH counted AS ({counted}), record AS ({record}), minute AS ({minute}) "
        f"{_pg_rollup_upsert()}"
    )


_pg_records_statement = functools.cache(_pg_records_sql)


def _pg_counted_values(record: UsageRecord) -> list:
    return [
        record.key_id or 0,
        record.model,
        record.outcome,
        bisect.bisect_left(LATENCY_BUCKETS_MS, record.latency_ms),
        record.prompt_tokens or 0,
        record.completion_tokens or 0,
        float(record.latency_ms),  # floats only: psycopg refuses a list of ints and floats
        None if record.ttft_ms is None else float(record.ttft_ms),
        None if record.queue_wait_ms is None else float(record.queue_wait_ms),
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


def _pg_statement(records: list[UsageRecord]) -> tuple[str, list]:
    """The one PostgreSQL statement that writes `records`: each raw record (none for a request
    refused without a valid key), their rollup rows and their minute counters."""
    counted = [_pg_counted_values(r) for r in records]
    # A list per column; client addresses as text, so that IPv4 and IPv6 share one array.
    rows = [
        [
            str(v) if f.column == "client_addr" and v is not None else v
            for f, v in zip(_RECORD_FIELDS, _record_params(r), strict=True)
        ]
        for r in records
        if r.key_id is not None
    ]
    minutes = [m for m in map(_minute_params, records) if m]
    params = [list(column) for column in zip(*counted, strict=True)]
    params += [[row[i] for row in rows] for i in range(len(_RECORD_FIELDS))]
    params += [[m[i] for m in minutes] for i in range(3)]
    return _pg_records_statement(), params


def _minute_params(record: UsageRecord) -> list | None:
    """The minute counter's row for a key with `tokens_per_minute` that used tokens."""
    key = record.key
    tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
    if key is None or key.tokens_per_minute is None or not tokens:
        return None
    # The minute the request ended in (its record may be written a little later).
    ended = record.started_at + timedelta(milliseconds=record.latency_ms)
    window = ended.replace(second=0, microsecond=0)
    return [key.pk, db.wrapper().ops.adapt_datetimefield_value(window), tokens]


def _write(record: UsageRecord) -> None:
    if db.wrapper().vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(*_pg_statement([record]))
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


_INT_MAX = 2**31 - 1
_MAX_LENGTHS = {f.name: f.max_length for f in _RECORD_FIELDS if f.max_length}


def _text(value: str, field_name: str) -> str:
    """A string as its column takes it: cut to length, valid UTF-8, and without NUL (which
    PostgreSQL's text refuses), so that no client or upstream value can make a record fail."""
    limit = _MAX_LENGTHS[field_name]
    # Lone surrogates (JSON's "\\ud800") cannot be encoded for the database either.
    value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\x00", "\ufffd")[:limit]


def _count(value) -> int | None:
    """A token count as its column takes it; None for what is no count (from an upstream that
    sent a string, say)."""
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return min(max(value, 0), _INT_MAX)


def _record_of(exchange: Exchange) -> UsageRecord | None:
    """The record of a finished exchange; None if it was already taken (once per exchange)."""
    if exchange.recorded:
        return None
    exchange.recorded = True
    return UsageRecord(
        key=exchange.key,
        started_at=exchange.started_at,
        method=_text(exchange.method, "method"),
        route=_text(exchange.route, "route"),
        model=_text(redact_keys(exchange.model), "model"),  # a key sent as a model name
        backend=_text(exchange.backend, "backend"),
        status=exchange.status,
        outcome=exchange.outcome or outcome_for_status(exchange.status),
        latency_ms=(time.monotonic() - exchange.started) * 1000,
        ttft_ms=exchange.ttft_ms,
        prompt_tokens=_count(exchange.prompt_tokens),
        completion_tokens=_count(exchange.completion_tokens),
        queue_wait_ms=exchange.queue_wait_ms,
        request_id=_text(exchange.request_id, "request_id"),
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
    """`usage_record` from the event loop: on PostgreSQL the record joins this worker's next
    pooled statement (`_RecordWriter`); elsewhere Django's connection, in a thread."""
    if not db.pooled():
        await db.in_thread(usage_record)(exchange)
        return
    record = _record_of(exchange)
    if record is not None:
        await _writer().add(record, exchange)


class _RecordWriter:
    """Group commit for one worker's records: a record finished while no statement is in
    flight is written at once, alone; those finished meanwhile wait for it and go together in
    the next statement. Nothing waits on a timer, and under load a worker sends one statement
    per round trip, not one per request.

    A statement on a dead connection, or while the pool has none free, is retried for up to a
    minute (`db.fetchone(patient=True)`); after that the batch is reported lost (the database
    is down: trying its records one by one would only take 200 minutes more). One that fails
    on its data (a key deleted while its request ran, say) is retried a record at a time, so
    that one bad record loses no other. While the database is down, at most
    RECORD_PENDING_MAX records wait in memory; older ones are dropped, and said so.
    """

    def __init__(self):
        self.pending: deque[tuple[UsageRecord, Exchange]] = deque()
        self.writing = False

    async def add(self, record: UsageRecord, exchange: Exchange) -> None:
        self.pending.append((record, exchange))
        if len(self.pending) > RECORD_PENDING_MAX:
            dropped, _ = self.pending.popleft()
            logger.error(
                "usage record lost: %d records already wait for the database",
                RECORD_PENDING_MAX,
                extra={"request_id": dropped.request_id},
            )
        if self.writing:
            return  # the task writing now takes it next
        self.writing = True
        try:
            while self.pending:
                count = min(len(self.pending), RECORD_BATCH_MAX)
                await self._write([self.pending.popleft() for _ in range(count)])
        finally:
            self.writing = False

    async def _write(self, batch: list[tuple[UsageRecord, Exchange]]) -> None:
        try:
            await db.fetchone(*_pg_statement([r for r, _ in batch]), patient=True)
        except OperationalError:
            # Retried for a minute already: the database is unreachable, not the data wrong.
            for record, _ in batch:
                logger.error("usage record lost", extra={"request_id": record.request_id})
        except Exception:  # the data: a database error, or one psycopg could not even send
            if len(batch) > 1:
                for one in batch:
                    await self._write([one])
                return
            record = batch[0][0]
            logger.exception("usage record lost", extra={"request_id": record.request_id})
        for record, exchange in batch:
            _observe(record, exchange)


_writers: dict[asyncio.AbstractEventLoop, _RecordWriter] = {}


def _writer() -> _RecordWriter:
    loop = asyncio.get_running_loop()
    writer = _writers.get(loop)
    if writer is None:
        writer = _writers[loop] = _RecordWriter()
    return writer


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
