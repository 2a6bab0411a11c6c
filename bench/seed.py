"""Millions of realistic usage records, loaded fast, with the rollups the gateway would have made.

Records go in with COPY, in time order (as a live gateway appends them), spread over 30 days with
a daily cycle, 50 keys of skewed popularity, 5 models and a realistic mix of outcomes. Rollups
are then added by one `INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE`, which sums
exactly what `usage.services.usage_record` adds per request; `rollups_verify` proves it for an
hour against the gateway's own Python (`_rollup_params`).

Generating a row costs little because the parts that do not vary with time (key, route, model,
outcome, latency, tokens...) are drawn from a pool of pre-rendered profiles, each drawn from the
distributions below; only the timestamp and the request id are made per row.
"""

import math
import random
import time
from datetime import datetime, timedelta

import psycopg

# (model, weight, route choices): embeddings go to /api/embed, the others to the chat routes.
CHAT_ROUTES = (("/api/chat", 5), ("/api/generate", 2), ("/v1/chat/completions", 3))
MODELS = (
    ("llama3.2:latest", 40, CHAT_ROUTES),
    ("qwen2.5:0.5b", 25, CHAT_ROUTES),
    ("mistral:7b", 15, CHAT_ROUTES),
    ("gemma3:4b", 12, CHAT_ROUTES),
    ("nomic-embed-text:latest", 8, (("/api/embed", 1),)),
)
# (outcome, share, statuses): what a busy production gateway sees.
OUTCOMES = (
    ("ok", 0.935, (200,)),
    ("rate_limited", 0.025, (429,)),
    ("bad_request", 0.012, (400, 404)),
    ("upstream_error", 0.01, (500, 502)),
    ("client_closed", 0.008, (200,)),
    ("denied", 0.007, (403, 401)),
    ("timeout", 0.003, (504,)),
)
STREAMED_SHARE = 0.7  # chat answers that are streamed (and so have a time to first token)
POOL_SIZE = 250_000
# The columns generated here, in COPY order: the two made per row, then a profile's.
_GENERATED = (
    "started_at",
    "request_id",
    "key_id",
    "method",
    "route",
    "model",
    "status",
    "outcome",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "client_addr",
)
_NULL = r"\N"


def _weighted(rng: random.Random, choices: tuple) -> tuple:
    return rng.choices(choices, weights=[c[1] for c in choices])[0]


def _profile(rng: random.Random, key_ids: list[int], key_weights: list[float]) -> str:
    """Everything of a record but its time and request id, as COPY text columns."""
    key_id = rng.choices(key_ids, weights=key_weights)[0]
    model, _, routes = _weighted(rng, MODELS)
    route = _weighted(rng, routes)[0]
    outcome, _, statuses = _weighted(rng, OUTCOMES)
    status = rng.choice(statuses)
    embedding = route == "/api/embed"
    ttft = prompt = completion = None
    if outcome in ("ok", "client_closed"):
        latency = rng.lognormvariate(math.log(40 if embedding else 1500), 0.5 if embedding else 1.0)
        if not embedding and (outcome == "client_closed" or rng.random() < STREAMED_SHARE):
            ttft = min(latency, rng.lognormvariate(math.log(250), 0.8))
        if outcome == "ok" and not embedding:  # token counters come with the final chunk only
            prompt = max(1, int(rng.lognormvariate(math.log(200), 1.0)))
            completion = max(1, int(rng.lognormvariate(math.log(250), 0.9)))
    elif outcome == "timeout":
        latency = 600_000 + rng.random() * 50  # OLLAMA_READ_TIMEOUT
    elif outcome == "upstream_error":
        latency = rng.lognormvariate(math.log(60), 1.2)
    else:  # refused by the gateway itself
        latency = rng.lognormvariate(math.log(3), 0.5)
    if status == 401:  # failed authentication: no key
        key_id = None
    address = f"10.0.{(key_id or 0) // 250}.{(key_id or 0) % 250 + 1}"
    fields = (key_id, "POST", route, model, status, outcome, f"{latency:.3f}")
    fields += (None if ttft is None else f"{ttft:.3f}", prompt, completion, address)
    return "\t".join(_NULL if f is None else str(f) for f in fields)


def _hour_weights(hours: list[datetime]) -> list[float]:
    """A daily cycle (busy mid-afternoon UTC, quiet at night) and quieter weekends."""
    weights = []
    for hour in hours:
        daily = 1.0 + 0.6 * math.sin(2 * math.pi * (hour.hour - 9) / 24)
        weights.append(daily * (0.6 if hour.weekday() >= 5 else 1.0))
    return weights


def _counts(total: int, weights: list[float]) -> list[int]:
    """Split `total` by `weights` exactly (largest remainders)."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _other_columns() -> tuple[list[str], str]:
    """Columns of the record this loader does not know (added since), with their model default
    as COPY text: the load keeps working, and the rows stay what the model would write."""
    from usage.models import UsageRecord

    others = [
        f
        for f in UsageRecord._meta.concrete_fields
        if not f.primary_key and f.column not in _GENERATED
    ]
    values = [f.get_default() for f in others]
    return [f.column for f in others], "".join(
        "\t" + (_NULL if v is None else str(v)) for v in values
    )


def _mmss() -> list[str]:
    return [f"{minute:02d}:{second:02d}" for minute in range(60) for second in range(60)]


def records_copy(
    connection: psycopg.Connection,
    *,
    count: int,
    key_ids: list[int],
    end_hour: datetime,
    days: int = 30,
    seed: int = 0,
) -> None:
    """COPY `count` records spread over the `days` * 24 whole hours before `end_hour` (UTC).

    `key_ids[0]` is the busiest key: popularity falls off as 1 / rank^0.8. Needs Django set up.
    """
    other_columns, other_values = _other_columns()
    columns = ", ".join((*_GENERATED, *other_columns))
    rng = random.Random(seed)  # noqa: S311 (made-up data, reproducible by seed)
    key_weights = [1 / (rank + 1) ** 0.8 for rank in range(len(key_ids))]
    pool = [
        _profile(rng, key_ids, key_weights) + other_values for _ in range(min(POOL_SIZE, count))
    ]
    hours = [end_hour - timedelta(hours=h) for h in range(days * 24, 0, -1)]
    mmss, micro_hour = _mmss(), 3_600_000_000
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY usage_usagerecord ({columns}) FROM STDIN") as copy,
    ):
        for hour, n in zip(hours, _counts(count, _hour_weights(hours)), strict=True):
            prefix = hour.strftime("%Y-%m-%d %H:")
            offsets = sorted(rng.randrange(micro_hour) for _ in range(n))
            profiles = rng.choices(pool, k=n)
            bits = rng.getrandbits
            rows = (
                f"{prefix}{mmss[o // 1_000_000]}.{o % 1_000_000:06d}+00\t{bits(128):032x}\t{p}\n"
                for o, p in zip(offsets, profiles, strict=True)
            )
            copy.write("".join(rows).encode())


def rollups_add_sql() -> str:
    """Rollups of one span (`span`, `unit`: "h", "hour" or "d", "day") of the records with
    id > `after`, added to existing rows as the gateway's upsert does (it writes both spans).

    Per request the gateway adds: 1 request, its tokens (NULL as 0), its latency, its time to
    first token (NULL as 0, counted only when set), 1 to its outcome's counter and 1 to the
    latency bucket `bisect_left(LATENCY_BUCKETS_MS, latency_ms)` (upper bounds inclusive).
    Needs Django set up: the columns and buckets come from the gateway's models.
    """
    from usage.models import LATENCY_BUCKETS_MS, LATENCY_COLUMNS, OUTCOME_COLUMNS
    from usage.services import _ROLLUP_SUMS

    sums = {
        "requests": "count(*)",
        "prompt_tokens": "coalesce(sum(prompt_tokens), 0)",
        "completion_tokens": "coalesce(sum(completion_tokens), 0)",
        "latency_ms_sum": "sum(latency_ms)",
        "ttft_ms_sum": "coalesce(sum(ttft_ms), 0)",
        "ttft_count": "count(ttft_ms)",
        "queue_wait_ms_sum": "coalesce(sum(queue_wait_ms), 0)",
        "queue_count": "count(queue_wait_ms)",
    }
    for outcome, column in OUTCOME_COLUMNS.items():
        sums[column] = f"count(*) FILTER (WHERE outcome = '{outcome}')"
    lows, highs = (None, *LATENCY_BUCKETS_MS), (*LATENCY_BUCKETS_MS, None)
    for column, low, high in zip(LATENCY_COLUMNS, lows, highs, strict=True):
        bounds = [f"latency_ms > {low}"] if low is not None else []
        bounds += [f"latency_ms <= {high}"] if high is not None else []
        sums[column] = f"count(*) FILTER (WHERE {' AND '.join(bounds)})"
    changed = set(sums) ^ set(_ROLLUP_SUMS)
    if changed:
        raise RuntimeError(
            f"The gateway's rollup columns changed ({', '.join(sorted(changed))}): "
            "teach bench/seed.py how a request adds to them."
        )
    # Every name and literal here comes from the gateway's models; the watermark is bound.
    return (
        f"INSERT INTO usage_usagerollup (key_pk, model, span, start, {', '.join(sums)}) "  # noqa: S608
        f"SELECT coalesce(key_id, 0), model, %(span)s, date_trunc(%(unit)s, started_at), "
        f"{', '.join(sums.values())} FROM usage_usagerecord WHERE id > %(after)s "
        f"GROUP BY 1, 2, 4 "
        f"ON CONFLICT (key_pk, model, span, start) DO UPDATE SET "
        + ", ".join(f"{c} = usage_usagerollup.{c} + excluded.{c}" for c in sums)
    )


def rollups_verify(hour: datetime) -> dict:
    """Recompute one hour's rollups from its raw records with the gateway's own write path.

    `_rollup_params` is what `usage_record` adds per request: private on purpose, so that this
    check follows any change to it. Needs Django set up on the benchmark database.
    """
    from usage.models import UsageRecord, UsageRollup
    from usage.services import _ROLLUP_SUMS, _rollup_params

    expected: dict[tuple, list] = {}
    records = UsageRecord.objects.filter(
        started_at__gte=hour, started_at__lt=hour + timedelta(hours=1)
    )
    for record in records.iterator(chunk_size=5000):
        key_pk, model, _span, _start, *sums = _rollup_params(record)
        totals = expected.setdefault((key_pk, model), [0] * len(sums))
        for i, value in enumerate(sums):
            totals[i] += value
    stored = {
        (row["key_pk"], row["model"]): [row[c] for c in _ROLLUP_SUMS]
        for row in UsageRollup.objects.filter(span="h", start=hour).values(
            "key_pk", "model", *_ROLLUP_SUMS
        )
    }
    mismatches = [
        group
        for group in expected.keys() | stored.keys()
        if group not in expected
        or group not in stored
        or not all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
            for a, b in zip(expected[group], stored[group], strict=True)
        )
    ]
    return {
        "hour": hour.isoformat(),
        "records": sum(sums[0] for sums in expected.values()),
        "rollup_rows": len(stored),
        "mismatches": len(mismatches),
    }


def seed(
    url: str, *, count: int, key_ids: list[int], end_hour: datetime, rollup_sql: str, seed: int
) -> dict:
    """Add `count` records and their rollups; returns the seconds each step took."""
    timings = {}
    with psycopg.connect(url) as connection:
        # date_trunc must cut hours in UTC, as the gateway does; a bulk load needs no fsync
        # per statement; the GROUP BY of millions of rows wants memory for its hash table.
        connection.execute("SET TIME ZONE 'UTC'")
        connection.execute("SET synchronous_commit = off")
        connection.execute("SET work_mem = '256MB'")
        watermark = connection.execute(
            "SELECT coalesce(max(id), 0) FROM usage_usagerecord"
        ).fetchone()[0]
        started = time.monotonic()
        records_copy(connection, count=count, key_ids=key_ids, end_hour=end_hour, seed=seed)
        connection.commit()
        timings["copy_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        for span, unit in (("h", "hour"), ("d", "day")):
            connection.execute(rollup_sql, {"span": span, "unit": unit, "after": watermark})
        connection.commit()
        timings["rollups_s"] = round(time.monotonic() - started, 1)
    # Autovacuum may be off, and is slow to notice anyway: statistics need planner statistics.
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) usage_usagerollup")
        connection.execute("ANALYZE usage_usagerecord")
    timings["analyze_s"] = round(time.monotonic() - started, 1)
    return timings


def usage_truncate(url: str) -> None:
    """Start the statistics part from no usage at all (earlier parts left their records)."""
    with psycopg.connect(url) as connection:
        connection.execute("TRUNCATE usage_usagerecord, usage_usagerollup RESTART IDENTITY")


def rollup_rows(url: str) -> int:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT count(*) FROM usage_usagerollup").fetchone()[0]
