"""Raw usage records as CSV: the admin API's export and the dashboard's download.

Cells are written for spreadsheets: a text cell that a spreadsheet would read as a formula
(starting with `=`, `+`, `-`, `@`, a tab or a carriage return; OWASP "CSV injection") is
prefixed with a single quote, so a model named `=cmd|' /C calc'!A0` stays text.
"""

import csv

from asgiref.sync import sync_to_async
from django.db.models import Q
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


BATCH = 5000


def _batch(start, end, after) -> list[tuple]:
    """The next BATCH records of the period after `after` ((started_at, id) of the last one)."""
    records = UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
    if after is not None:
        moment, pk = after
        records = records.filter(Q(started_at__gt=moment) | Q(started_at=moment, pk__gt=pk))
    return list(
        records.order_by("started_at", "pk").values_list("started_at", "pk", *CSV_COLUMNS)[:BATCH]
    )


async def _csv_lines(start, end):
    """The CSV's lines, a batch of records at a time, each batch read in the request's thread:
    under the ASGI server a synchronous iterator would be read whole before the first byte."""
    writer = csv.writer(_Echo())
    yield writer.writerow([c.replace("key__", "key_") for c in CSV_COLUMNS])
    after = None
    while rows := await sync_to_async(_batch, thread_sensitive=True)(start, end, after):
        yield "".join(writer.writerow([csv_cell(v) for v in row[2:]]) for row in rows)
        after = rows[-1][:2]
        if len(rows) < BATCH:
            break


def usage_csv_response(start, end) -> StreamingHttpResponse:
    """Raw records of a period as CSV, streamed: memory stays flat for millions of rows."""
    response = StreamingHttpResponse(_csv_lines(start, end), content_type="text/csv; charset=utf-8")
    name = f"usage-{start:%Y%m%d%H%M}-{end:%Y%m%d%H%M}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """`value`, made inert for spreadsheets when it is text that starts like a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
