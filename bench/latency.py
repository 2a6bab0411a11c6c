"""Added latency at concurrency 1: sequential non-streaming requests over one keep-alive
connection each, to the upstream directly, through nginx (a plain reverse proxy) and through
the gateway.

The series run in alternating blocks, so that drift on a shared machine (other processes,
CPU frequency, the database's caches) lands on every side alike.
"""

from bench.client import Client
from bench.quantiles import summarize


def added_latency(clients: dict[str, Client], *, requests: int, warmup: int, block: int) -> dict:
    """p50/p99 of each series (ms), and what each proxy adds to "direct": differences, ratios.

    `clients` maps a side ("direct", "nginx", "gateway") to its client; "direct" is required.
    """
    for _ in range(warmup):
        for client in clients.values():
            client.generate()
    times: dict[str, list[float]] = {side: [] for side in clients}
    failures = dict.fromkeys(clients, 0)
    for start in range(0, requests, block):
        for side, client in clients.items():
            for _ in range(min(block, requests - start)):
                reply = client.generate()
                if reply.status != 200:
                    failures[side] += 1
                times[side].append(reply.seconds * 1000)
    summaries = {side: summarize(values) for side, values in times.items()}
    direct = summaries["direct"]
    result: dict = {"requests": requests, "warmup": warmup, "failures": failures}
    for side, summary in summaries.items():
        result[f"{side}_ms"] = summary
        if side != "direct":
            result[f"{side}_added_p50_ms"] = round(summary["p50"] - direct["p50"], 3)
            result[f"{side}_added_p99_ms"] = round(summary["p99"] - direct["p99"], 3)
            result[f"{side}_ratio_p50"] = round(summary["p50"] / direct["p50"], 2)
    # The gateway's figures under their historical names (the goals read these).
    result["added_p50_ms"] = result["gateway_added_p50_ms"]
    result["added_p99_ms"] = result["gateway_added_p99_ms"]
    result["ratio_p50"] = result["gateway_ratio_p50"]
    return result
