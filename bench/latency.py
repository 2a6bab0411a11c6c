"""Added latency at concurrency 1: sequential non-streaming requests over one keep-alive
connection each, to the upstream directly and through the gateway.

The two series run in alternating blocks, so that drift on a shared machine (other processes,
CPU frequency, the database's caches) lands on both sides alike.
"""

from bench.client import Client
from bench.quantiles import summarize


def added_latency(
    direct: Client, gateway: Client, *, requests: int, warmup: int, block: int
) -> dict:
    """p50/p99 of both series (ms) and what the gateway adds: differences and ratios."""
    for _ in range(warmup):
        direct.generate()
        gateway.generate()
    times: dict[str, list[float]] = {"direct": [], "gateway": []}
    failures = {"direct": 0, "gateway": 0}
    for start in range(0, requests, block):
        for side, client in (("direct", direct), ("gateway", gateway)):
            for _ in range(min(block, requests - start)):
                reply = client.generate()
                if reply.status != 200:
                    failures[side] += 1
                times[side].append(reply.seconds * 1000)
    direct_ms, gateway_ms = summarize(times["direct"]), summarize(times["gateway"])
    return {
        "requests": requests,
        "warmup": warmup,
        "direct_ms": direct_ms,
        "gateway_ms": gateway_ms,
        "failures": failures,
        "added_p50_ms": round(gateway_ms["p50"] - direct_ms["p50"], 3),
        "added_p99_ms": round(gateway_ms["p99"] - direct_ms["p99"], 3),
        "ratio_p50": round(gateway_ms["p50"] / direct_ms["p50"], 2),
    }
