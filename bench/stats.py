"""How long the statistics endpoints take, through the gateway, for a key and for the admin."""

from datetime import datetime, timedelta
from urllib.parse import urlencode

from bench.client import Client, Reply
from bench.quantiles import summarize

# (name, path): the calling key's statistics, and every key's (admin).
ENDPOINTS = (("key", "/api/stats"), ("admin", "/api/admin/stats"))
WINDOWS = (("30d", timedelta(days=30)), ("24h", timedelta(hours=24)))
WARMUP = 3


def stats_latency(client: Client, *, calls: int, now: datetime) -> dict:
    """p50/p95 (ms) of `calls` GETs per endpoint and window, e.g. `{"admin_30d": {...}}`, and
    the number of requests each answer counted (a check that the seeded records are seen)."""
    results = {}
    for endpoint, path in ENDPOINTS:
        for window, span in WINDOWS:
            url = f"{path}?{urlencode({'from': (now - span).isoformat()})}"
            for _ in range(WARMUP):
                _checked(client, url)
            replies = [_checked(client, url) for _ in range(calls)]
            results[f"{endpoint}_{window}"] = {
                **summarize((r.seconds * 1000 for r in replies), qs=(0.5, 0.95)),
                "requests_counted": replies[-1].json()["totals"]["requests"],
            }
    return results


def _checked(client: Client, url: str) -> Reply:
    reply = client.call("GET", url)
    if reply.status != 200:
        raise RuntimeError(f"GET {url} answered {reply.status}: {reply.body[:300]!r}")
    return reply
