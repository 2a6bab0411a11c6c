"""Raw usage records as CSV: the admin API's export and the dashboard's download.

Cells are written for spreadsheets: a text cell that a spreadsheet would read as a formula
(starting with `=`, `+`, `-`, `@`, a tab or a carriage return; OWASP "CSV injection") is
prefixed with a single quote, so a model named `=cmd|' /C calc'!A0` stays text.
"""

import csv

from django.http import StreamingHttpResponse

from usage.models import UsageRecord

CSV_COLUMNS = [
    "started_at",
    "key__preview",
    "key__name",
    "method",
    "route",
    "model",
    "backend",
    "status",
    "outcome",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "request_id",
    "client_addr",
]


class _Echo:
    def write(self, value):
        return value


def usage_csv_response(start, end) -> StreamingHttpResponse:
    """Raw records of a period as CSV, streamed: memory stays flat for millions of rows."""
    rows = (
        UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
        .order_by("started_at")
        .values_list(*CSV_COLUMNS)
        .iterator(chunk_size=5000)
    )
    writer = csv.writer(_Echo())
    header = [c.replace("key__", "key_") for c in CSV_COLUMNS]
    lines = (writer.writerow([csv_cell(v) for v in row]) for row in _prepend(header, rows))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    name = f"usage-{start:%Y%m%d%H%M}-{end:%Y%m%d%H%M}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def _prepend(first, rest):
    yield first
    yield from rest


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """`value`, made inert for spreadsheets when it is text that starts like a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
