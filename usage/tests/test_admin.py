"""Usage records in the admin: listed, filtered and searched, read-only, and cheap to count."""

import html
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from usage.admin import CheapCountPaginator
from usage.models import UsageRecord

CHANGELIST = "/admin/usage/usagerecord/"


@pytest.fixture
def records(record_usage, make_key):
    """Five requests of two keys on two models, one refused (403), one two days old. (Requests
    refused without a valid key have no raw record: see usage/services.py.)"""
    alice, _ = make_key(name="alice")
    bob, _ = make_key(name="bob")
    record_usage(key=alice, request_id="req-ok-1", prompt_tokens=10, completion_tokens=5)
    record_usage(key=alice, request_id="req-error", model="qwen2.5", status=500)
    record_usage(key=bob, request_id="req-limited", status=429)
    record_usage(key=bob, request_id="req-denied", model="", route="/api/pull", status=403)
    record_usage(key=bob, request_id="req-old", ago=timedelta(days=2))
    return {"alice": alice, "bob": bob}


def listed_request_ids(response) -> set[str]:
    assert response.status_code == 200
    return set(re.findall(r">(req-[a-z0-9-]+)<", response.content.decode()))


def test_changelist_lists_records(staff_client, records):
    response = staff_client.get(CHANGELIST)
    page = response.content.decode()
    assert listed_request_ids(response) == {
        "req-ok-1",
        "req-error",
        "req-limited",
        "req-denied",
        "req-old",
    }
    assert "alice (" in page and "upstream_error" in page and "/api/pull" in page
    assert 'href="/admin/usage/usagerecord/dashboard/"' in page


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("outcome=upstream_error", {"req-error"}),
        ("outcome=rate_limited", {"req-limited"}),
        ("model=qwen2.5", {"req-error"}),
        ("model=", {"req-denied"}),
        ("started_at=Today", {"req-ok-1", "req-error", "req-limited", "req-denied"}),
        (
            "started_at=Past 7 days",
            {"req-ok-1", "req-error", "req-limited", "req-denied", "req-old"},
        ),
        ("q=req-limited", {"req-limited"}),
        # An exact lookup, not a substring scan.
        ("q=req-", set()),
    ],
)
def test_filters_and_search(staff_client, records, query, expected):
    if query.startswith("started_at="):
        # The date filter's own link, as a user would click it.
        page = staff_client.get(CHANGELIST).content.decode()
        label = query.removeprefix("started_at=")
        query = html.unescape(re.search(rf'href="\?([^"]+)"[^>]*>{label}<', page).group(1))
    assert listed_request_ids(staff_client.get(f"{CHANGELIST}?{query}")) == expected


def test_key_filter_lists_keys(staff_client, records):
    page = staff_client.get(CHANGELIST).content.decode()
    assert f"?key__id__exact={records['bob'].pk}" in page
    response = staff_client.get(f"{CHANGELIST}?key__id__exact={records['bob'].pk}")
    assert listed_request_ids(response) == {"req-limited", "req-denied", "req-old"}


def test_model_filter_choices_come_from_the_rollups(staff_client, records):
    page = staff_client.get(CHANGELIST).content.decode()
    assert "?model=qwen2.5" in page and "?model=llama3.2" in page and "(none)" in page


def test_listing_never_scans_the_whole_table(staff_client, records):
    """No SELECT DISTINCT over the records (filters), no unbounded COUNT(*) on PostgreSQL."""
    for url in (CHANGELIST, f"{CHANGELIST}?outcome=ok"):
        with CaptureQueriesContext(connection) as queries:
            assert staff_client.get(url).status_code == 200
        on_records = [q["sql"] for q in queries if "usage_usagerecord" in q["sql"]]
        assert on_records
        assert not [sql for sql in on_records if "DISTINCT" in sql.upper()]
        if connection.vendor == "postgresql":
            counts = [sql for sql in on_records if "COUNT(" in sql.upper()]
            assert all("LIMIT" in sql.upper() for sql in counts), counts


def test_count_is_exact_on_sqlite(staff_client, records, monkeypatch):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite counts")
    monkeypatch.setattr(CheapCountPaginator, "limit", 3)
    assert "5 usage records" in staff_client.get(CHANGELIST).content.decode()


def test_count_is_estimated_or_capped_on_postgresql(staff_client, records, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL estimates")
    monkeypatch.setattr(CheapCountPaginator, "limit", 3)
    page = staff_client.get(f"{CHANGELIST}?key__isnull=False").content.decode()
    assert "at least 3 usage records" in page
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {UsageRecord._meta.db_table}")
    assert "about 5 usage records" in staff_client.get(CHANGELIST).content.decode()
    # Under the limit, counted exactly.
    page = staff_client.get(f"{CHANGELIST}?outcome=rate_limited").content.decode()
    assert re.search(r"\s1 usage record\s", page)


def test_records_are_read_only(staff_client, records):
    record = UsageRecord.objects.get(request_id="req-ok-1")
    page = staff_client.get(CHANGELIST).content.decode()
    assert f'href="{CHANGELIST}add/"' not in page and 'name="_selected_action"' not in page
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403
    view = staff_client.get(f"{CHANGELIST}{record.pk}/change/")
    assert view.status_code == 200 and 'name="_save"' not in view.content.decode()
    staff_client.post(f"{CHANGELIST}{record.pk}/change/", {"status": 201})
    assert staff_client.post(f"{CHANGELIST}{record.pk}/delete/", {"post": "yes"}).status_code == 403
    record.refresh_from_db()
    assert record.status == 200


@pytest.mark.parametrize("path", ["", "dashboard/", "dashboard/csv/"])
@pytest.mark.parametrize("who", ["anonymous", "not staff"])
def test_non_staff_are_sent_to_login(client, django_user_model, records, path, who):
    if who == "not staff":
        client.force_login(django_user_model.objects.create_user("eve"))
    response = client.get(f"{CHANGELIST}{path}")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_records_list_status_outcome_and_latency_first_in_words(staff_client, record_usage):
    record_usage(request_id="req-404", status=404, latency_ms=12.345)
    page = staff_client.get(CHANGELIST).content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-([a-z_]+)', page)
    assert headers[:4] == ["status_text", "outcome_text", "latency", "started_at"]
    row = page[page.index('class="field-status_text"') :]
    cells = re.findall(r'class="field-[a-z_]+"[^>]*>(?:<a [^>]*>)?([^<]*)<', row)
    assert cells[:3] == ["404 Not Found", "Client error (4xx)", "12 ms"]
    assert ">Server error (5xx)</a>" in page  # the outcome filter speaks the same words
