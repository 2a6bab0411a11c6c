"""The CSV export (API and dashboard download): what a spreadsheet opening it would run."""

import csv
import io

import pytest

from testsupport import content_of

FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("model", FORMULAS)
def test_cells_that_start_like_a_formula_are_made_text(
    model, record_usage, admin_key, client_for, staff_client
):
    record_usage(model=model, request_id="req-formula")
    record_usage(model="llama3.2", request_id="req-plain")
    for url in ("/api/admin/usage.csv", "/admin/usage/usagerecord/dashboard/csv/?last=24h"):
        client = client_for(admin_key[1]) if url.startswith("/api") else staff_client
        response = client.get(url)
        assert response.status_code == 200
        rows = list(csv.DictReader(io.StringIO(content_of(response).decode())))
        by_id = {row["request_id"]: row for row in rows}
        assert by_id["req-formula"]["model"] == "'" + model
        assert by_id["req-plain"]["model"] == "llama3.2"
        assert by_id["req-plain"]["status"] == "200"


def test_the_export_reads_the_period_in_batches_in_order(
    record_usage, admin_key, client_for, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from usage import export

    monkeypatch.setattr(export, "BATCH", 2)
    moment = timezone.now() - timedelta(minutes=7)
    for n in range(7):  # three share a start time: the batches page on (started_at, id)
        record_usage(request_id=f"req-{n}", started_at=moment + timedelta(minutes=max(n - 2, 0)))
    response = client_for(admin_key[1]).get("/api/admin/usage.csv")
    rows = list(csv.DictReader(io.StringIO(content_of(response).decode())))
    assert [row["request_id"] for row in rows] == [f"req-{n}" for n in range(7)]
