"""The usage dashboard in the admin: one period's statistics, charted as inline SVG.

Every number comes from `usage_stats` (the hourly rollups), never from the raw records, so the
page costs the same on a quiet day and on a table of tens of millions of requests. The charts
are drawn here, server side, so that the page needs no JavaScript and no internet access.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django.http import HttpResponseBadRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from proxy.backends import backend_pool
from usage.queue import queue_snapshot
from usage.serializers import StatsQuerySerializer
from usage.stats import usage_stats
from usage.views import usage_csv_response

QUICK_PERIODS = {
    "24h": ("Last 24 hours", timedelta(hours=24)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
DEFAULT_PERIOD = "24h"
# Outcomes grouped as the charts stack them; "errors" is the same sum as `summarize` reports.
OUTCOME_GROUPS = (
    ("ok", "#3f8f55", ("ok",)),
    ("errors", "#ba2121", ("upstream_error", "timeout")),
    ("rate-limited", "#e39b1b", ("rate_limited",)),
    ("other", "#9aa0a6", ("denied", "bad_request", "client_closed")),
)
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
        # As this process sees them: health and in-flight counts are per gateway process.
        "backends": [state.summary() for state in backend_pool().states],
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
    return [
        [
            ("requests", "Requests", _number(totals["requests"])),
            ("prompt-tokens", "Tokens in", _number(totals["prompt_tokens"])),
            ("completion-tokens", "Tokens out", _number(totals["completion_tokens"])),
            ("errors", "Errors", _number(totals["errors"])),
            ("rate-limited", "Rate-limited", _number(totals["rate_limited"])),
        ],
        [
            ("latency-avg", "Latency avg", _ms(latency["avg"])),
            ("latency-p50", "Latency p50", _ms(latency["p50"])),
            ("latency-p95", "Latency p95", _ms(latency["p95"])),
            ("ttft-avg", "Time to 1st token", _ms(totals["ttft_ms_avg"])),
        ],
    ]


def dashboard_charts(stats: dict) -> list["BarChart"]:
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


# --- The one chart: bars, vertical or horizontal, stacked or overlapping --------------------------

WIDTH = 460  # one of two columns of the admin's content (1280px screen, sidebar open): scale ~1
WIDE = 2 * WIDTH + 20  # across both columns
TOP, RIGHT, BOTTOM = 12, 12, 22
AXIS_WIDTH = 44  # tick labels, left of vertical bars
LABEL_WIDTH = 136  # names, left of horizontal bars
ROW = 24  # height of a horizontal bar's slot
CHAR_WIDTH = 6.2  # of an 11px sans-serif character: labels are truncated to their room
# Offset (dx, dy) and anchor of each kind of text from its point, by orientation.
TEXT_PLACES = {
    (False, "tick"): (-6, 4, "end"),
    (False, "label"): (0, 16, "middle"),
    (False, "value"): (0, -4, "middle"),
    (True, "tick"): (0, 16, "middle"),
    (True, "label"): (-6, 4, "end"),
    (True, "value"): (4, 4, "start"),
}


@dataclass
class BarChart:
    """Shapes in SVG user units, for the template to draw."""

    title: str
    width: int
    height: float
    legend: list[tuple[str, str]]
    rects: list[dict] = field(default_factory=list)  # x, y, width, height, color, tip
    lines: list[dict] = field(default_factory=list)  # x1, y1, x2, y2
    texts: list[dict] = field(default_factory=list)  # x, y, anchor, kind, text, tip

    def text(self, horizontal: bool, kind: str, point: tuple, text: str, tip: str = ""):
        dx, dy, anchor = TEXT_PLACES[horizontal, kind]
        place = _rounded(x=point[0] + dx, y=point[1] + dy)
        self.texts.append({**place, "anchor": anchor, "kind": kind, "text": text, "tip": tip})


def bar_chart(
    title: str,
    labels: list[str],
    series: list[tuple[str, str, list[float]]],
    *,
    horizontal: bool = False,
    overlay: bool = False,
    value_labels: bool = False,
    tips: list[str] | None = None,
    unit: str = "",
    width: int = WIDTH,
    height: int = 180,
) -> BarChart:
    """A bar per label: vertical (time along x) or horizontal (one name per row).

    Each series (name, color, values) adds a segment to every bar. Segments stack, or with
    `overlay` all start from zero, drawn in the order given (largest first). `height` is
    that of vertical charts; horizontal ones grow with their rows. Geometry only.
    """
    tips = tips or labels
    per_bar = [[values[i] or 0 for *_, values in series] for i in range(len(labels))]
    tops = [max(values) if overlay else sum(values) for values in per_bar]
    ticks = _ticks(max(tops, default=0))
    if horizontal:
        start, band = LABEL_WIDTH, ROW
        height = TOP + ROW * len(labels) + BOTTOM
        length = width - LABEL_WIDTH - RIGHT - 36  # room left for the value labels
    else:
        start, band = AXIS_WIDTH, (width - AXIS_WIDTH - RIGHT) / max(len(labels), 1)
        length = height - TOP - BOTTOM
    scale = length / ticks[-1]
    span = band * len(labels)  # the category axis' length

    def point(along: float, value: float) -> tuple[float, float]:
        """Where a position along the category axis meets a value."""
        if horizontal:
            return start + value * scale, TOP + along
        return start + along, TOP + length - value * scale

    chart = BarChart(title, width, height, [(name, color) for name, color, _ in series])
    for tick in ticks:
        (x1, y1), (x2, y2) = point(0, tick), point(span, tick)
        chart.lines.append(_rounded(x1=x1, y1=y1, x2=x2, y2=y2))
        chart.text(horizontal, "tick", (x1, y2) if horizontal else (x1, y1), _compact(tick))
    thickness = min(band * 0.72, 40)
    every = 1 if horizontal else math.ceil(64 / band)  # one label per 64 units at most
    room = LABEL_WIDTH - 10 if horizontal else band * every
    for i, (label, values, top) in enumerate(zip(labels, per_bar, tops, strict=True)):
        along = band * i + (band - thickness) / 2
        low = 0
        for (name, color, _), value in zip(series, values, strict=True):
            if value:
                (x1, y1), (x2, y2) = point(along, low), point(along + thickness, low + value)
                box = _rounded(
                    x=min(x1, x2), y=min(y1, y2), width=abs(x2 - x1), height=abs(y2 - y1)
                )
                chart.rects.append(
                    {
                        **box,
                        "color": color,
                        "tip": f"{tips[i]} · {name}: {_number(value)}{unit}",
                    }
                )
                low = low if overlay else low + value
        if i % every == 0:
            chart.text(horizontal, "label", point(band * (i + 0.5), 0), _fit(label, room), tips[i])
        if value_labels and top:
            chart.text(horizontal, "value", point(band * (i + 0.5), top), _compact(top))
    return chart


def _rounded(**coordinates: float) -> dict[str, float]:
    return {name: round(value, 1) for name, value in coordinates.items()}


def _fit(label: str, room: float) -> str:
    chars = max(int(room / CHAR_WIDTH), 4)
    return label if len(label) <= chars else label[: chars - 1] + "…"


def _ticks(highest: float, count: int = 4) -> list[float]:
    """Round gridline values from 0 to at least `highest`, steps of 1, 2 or 5 x 10^n (>= 1)."""
    if highest <= 0:
        return [0, 1]
    raw = highest / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = max(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw), 1)
    return [i * step for i in range(math.ceil(highest / step) + 1)]


def _compact(value: float) -> str:
    """Short numbers for axes and bar ends: 0.5, 242.5, 1,714, 12.3k, 150k, 4.5M."""
    scales = ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k"))
    size, suffix = next(((s, x) for least, s, x in scales if abs(value) >= least), (1, ""))
    scaled = value / size
    return _number(round(scaled, 1 if abs(scaled) < (100 if suffix else 1000) else None)) + suffix


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{_number(value)} ms"
