"""Bar charts drawn server side as SVG geometry: the dashboard needs no JavaScript and no
internet access. `bar_chart` computes shapes; the template `bar_chart.html` draws them."""

import math
from dataclasses import dataclass, field

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
                        "tip": f"{tips[i]} · {name}: {number(value)}{unit}",
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
    return number(round(scaled, 1 if abs(scaled) < (100 if suffix else 1000) else None)) + suffix


def number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"
