"""Throughput at a fixed concurrency, measured by wrk (C, epoll: not the bottleneck here)."""

import json
import os
import subprocess
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post.lua")
_MARKER = "BENCH_JSON "


def wrk(port: int, *, seconds: float, threads: int, connections: int, key: str | None) -> dict:
    """Run wrk against POST /api/generate on 127.0.0.1:`port`; requests/s, errors, latency."""
    env = dict(os.environ)
    env.pop("BENCH_AUTHORIZATION", None)
    if key:
        env["BENCH_AUTHORIZATION"] = f"Bearer {key}"
    command = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={seconds:g}s",
        "--timeout=10s",
        f"--script={LUA_SCRIPT}",
        f"http://127.0.0.1:{port}/api/generate",
    ]
    output = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith(_MARKER))
    result = json.loads(line.removeprefix(_MARKER))
    duration = result["duration_us"] / 1e6
    return {
        "seconds": round(duration, 2),
        "threads": threads,
        "connections": connections,
        "requests": result["requests"],
        "requests_per_s": round(result["requests"] / duration, 1),
        "non_2xx": result["non_2xx"],
        "socket_errors": sum(
            result[name] for name in ("connect_errors", "read_errors", "write_errors", "timeouts")
        ),
        "latency_p50_ms": round(result["latency_p50_us"] / 1000, 2),
        "latency_p99_ms": round(result["latency_p99_us"] / 1000, 2),
    }


def compare(
    ports: dict[str, int],
    key: str,
    *,
    seconds: float,
    warmup: float,
    threads: int,
    connections: int,
) -> dict:
    """Each side in turn ("direct" first, then "nginx" if given, then "gateway", which alone
    gets the key), each after a short warm-up run."""
    runs = {}
    for side, port in ports.items():
        side_key = key if side == "gateway" else None
        for duration in (warmup, seconds):
            runs[side] = wrk(
                port, seconds=duration, threads=threads, connections=connections, key=side_key
            )
    direct = runs["direct"]["requests_per_s"]
    for side in ports:
        if side != "direct":
            runs[f"{side}_ratio"] = round(runs[side]["requests_per_s"] / direct, 3)
    runs["ratio"] = runs["gateway_ratio"]
    return runs
