"""Statistics, answered from the hourly rollups: their cost follows the number of keys x models
x hours in the period, never the number of requests."""

from datetime import datetime

from django.db import connection
from django.db.models import Sum

from keys.models import ApiKey
from usage.models import (
    LATENCY_BUCKETS_MS,
    LATENCY_COLUMNS,
    OUTCOME_COLUMNS,
    ROLLUP_SUM_COLUMNS,
    UsageRollup,
)

_SUMMED = ROLLUP_SUM_COLUMNS
_SUMS = {column: Sum(column) for column in _SUMMED}


def percentile(histogram: list[int], q: float) -> float | None:
    """Estimate a latency percentile (ms) from bucket counts, interpolating inside the bucket."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    bounds = (0, *LATENCY_BUCKETS_MS, LATENCY_BUCKETS_MS[-1])
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low, high = bounds[i], bounds[i + 1]
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(LATENCY_BUCKETS_MS[-1])


def summarize(row: dict) -> dict:
    """One group's sums, in the shape the API, the admin and the CSV show."""
    row = {column: row.get(column) or 0 for column in _SUMMED}
    requests = row["requests"]
    outcomes = {outcome: row[column] for outcome, column in OUTCOME_COLUMNS.items()}
    histogram = [row[column] for column in LATENCY_COLUMNS]
    return {
        "requests": requests,
        "prompt_tokens": row["prompt_tokens"],
        "completion_tokens": row["completion_tokens"],
        "total_tokens": row["prompt_tokens"] + row["completion_tokens"],
        "errors": outcomes["upstream_error"] + outcomes["timeout"],
        "rate_limited": outcomes["rate_limited"],
        "outcomes": outcomes,
        "latency_ms": {
            "avg": round(row["latency_ms_sum"] / requests, 1) if requests else None,
            "p50": percentile(histogram, 0.50),
            "p95": percentile(histogram, 0.95),
        },
        "ttft_ms_avg": round(row["ttft_ms_sum"] / row["ttft_count"], 1)
        if row["ttft_count"]
        else None,
        "queued": row["queue_count"],
        "queue_wait_ms_avg": round(row["queue_wait_ms_sum"] / row["queue_count"], 1)
        if row["queue_count"]
        else None,
    }


def usage_stats(
    *,
    start: datetime,
    end: datetime,
    granularity: str = "hour",
    model: str | None = None,
    key: ApiKey | None = None,
    per_key: bool = False,
) -> dict:
    """Totals, by model, over time (hour or day buckets) and, for admins, by key.

    Hourly series read the hourly rollup rows, `start` rounded down to its hour; daily series
    read the daily rows (24 times fewer), `start` rounded down to its day (UTC). Two indexed
    aggregate queries, three with `per_key`: totals are the sum of the models' rows.
    """
    daily = granularity == "day"
    start = start.replace(minute=0, second=0, microsecond=0)
    if daily:
        start = start.replace(hour=0)
    span = UsageRollup.Span.DAY if daily else UsageRollup.Span.HOUR
    rows = UsageRollup.objects.filter(span=span, start__gte=start, start__lt=end)
    if key is not None:
        rows = rows.filter(key_pk=key.pk)
    if model:
        rows = rows.filter(model=model)
    groups = _grouped(rows, ("model", "start", "key_pk") if per_key else ("model", "start"))
    by_model = sorted(groups["model"], key=lambda row: (-row["requests"], row["model"]))
    result = {
        "from": start,
        "to": end,
        "granularity": granularity,
        "totals": summarize({c: sum(row[c] or 0 for row in by_model) for c in _SUMMED}),
        "by_model": [{"model": row["model"], **summarize(row)} for row in by_model],
        "series": [
            {"time": row["start"], **summarize(row)}
            for row in sorted(groups["start"], key=lambda row: row["start"])
        ],
    }
    if per_key:
        by_key = sorted(groups["key_pk"], key=lambda row: -row["requests"])[:100]
        keys = ApiKey.objects.in_bulk([r["key_pk"] for r in by_key if r["key_pk"]])
        result["by_key"] = [
            {
                # None: requests that failed authentication.
                "key": keys[row["key_pk"]].preview if row["key_pk"] in keys else None,
                "name": keys[row["key_pk"]].name if row["key_pk"] in keys else None,
                **summarize(row),
            }
            for row in by_key
        ]
    return result


def _grouped(rows, dimensions: tuple[str, ...]) -> dict[str, list[dict]]:
    """The rollup rows' sums grouped by each of `dimensions` in turn.

    PostgreSQL: one scan (GROUP BY GROUPING SETS), since reading the rows costs more than
    summing them. Elsewhere: one aggregate query per dimension.
    """
    if connection.vendor != "postgresql":
        return {dim: list(rows.values(dim).annotate(**_SUMS)) for dim in dimensions}
    where, params = rows.query.get_compiler(connection=connection).compile(rows.query.where)
    sums = ", ".join(
        f"SUM({c}) AS {c}" if c.endswith("_sum") else f"SUM({c})::bigint AS {c}" for c in _SUMMED
    )
    sql = (
        f"SELECT {', '.join(dimensions)}, {', '.join(f'GROUPING({d})' for d in dimensions)}, "
        f"{sums} FROM {UsageRollup._meta.db_table} WHERE {where} "
        f"GROUP BY GROUPING SETS ({', '.join(f'({d})' for d in dimensions)})"
    )
    groups: dict[str, list[dict]] = {dim: [] for dim in dimensions}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for values in cursor.fetchall():
            grouped_by = values[len(dimensions) : 2 * len(dimensions)]
            # GROUPING(d) is 0 on the rows grouped by d.
            dim = dimensions[grouped_by.index(0)]
            sums = dict(zip(_SUMMED, values[2 * len(dimensions) :], strict=True))
            groups[dim].append({dim: values[dimensions.index(dim)], **sums})
    return groups
