"""The usage dashboard in the admin: one period's statistics, charted as inline SVG.

Every number of the period comes from `usage_stats` (the rollups), never from the raw records,
so the page costs the same on a quiet day and on a table of tens of millions of requests; the
servers table reads the workers' shared Prometheus counters (`backend_rows`). The charts
are drawn server side (usage/charts.py), so that the page needs no JavaScript and no internet.
"""

from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.http import HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from keys.models import normalize_model
from proxy.backends import backend_pool, known_models
from usage import metrics
from usage.charts import WIDE, BarChart, bar_chart, number
from usage.export import usage_csv_response
from usage.models import OUTCOME_LABELS
from usage.queue import queue_snapshot
from usage.serializers import StatsQuerySerializer
from usage.stats import usage_stats

QUICK_PERIODS = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_PERIOD = "24h"
# Which outcomes the page counts as client errors (the caller's request was refused) and as
# server errors (Ollama failed or timed out: the same sum as the statistics' `errors`).
CLIENT_ERRORS = ("bad_request", "denied")
SERVER_ERRORS = ("upstream_error", "timeout")
# Outcomes grouped as the charts stack them.
OUTCOME_GROUPS = (
    ("ok", "#3f8f55", ("ok",)),
    ("client errors (4xx)", "#8e5bb5", CLIENT_ERRORS),
    ("server errors (5xx)", "#ba2121", SERVER_ERRORS),
    ("rate-limited", "#e39b1b", ("rate_limited",)),
    ("servers busy (queue timeout)", "#5b6abf", ("busy",)),
    ("client hung up", "#9aa0a6", ("client_closed",)),
)
# The row that gathers model names no server lists and no request succeeded with.
OTHER_MODELS = "other"
TOKEN_SERIES = (
    ("tokens in", "#417690", "prompt_tokens"),
    ("tokens out", "#79aec8", "completion_tokens"),
)
TOP_CATEGORIES = 10


# --- The period -------------------------------------------------------------------------------


def dashboard_period(params, *, now: datetime | None = None) -> dict:
    """Validated `from`/`to` (or `last=24h|7d|30d`) as start, end and granularity.

    The same rules as the statistics API (default: the last 24 hours; hourly bars up to 48
    hours, daily beyond), since it validates with the API's serializer. Returns the
    serializer's data, with `errors` set and the default period when the input was invalid.
    """
    now = now or timezone.now()
    last = params.get("last") or ("" if params.get("from") or params.get("to") else DEFAULT_PERIOD)
    if last and last not in QUICK_PERIODS:
        errors = {"last": [f"Choose one of: {', '.join(QUICK_PERIODS)}."]}
        return {**dashboard_period({}, now=now), "errors": errors}
    if last:
        data = {"from": now - QUICK_PERIODS[last][1], "to": now}
    else:
        data = {name: params[name] for name in ("from", "to") if params.get(name)}
    query = StatsQuerySerializer(data=data)
    if not query.is_valid():
        return {**dashboard_period({}, now=now), "errors": query.errors}
    return {**query.validated_data, "last": last, "errors": None}


# --- Views (wired by UsageRecordAdmin.get_urls) ------------------------------------------------


def dashboard_view(request, model_admin):
    period = dashboard_period(request.GET)
    stats = usage_stats(
        start=period["start"], end=period["end"], granularity=period["granularity"], per_key=True
    )
    stats["by_model"] = [_with_error_kinds(row) for row in collapse_models(stats["by_model"])]
    stats["by_key"] = [_with_error_kinds(row) for row in stats["by_key"]]
    # The CSV covers exactly the counted period: `usage_stats` starts on a whole hour.
    csv_query = urlencode({"from": stats["from"].isoformat(), "to": stats["to"].isoformat()})
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Usage dashboard",
        "period": period,
        "quick_periods": [(name, label) for name, (label, _) in QUICK_PERIODS.items()],
        "stats": stats,
        "cards": total_cards(stats["totals"]),
        "charts": dashboard_charts(stats) if stats["totals"]["requests"] else [],
        "csv_url": f"{reverse('admin:usage_usagerecord_dashboard_csv')}?{csv_query}",
        "timezone": timezone.get_current_timezone_name(),
        "outcomes": [
            (OUTCOME_LABELS.get(outcome, outcome), count)
            for outcome, count in stats["totals"]["outcomes"].items()
        ],
        "backends": backend_rows(),
        "queue_servers": queue_servers(),
        # Wait by key: the rollups' queue sums, like every other number of the page.
        "queue_waits": [row for row in stats.get("by_key", []) if row["queued"]],
    }
    return TemplateResponse(request, "admin/usage/usagerecord/dashboard.html", context)


def dashboard_csv_view(request, model_admin):
    """The raw records of the dashboard's period (the link carries its exact bounds)."""
    period = dashboard_period(request.GET)
    if period["errors"]:
        reasons = "; ".join(f"{name}: {' '.join(e)}" for name, e in period["errors"].items())
        return HttpResponseBadRequest(f"Invalid period. {reasons}", content_type="text/plain")
    return usage_csv_response(period["start"], period["end"])


# --- What the page shows -----------------------------------------------------------------------


def backend_rows() -> list[dict]:
    """The Ollama servers: counts summed over every worker of this gateway instance since it
    started (the workers' shared Prometheus files: a few file reads, no scan of the records,
    whose `backend` column has no index, and the rollups do not split by server); state and
    loaded models as the process drawing the page sees them."""
    totals = metrics.backend_totals()
    rows = []
    for state in backend_pool().states:
        counts = totals.get(state.name, {"requests": 0, "failures": 0, "in_flight": 0})
        requests = counts["requests"]
        rows.append(
            {
                **state.summary(),
                **counts,
                "error_rate": 100 * counts["failures"] / requests if requests else 0.0,
            }
        )
    return rows


def collapse_models(rows: list[dict]) -> list[dict]:
    """Model names that never worked (no success, no server error: typos, probes, names no
    server lists) gathered in one row, last: 20 misspellings do not make 20 rows."""
    catalog = known_models()
    kept, unknown = [], []
    for row in rows:
        outcomes = row["outcomes"]
        worked = outcomes["ok"] or any(outcomes[o] for o in SERVER_ERRORS)
        known = not row["model"] or worked or normalize_model(row["model"]) in catalog
        (kept if known else unknown).append(row)
    if unknown:
        kept.append(_merged(OTHER_MODELS, unknown))
    return kept


def _merged(model: str, rows: list[dict]) -> dict:
    """Rows summed; percentiles cannot be, so the merged row has none."""
    requests = sum(row["requests"] for row in rows)
    latency_sum = sum((row["latency_ms"]["avg"] or 0) * row["requests"] for row in rows)
    summed = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "errors")
    return {
        "model": model,
        **{column: sum(row[column] for row in rows) for column in summed},
        "rate_limited": sum(row["rate_limited"] for row in rows),
        "outcomes": {o: sum(row["outcomes"][o] for row in rows) for o in rows[0]["outcomes"]},
        "latency_ms": {
            "avg": round(latency_sum / requests, 1) if requests else None,
            "p50": None,
            "p95": None,
        },
        "ttft_ms_avg": None,
    }


def _with_error_kinds(row: dict) -> dict:
    outcomes = row["outcomes"]
    return {
        **row,
        "client_errors": sum(outcomes.get(o, 0) for o in CLIENT_ERRORS),
        "server_errors": sum(outcomes.get(o, 0) for o in SERVER_ERRORS),
    }


def queue_servers() -> list[dict]:
    """Each server's GPU queue now (usage/queue.py): slots, running, waiting; on PostgreSQL
    from the shared table, so every gateway process is counted."""
    live = {row["backend"]: row for row in queue_snapshot()}
    return [
        {
            "name": state.name,
            "parallel": state.parallel,
            "running": live.get(state.name, {}).get("running", 0),
            "waiting": live.get(state.name, {}).get("waiting", 0),
        }
        for state in backend_pool().states
    ]


def total_cards(totals: dict) -> list[list[tuple[str, str, str]]]:
    """The headline numbers as rows of (id, label, formatted value): counts, then latencies."""
    latency = totals["latency_ms"]
    outcomes = totals["outcomes"]
    return [
        [
            ("requests", "Requests", number(totals["requests"])),
            ("prompt-tokens", "Tokens in", number(totals["prompt_tokens"])),
            ("completion-tokens", "Tokens out", number(totals["completion_tokens"])),
            (
                "client-errors",
                "Client errors (4xx)",
                number(sum(outcomes[o] for o in CLIENT_ERRORS)),
            ),
            (
                "server-errors",
                "Server errors (5xx)",
                number(sum(outcomes[o] for o in SERVER_ERRORS)),
            ),
            ("rate-limited", "Rate-limited", number(totals["rate_limited"])),
            ("busy", "Servers busy", number(outcomes["busy"])),
        ],
        [
            ("latency-avg", "Latency avg", _ms(latency["avg"])),
            ("latency-p50", "Latency p50", _ms(latency["p50"])),
            ("latency-p95", "Latency p95", _ms(latency["p95"])),
            ("ttft-avg", "Time to 1st token", _ms(totals["ttft_ms_avg"])),
        ],
    ]


def dashboard_charts(stats: dict) -> list[BarChart]:
    models = stats["by_model"][:TOP_CATEGORIES]
    by_tokens = sorted(stats["by_model"], key=lambda row: -row["total_tokens"])[:TOP_CATEGORIES]
    keys = stats["by_key"][:TOP_CATEGORIES]
    times = _time_buckets(stats)
    by_time = {row["time"]: row for row in stats["series"]}
    rows = [by_time.get(moment, {}) for moment in times]
    hourly = stats["granularity"] == "hour"
    totals = stats["totals"]
    return [
        bar_chart(
            "Requests per hour" if hourly else "Requests per day",
            [f"{t:%H:%M}" if hourly and t.hour else f"{t:%b %d}" for t in times],
            _outcome_series(rows),
            tips=[f"{t:%b %d %H:%M}" if hourly else f"{t:%a %b %d}" for t in times],
            width=WIDE,
        ),
        bar_chart(
            "Tokens by model",
            [row["model"] or "(none)" for row in by_tokens],
            [
                (name, color, [row[column] for row in by_tokens])
                for name, color, column in TOKEN_SERIES
            ],
            horizontal=True,
            value_labels=True,
        ),
        bar_chart(
            "Latency percentiles (ms)",
            ["all models", *(row["model"] or "(none)" for row in models)],
            [
                (name, color, [row["latency_ms"][name] or 0 for row in (totals, *models)])
                for name, color in (("p95", "#f0b34a"), ("p50", "#417690"))
            ],
            horizontal=True,
            overlay=True,
            value_labels=True,
            unit=" ms",
        ),
        bar_chart(
            "Top keys by requests",
            [row["name"] or "(unauthenticated)" for row in keys],
            _outcome_series(keys),
            tips=[
                f"{row['name']} ({row['key']}…)" if row["key"] else "(unauthenticated)"
                for row in keys
            ],
            horizontal=True,
            value_labels=True,
        ),
    ]


def _outcome_series(rows: list[dict]) -> list[tuple[str, str, list[int]]]:
    return [
        (name, color, [sum(row.get("outcomes", {}).get(o, 0) for o in outcomes) for row in rows])
        for name, color, outcomes in OUTCOME_GROUPS
    ]


def _time_buckets(stats: dict) -> list[datetime]:
    """Every bucket of the period, empty ones included, in the current time zone (as `Trunc`)."""
    step = timedelta(hours=1) if stats["granularity"] == "hour" else timedelta(days=1)
    moment = timezone.localtime(stats["from"]).replace(minute=0, second=0, microsecond=0)
    if stats["granularity"] == "day":
        moment = moment.replace(hour=0)
    buckets = []
    while moment < stats["to"]:
        buckets.append(moment)
        moment += step
    return buckets


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{number(value)} ms"
