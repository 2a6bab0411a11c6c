"""The usage dashboard in the admin: one period's numbers from the rollups, charted as SVG."""

import csv
import html
import io
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from testsupport import content_of
from usage.charts import WIDE, bar_chart

DASHBOARD = "/admin/usage/usagerecord/dashboard/"
IN_PERIOD = {"req-1", "req-2", "req-3", "req-error", "req-limited"}


@pytest.fixture
def usage(record_usage, make_key):
    """Five requests in the last hour, all in the 100-250 ms latency bucket, and one 3 days old."""
    alice, _ = make_key(name="alice")
    bob, _ = make_key(name="bob")
    for n, ttft in ((1, 40.0), (2, 60.0), (3, None)):
        record_usage(
            key=alice,
            request_id=f"req-{n}",
            latency_ms=150,
            ttft_ms=ttft,
            prompt_tokens=10 * n,
            completion_tokens=5 * n,
        )
    record_usage(key=alice, request_id="req-error", model="qwen2.5", status=500, latency_ms=150)
    record_usage(key=bob, request_id="req-limited", status=429, latency_ms=150)
    old = record_usage(key=bob, request_id="req-old", ago=timedelta(days=3), prompt_tokens=7)
    return {"old": old.started_at}


def cards(response) -> dict[str, str]:
    assert response.status_code == 200
    page = response.content.decode()
    return dict(re.findall(r'id="stat-([a-z0-9-]+)"><span>[^<]*</span><strong>([^<]*)<', page))


def test_dashboard_shows_the_period(staff_client, usage):
    response = staff_client.get(DASHBOARD)
    shown = cards(response)
    # Measured by the write path itself: 150 ms and the few microseconds it took to get there.
    assert re.fullmatch(r"150(\.\d)? ms", shown.pop("latency-avg"))
    assert shown == {
        "requests": "5",
        "prompt-tokens": "60",
        "completion-tokens": "30",
        "client-errors": "0",
        "server-errors": "1",
        "rate-limited": "1",
        "busy": "0",
        # Estimated from the histogram: 5 requests spread over the 100-250 ms bucket.
        "latency-p50": "175 ms",
        "latency-p95": "242.5 ms",
        "ttft-avg": "50 ms",
    }
    page = response.content.decode()
    for title in ("Requests per hour", "Tokens by model", "Latency percentiles", "Top keys"):
        assert f'aria-label="{title}' in page
    assert page.count('<rect class="bar"') >= 8
    assert "No requests in this period" not in page
    by_model = page[page.index('id="by-model"') : page.index('id="by-key"')]
    assert "<td>llama3.2</td>" in by_model and "<td>qwen2.5</td>" in by_model
    by_key = page[page.index('id="by-key"') :]
    assert by_key.index("<td>alice</td>") < by_key.index("<td>bob</td>")


def test_dashboard_reads_the_rollups_only(staff_client, usage):
    with CaptureQueriesContext(connection) as queries:
        assert staff_client.get(DASHBOARD).status_code == 200
    assert not [q["sql"] for q in queries if "usage_usagerecord" in q["sql"]]


@pytest.mark.parametrize(
    ("query", "requests", "chart"),
    [
        ("last=24h", "5", "Requests per hour"),
        ("last=7d", "6", "Requests per day"),
        ("last=30d", "6", "Requests per day"),
        ("around-old", "1", "Requests per hour"),
    ],
)
def test_periods(staff_client, usage, query, requests, chart):
    if query == "around-old":
        start, end = usage["old"] - timedelta(hours=1), usage["old"] + timedelta(hours=1)
        query = f"from={start:%Y-%m-%dT%H:%M}&to={end:%Y-%m-%dT%H:%M}"
    response = staff_client.get(f"{DASHBOARD}?{query}")
    assert cards(response)["requests"] == requests
    assert f'aria-label="{chart}"' in response.content.decode()


@pytest.mark.parametrize(
    "query",
    ["last=1y", "from=yesterday", "from=2030-01-02T00:00&to=2030-01-01T00:00", "from=2001-01-01"],
)
def test_invalid_periods_show_an_error_and_the_last_24_hours(staff_client, usage, query):
    response = staff_client.get(f"{DASHBOARD}?{query}")
    assert 'class="errornote"' in response.content.decode()
    assert cards(response)["requests"] == "5"


def test_empty_period(staff_client):
    response = staff_client.get(DASHBOARD)
    page = response.content.decode()
    assert "No requests in this period." in page
    assert 'class="bar-chart"' not in page
    assert cards(response)["requests"] == "0" and cards(response)["latency-p95"] == "—"


def test_csv_link_downloads_the_same_period(staff_client, usage):
    page = staff_client.get(DASHBOARD).content.decode()
    link = html.unescape(re.search(r'href="([^"]+)" id="download-csv"', page).group(1))
    response = staff_client.get(link)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(content_of(response).decode())))
    assert {row["request_id"] for row in rows} == IN_PERIOD


def test_csv_covers_the_counted_hours(staff_client, record_usage):
    """Statistics count whole hours: the first, partial one is in the CSV too."""
    first_hour = (timezone.now() - timedelta(hours=24)).replace(minute=0, second=0, microsecond=0)
    record_usage(request_id="req-first-hour", started_at=first_hour)
    response = staff_client.get(DASHBOARD)
    assert cards(response)["requests"] == "1"
    page = response.content.decode()
    link = html.unescape(re.search(r'href="([^"]+)" id="download-csv"', page).group(1))
    assert b"req-first-hour" in content_of(staff_client.get(link))


def test_csv_rejects_an_invalid_period(staff_client):
    assert staff_client.get(f"{DASHBOARD}csv/?from=nonsense").status_code == 400


def test_staff_without_view_permission_is_refused(client, django_user_model):
    user = django_user_model.objects.create_user("staff", is_staff=True)
    client.force_login(user)
    assert client.get(DASHBOARD).status_code == 403
    assert client.get(f"{DASHBOARD}csv/").status_code == 403


@pytest.mark.parametrize("horizontal", [False, True])
def test_bar_chart_stacks_or_overlays_segments_in_proportion(horizontal):
    series = [("a", "#111", [3, 1, 0]), ("b", "#222", [1, 0, 0])]
    length, across = ("width", "y") if horizontal else ("height", "x")

    def end(rect):  # where a bar's segment ends on the value axis
        return rect["x"] + rect["width"] if horizontal else rect["y"]

    def base(rect):  # where it starts
        return rect["x"] if horizontal else rect["y"] + rect["height"]

    for overlay in (False, True):
        chart = bar_chart("t", ["x", "y", "z"], series, horizontal=horizontal, overlay=overlay)
        # Zero values draw nothing: x·a = 3, x·b = 1, y·a = 1.
        xa, xb, ya = chart.rects
        assert xa[length] == pytest.approx(3 * xb[length], abs=0.2) and xb[length] == ya[length]
        assert xa[across] == xb[across] != ya[across]  # one slot per label
        if overlay:
            assert base(xb) == base(xa)
        else:
            assert base(xb) == pytest.approx(end(xa), abs=0.2)
        ticks = [t["text"] for t in chart.texts if t["kind"] == "tick"]
        assert ticks == (["0", "1", "2", "3"] if overlay else ["0", "1", "2", "3", "4"])


def test_bar_chart_thins_crowded_labels():
    labels = [f"{h:02}:00" for h in range(48)]
    chart = bar_chart("t", labels, [("a", "#111", [1] * 48)], width=WIDE)
    shown = [t["text"] for t in chart.texts if t["kind"] == "label"]
    assert shown[:2] == ["00:00", "04:00"] and len(shown) == 12
    assert len(chart.rects) == 48


@pytest.mark.browser
def test_charts_render_in_a_browser(
    live_server, transactional_db, staff_client, chromium, usage, tmp_path
):
    session = staff_client.cookies[settings.SESSION_COOKIE_NAME].value
    chromium.open(f"{live_server.url}{DASHBOARD}", cookies={settings.SESSION_COOKIE_NAME: session})

    assert chromium.evaluate("document.title").startswith("Usage dashboard")
    assert chromium.evaluate("document.querySelector('#stat-requests strong').innerText") == "5"
    # The admin's stylesheets loaded (served by the live server, not from the internet).
    header = "getComputedStyle(document.getElementById('header')).backgroundColor"
    assert chromium.evaluate(header) not in ("", "rgba(0, 0, 0, 0)")
    charts = chromium.evaluate(
        """[...document.querySelectorAll('svg.bar-chart')].map(svg => ({
            title: svg.getAttribute('aria-label'),
            width: svg.getBoundingClientRect().width,
            bars: [...svg.querySelectorAll('rect.bar')]
                .filter(bar => bar.getBoundingClientRect().height > 0).length,
        }))"""
    )
    assert [c["title"] for c in charts] == [
        "Requests per hour",
        "Tokens by model",
        "Latency percentiles (ms)",
        "Top keys by requests",
    ]
    assert all(c["bars"] >= 2 and c["width"] > 400 for c in charts), charts

    screenshot = tmp_path / "dashboard.png"
    width, height = chromium.screenshot(screenshot)
    assert width == 1280 and height > 900
    assert screenshot.stat().st_size > 30_000
    print(f"screenshot: {screenshot}")


def test_dashboard_shows_each_ollama_server(staff_client, settings, fake_ollama):
    from proxy.backends import backend_pool

    second = "http://127.0.0.1:9"  # nothing listens: down
    settings.OLLAMA_BASE_URL = f"{fake_ollama.url},{second}"
    backend_pool().check_all()
    page = staff_client.get("/admin/usage/usagerecord/dashboard/").content.decode()
    backends = page[page.index('id="backends"') :]
    assert "ollama-1" in backends and "ollama-2" in backends
    assert "127.0.0.1" not in backends
    assert backends.count("<strong>down</strong>") == 1


def test_client_and_server_errors_are_counted_apart(staff_client, record_usage):
    for n in range(20):
        record_usage(request_id=f"req-404-{n}", status=404)
    record_usage(request_id="req-401", status=401, model="")
    record_usage(request_id="req-502", status=502)
    record_usage(request_id="req-504", status=504)
    shown = cards(staff_client.get(DASHBOARD))
    assert shown["client-errors"] == "21" and shown["server-errors"] == "2"
    page = staff_client.get(DASHBOARD).content.decode()
    outcomes = page[page.index('id="by-outcome"') :]
    assert "<td>Client error (4xx)</td>" in outcomes and "<td>Server error (5xx)</td>" in outcomes


def test_unknown_model_names_collapse_into_one_row(staff_client, record_usage):
    record_usage(request_id="req-ok", model="llama3.2")
    record_usage(request_id="req-broken", model="qwen2.5", status=500)  # a server failed it
    for n in range(20):
        record_usage(request_id=f"req-typo-{n}", model=f"llama3.2-typo{n}", status=404)
    page = staff_client.get(DASHBOARD).content.decode()
    by_model = page[page.index('id="by-model"') : page.index('id="by-key"')]
    models = re.findall(r"<tr>\s*<td>([^<]*)</td>\s*<td class=\"number\">(\d+)<", by_model)
    assert models == [("llama3.2", "1"), ("qwen2.5", "1"), ("other", "20")]


def test_servers_table_sums_every_worker(served, make_key, client, django_user_model):
    import concurrent.futures

    import requests as http

    from testsupport import wait_for_records

    _, raw = make_key(name="spread")
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", None))
    session = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}

    def served_requests() -> int:
        page = http.get(f"{served}{DASHBOARD}", cookies=session, timeout=10).text
        table = page[page.index('id="backends"') :]
        row = re.search(r"<td>ollama-1</td>(.*?)</tr>", table, re.S).group(1)
        return int(re.findall(r'class="number">(\d+)<', row)[1])  # in flight, requests, ...

    before = served_requests()

    def generate(_):
        return http.post(
            f"{served}/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer {raw}"},
            timeout=30,
        ).status_code

    # Concurrent, so that both workers serve some.
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        assert set(pool.map(generate, range(40))) == {200}
    assert len(wait_for_records(40, key__name="spread")) == 40
    # Whichever worker renders the page counts all 40: read it a few times (both answer).
    assert [served_requests() - before for _ in range(6)] == [40] * 6


def test_dashboard_shows_the_queue_by_server_and_wait_by_key(
    staff_client, record_usage, make_key, settings
):
    settings.OLLAMA_NUM_PARALLEL = 2
    alice, _ = make_key(name="alice")
    bob, _ = make_key(name="bob")
    record_usage(key=alice, queue_wait_ms=100.0)
    record_usage(key=alice, queue_wait_ms=300.0)
    record_usage(key=bob)  # no queue: not listed
    page = staff_client.get(DASHBOARD).content.decode()
    queue = page[page.index('id="queue"') :]
    assert "ollama-1" in queue
    servers = queue[: queue.index('id="queue-waits"')]
    assert re.search(r"<td>ollama-1</td>\s*<td[^>]*>2</td>\s*<td[^>]*>0</td>", servers)
    waits = queue[queue.index('id="queue-waits"') :]
    assert "alice" in waits and "bob" not in waits
    assert re.search(r">2</td>\s*<td[^>]*>200</td>", waits)


def test_every_outcome_has_a_label():
    """The admin and the dashboard name each outcome in words, the newest included."""
    from usage.models import OUTCOME_LABELS, UsageRecord

    assert set(OUTCOME_LABELS) == set(UsageRecord.Outcome.values)
    assert all(label != value for value, label in OUTCOME_LABELS.items())
