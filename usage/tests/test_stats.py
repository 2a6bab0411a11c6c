"""GET /api/stats and /api/admin/stats: answered from rollups, matching the raw records."""

from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from testsupport import content_of
from usage.models import UsageRecord
from usage.services import Exchange, usage_record
from usage.stats import percentile


def record(key, *, model="llama3.2", status=200, outcome="", tokens=(3, 5), ttft=None, at=None):
    exchange = Exchange(method="POST", route="/api/chat", request_id="r", client_addr="127.0.0.1")
    exchange.key, exchange.model, exchange.status, exchange.outcome = key, model, status, outcome
    exchange.prompt_tokens, exchange.completion_tokens = tokens
    exchange.ttft_ms = ttft
    if at:
        exchange.started_at = at
    usage_record(exchange)


@pytest.fixture
def traffic(make_key):
    alice, alice_raw = make_key(name="alice")
    bob, bob_raw = make_key(name="bob")
    for _ in range(4):
        record(alice, ttft=20.0)
    record(alice, model="qwen2.5:0.5b", tokens=(10, 0))
    record(alice, status=502, tokens=(None, None))
    record(alice, status=429, tokens=(None, None))
    record(bob, tokens=(1, 1))
    record(bob, at=timezone.now() - timedelta(days=3))
    return {"alice": (alice, alice_raw), "bob": (bob, bob_raw)}


def test_own_stats_match_the_raw_records(traffic, client_for):
    alice, raw = traffic["alice"]
    body = client_for(raw).get("/api/stats").json()
    # The stats request is recorded too, once it has answered.
    raw_records = UsageRecord.objects.filter(key=alice).exclude(route="/api/stats")
    totals = body["totals"]
    assert totals["requests"] == raw_records.count() == 7
    assert totals["prompt_tokens"] == raw_records.aggregate(s=Sum("prompt_tokens"))["s"] == 22
    assert totals["completion_tokens"] == 20
    assert totals["total_tokens"] == 42
    assert totals["errors"] == 1 and totals["rate_limited"] == 1
    assert totals["outcomes"]["ok"] == 5
    assert totals["ttft_ms_avg"] == 20.0
    assert totals["latency_ms"]["p50"] is not None
    by_model = {row["model"]: row["requests"] for row in body["by_model"]}
    assert by_model == {"llama3.2": 6, "qwen2.5:0.5b": 1}
    assert body["granularity"] == "hour"
    assert sum(point["requests"] for point in body["series"]) == 7
    assert "by_key" not in body


def test_filters_and_periods(traffic, client_for):
    client = client_for(traffic["bob"][1])
    assert client.get("/api/stats").json()["totals"]["requests"] == 1
    # Later answers count that stats request too: filter on the model to leave it out.
    week = {"from": (timezone.now() - timedelta(days=7)).isoformat(), "model": "llama3.2"}
    body = client.get("/api/stats", week).json()
    assert body["totals"]["requests"] == 2
    assert body["granularity"] == "day" and len(body["series"]) == 2
    assert client.get("/api/stats", {**week, "model": "nope"}).json()["totals"]["requests"] == 0


def test_admin_stats_cover_every_key(traffic, admin_key, client_for):
    client = client_for(admin_key[1])
    body = client.get("/api/admin/stats").json()
    assert body["totals"]["requests"] == 8
    by_key = {row["name"]: row["requests"] for row in body["by_key"]}
    assert by_key["alice"] == 7 and by_key["bob"] == 1
    only_bob = client.get("/api/admin/stats", {"key": traffic["bob"][0].preview}).json()
    assert only_bob["totals"]["requests"] == 1


def test_user_keys_cannot_read_admin_stats(traffic, client_for):
    assert client_for(traffic["bob"][1]).get("/api/admin/stats").status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"granularity": "minute"}, "granularity"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"key": "ollama-nothere1"}, "key"),
    ],
)
def test_bad_parameters_get_400(admin_key, client_for, params, field):
    response = client_for(admin_key[1]).get("/api/admin/stats", params)
    assert response.status_code == 400
    assert field in response.json()


def test_csv_export(traffic, admin_key, client_for):
    response = client_for(admin_key[1]).get("/api/admin/usage.csv")
    assert response["Content-Type"].startswith("text/csv")
    lines = content_of(response).decode().splitlines()
    assert lines[0].startswith("started_at,key_preview,key_name")
    chats = [line for line in lines if ",/api/chat," in line]
    assert len(chats) == 8
    assert sum(",alice," in line for line in chats) == 7
    assert client_for(traffic["bob"][1]).get("/api/admin/usage.csv").status_code == 403


@pytest.mark.parametrize(
    ("histogram", "q", "expected"),
    [
        ([0] * 14, 0.5, None),
        ([10] + [0] * 13, 0.5, 5.0),
        ([0, 0, 0, 10] + [0] * 10, 0.95, 97.5),
        ([5, 5] + [0] * 12, 0.5, 10.0),
    ],
)
def test_percentiles_interpolate_inside_buckets(histogram, q, expected):
    assert percentile(histogram, q) == expected


def test_hourly_and_daily_rollups_both_match_the_records(traffic):
    from usage.models import UsageRollup

    for span in ("h", "d"):
        rows = UsageRollup.objects.filter(span=span)
        assert sum(rows.values_list("requests", flat=True)) == UsageRecord.objects.count() == 9
        assert (
            sum(rows.values_list("prompt_tokens", flat=True))
            == UsageRecord.objects.aggregate(s=Sum("prompt_tokens"))["s"]
        )
    assert {r.start.hour for r in UsageRollup.objects.filter(span="d")} == {0}


def test_day_granularity_counts_whole_days(traffic, admin_key, client_for):
    week = {"from": (timezone.now() - timedelta(days=7)).isoformat(), "granularity": "day"}
    body = client_for(admin_key[1]).get("/api/admin/stats", week).json()
    assert body["from"].endswith("T00:00:00Z")
    assert body["totals"]["requests"] == 9
    assert [point["time"][11:] for point in body["series"]] == ["00:00:00Z", "00:00:00Z"]
