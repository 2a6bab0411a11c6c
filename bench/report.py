"""Results as the reader sees them: goals judged, Markdown tables, JSON, docs/benchmarks.md."""

import json

from bench.processes import ROOT

RESULTS_JSON = ROOT / "bench" / "results" / "latest.json"
DOCS = ROOT / "docs" / "benchmarks.md"
FLAT_FACTOR = 1.5  # "flat": p50 at the largest size at most this many times the smallest's
STATS_GOAL_MS = 50
MEMORY_GOAL_MIB = 150e6 / 2**20  # 150 MB; VmRSS is in KiB
SEED_STEPS = ("copy_s", "rollups_s", "analyze_s")
STATS_LABELS = {
    "key_30d": "`GET /api/stats` (one key), last 30 days",
    "key_24h": "`GET /api/stats` (one key), last 24 hours",
    "admin_30d": "`GET /api/admin/stats`, last 30 days",
    "admin_24h": "`GET /api/admin/stats`, last 24 hours",
}


def goals(results: dict) -> dict[str, dict]:
    """Each goal of the project, by id, with the figure that judges it and whether it is met."""
    latency, streams = results["latency"], results["streams"]
    direct, via = streams["direct"], streams["gateway"]
    sizes = results["statistics"]["sizes"]
    largest, smallest = sizes[-1], sizes[0]
    stats_p95 = max(largest["latency"][name]["p95"] for name in STATS_LABELS)
    growth = max(
        largest["latency"][name]["p50"] / smallest["latency"][name]["p50"] for name in STATS_LABELS
    )
    peak_rss = max(results["memory"]["peak_mib"].values())
    ttft_added = via["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"]
    throughput = results["throughput"]["gateway"]["requests_per_s"]
    return {
        "latency": _goal("added latency p50 <= 2 ms", latency["added_p50_ms"], "ms", 2),
        "throughput": _goal(
            ">= 1,000 requests/s at concurrency 32", throughput, "req/s", throughput >= 1000
        ),
        "ttft": _goal("time to first token added <= 5 ms at p50", round(ttft_added, 1), "ms", 5),
        "bunching": _goal("no bunched chunks", via["bunched"], "chunks", via["bunched"] == 0),
        "completion": _goal(
            f"all {via['streams']:,} streams complete",
            via["completed"],
            "streams",
            via["completed"] == via["streams"],
        ),
        "statistics": _goal(
            f"statistics <= {STATS_GOAL_MS} ms at {_count(largest['records'])} records (p95)",
            stats_p95,
            "ms",
            STATS_GOAL_MS,
        ),
        "flat": _goal(
            f"statistics flat in the record count (p50 grows <= {FLAT_FACTOR}x "
            f"from {_count(smallest['records'])} to {_count(largest['records'])})",
            round(growth, 2),
            "x",
            FLAT_FACTOR,
        ),
        "memory": _goal(
            f"worker memory <= 150 MB ({MEMORY_GOAL_MIB:.0f} MiB)", peak_rss, "MiB", MEMORY_GOAL_MIB
        ),
        "routing": _goal(
            "routing adds < 0.3 ms per request (3 servers)",
            round(results["routing"]["three_servers_us"] / 1000, 4),
            "ms",
            0.3,
        ),
    }


def _goal(goal: str, figure: float, unit: str, limit: float | bool) -> dict:
    """`limit`: the figure's upper bound, or (a bool) the verdict itself."""
    met = limit if isinstance(limit, bool) else figure <= limit
    return {"goal": goal, "figure": figure, "unit": unit, "met": met}


def _count(n: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n:,}"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f} ms" if value < 10 else f"{value:,.1f} ms"


def _share(run: dict) -> str:
    return f"{100 * run['bunched_share']:.1f} % ({run['bunched']:,})"


def summary_table(results: dict) -> str:
    """The per-request figures, direct against via the gateway, each next to its goal."""
    verdicts = {name: _verdict(goal["met"]) for name, goal in results["goals"].items()}
    latency, throughput = results["latency"], results["throughput"]
    direct, via = results["streams"]["direct"], results["streams"]["gateway"]
    memory = results["memory"]
    spacing = results["streams"]["spacing_ms"]
    rows = [
        (
            "Latency p50, concurrency 1",
            _ms(latency["direct_ms"]["p50"]),
            _ms(latency["gateway_ms"]["p50"]),
            f"+{_ms(latency['added_p50_ms'])} (x{latency['ratio_p50']})",
            "added <= 2 ms",
            verdicts["latency"],
        ),
        (
            "Latency p99, concurrency 1",
            _ms(latency["direct_ms"]["p99"]),
            _ms(latency["gateway_ms"]["p99"]),
            f"+{_ms(latency['added_p99_ms'])}",
            "",
            "",
        ),
        (
            "Throughput, concurrency 32",
            f"{throughput['direct']['requests_per_s']:,.0f} req/s",
            f"{throughput['gateway']['requests_per_s']:,.0f} req/s",
            f"x{throughput['ratio']}",
            ">= 1,000 req/s",
            verdicts["throughput"],
        ),
        (
            "Non-2xx / socket errors, concurrency 32",
            f"{throughput['direct']['non_2xx']} / {throughput['direct']['socket_errors']}",
            f"{throughput['gateway']['non_2xx']} / {throughput['gateway']['socket_errors']}",
            "",
            "",
            "",
        ),
        (
            f"Time to first token p50, {via['streams']:,} streams",
            _ms(direct["ttft_ms"]["p50"]),
            _ms(via["ttft_ms"]["p50"]),
            f"+{_ms(results['goals']['ttft']['figure'])}",
            "added <= 5 ms",
            verdicts["ttft"],
        ),
        (
            "Time to first token p95",
            _ms(direct["ttft_ms"]["p95"]),
            _ms(via["ttft_ms"]["p95"]),
            f"+{_ms(via['ttft_ms']['p95'] - direct['ttft_ms']['p95'])}",
            "",
            "",
        ),
        (
            f"Inter-chunk gap p50 / p95 (upstream spacing {spacing:g} ms)",
            f"{_ms(direct['gap_ms']['p50'])} / {_ms(direct['gap_ms']['p95'])}",
            f"{_ms(via['gap_ms']['p50'])} / {_ms(via['gap_ms']['p95'])}",
            "",
            "",
            "",
        ),
        (
            f"Bunched chunks (gap < {via['bunched_below_ms']:g} ms)",
            _share(direct),
            _share(via),
            "",
            "none",
            verdicts["bunching"],
        ),
        (
            "Completed streams",
            f"{direct['completed']:,} / {direct['streams']:,}",
            f"{via['completed']:,} / {via['streams']:,}",
            "",
            "all",
            verdicts["completion"],
        ),
        (
            "Peak concurrent streams (client side)",
            f"{direct['peak_concurrent']:,}",
            f"{via['peak_concurrent']:,}",
            "",
            "",
            "",
        ),
        (
            "Worker RSS: idle -> peak under the streams",
            "",
            ", ".join(
                f"{memory['idle_mib'].get(pid, '?')} -> {peak} MiB"
                for pid, peak in memory["peak_mib"].items()
            ),
            "",
            f"<= 150 MB ({MEMORY_GOAL_MIB:.0f} MiB) each",
            verdicts["memory"],
        ),
        (
            "Routing decision per request, 3 servers (1 server), in-process",
            "",
            f"{results['routing']['three_servers_us']} µs "
            f"({results['routing']['one_server_us']} µs)",
            "",
            "< 0.3 ms",
            verdicts["routing"],
        ),
    ]
    header = ("Measure", "Direct", "Via gateway", "Gateway adds", "Goal", "")
    return _table(header, rows)


def statistics_table(results: dict) -> str:
    """Statistics latency (p50 / p95) per database size, with the seeding costs."""
    sizes = results["statistics"]["sizes"]
    header = ("Request (p50 / p95)", *(f"{_count(s['records'])} records" for s in sizes))
    rows = [
        (
            label,
            *(
                f"{_ms(s['latency'][name]['p50'])} / {_ms(s['latency'][name]['p95'])}"
                for s in sizes
            ),
        )
        for name, label in STATS_LABELS.items()
    ]
    rows.append(("Rollup rows", *(f"{s['rollup_rows']:,}" for s in sizes)))
    rows.append(
        (
            "Seeding this step (COPY + rollups + analyze)",
            *(" + ".join(f"{s['seed'][step]:g}" for step in SEED_STEPS) + " s" for s in sizes),
        )
    )
    rows.append(
        (
            "Rollups of one hour = the gateway's own sums",
            *(
                f"{s['check']['rollup_rows']} rows, {s['check']['mismatches']} mismatches"
                for s in sizes
            ),
        )
    )
    lines = [_table(header, rows), ""]
    for name in ("statistics", "flat"):
        goal = results["goals"][name]
        lines.append(
            f"- Goal: {goal['goal']}: {goal['figure']} {goal['unit']}, {_verdict(goal['met'])}"
        )
    return "\n".join(lines)


def _table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def notes(results: dict) -> list[str]:
    """What a reader needs to interpret the figures, computed from this run."""
    streams = results["streams"]
    spread = {side: streams[side]["ramp_observed_s"] for side in ("direct", "gateway")}
    cpu = streams["cpu_s"]
    wall = streams["gateway"]["wall_s"]
    machine = results["machine"]
    return [
        f"Direct figures show the development Ollama's own ceiling (a Python threading server): "
        f"{results['throughput']['direct']['requests_per_s']:,.0f} req/s at concurrency 32. wrk "
        f"(C, epoll, {results['throughput']['direct']['threads']} threads) is not the limit.",
        f"Streams: {streams['direct']['streams']:,} opened at once (ramp "
        f"{streams['ramp_s']:g} s; the starts spread over {spread['direct']:g} s direct, "
        f"{spread['gateway']:g} s via the gateway), "
        f"{streams['tokens']} tokens {streams['spacing_ms']:g} ms apart each. Time to first token "
        "counts from before the connection is opened.",
        f"CPU during the gateway's stream run ({wall:g} s wall, {machine['nproc']} cores): gateway "
        f"workers {cpu['gateway_workers']:g} s, development Ollama {cpu['fake']:g} s, client "
        f"{cpu['client']:g} s ({streams['gateway']['client_cpu_percent']:g} % of one core).",
        f"Load average (1, 5, 15 min) at the start {_loads(machine['load_average_start'])}, "
        f"at the end {_loads(machine['load_average_end'])}: other work on the machine shares its "
        f"{machine['nproc']} cores with the benchmark and moves the absolute figures.",
        f"Statistics: records over 30 days, 50 keys (the calling key is the busiest), 5 models; "
        f"each size adds records to the previous one. {results['statistics']['calls']} calls per "
        "figure after 3 warm-up calls, through the gateway (authentication, limit, record "
        "included).",
    ]


def _loads(values: list[float]) -> str:
    return " / ".join(f"{v:g}" for v in values)


def markdown(results: dict) -> str:
    """The tables and notes, as printed at the end of a run."""
    lines = [
        "## Per request and streaming",
        "",
        summary_table(results),
        "",
        "## Statistics",
        "",
        statistics_table(results),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes(results)),
    ]
    return "\n".join(lines) + "\n"


def docs(results: dict) -> str:
    """docs/benchmarks.md: the latest figures, where they come from, and how to reproduce them."""
    machine, config = results["machine"], results["config"]
    return f"""# Benchmarks

The gateway under its production configuration (gunicorn, threaded workers, PostgreSQL) in front
of the development Ollama, on one machine. Every figure is measured twice in the same run, to the
upstream directly and through the gateway: on a shared machine absolute times drift, so read the
differences and ratios. Goals are those of the project; each is marked met or missed.

Latest run: {results["started_at"]}, {results["duration_s"] / 60:.1f} minutes.

```sh
{results["command"]}
```

Machine: {machine["nproc"]} CPUs ({machine["cpu_model"]}), {machine["memory_gib"]} GiB memory,
Linux {machine["kernel"]}, Python {machine["python"]}, PostgreSQL {machine["postgresql"]};
{config["workers"]} gunicorn workers. The load generators run on the same machine and compete
with the gateway for its cores.

{markdown(results)}
## How it is measured

- **Latency**: {config["requests"]:,} sequential `POST /api/generate` (`"stream": false`) per
  side over one keep-alive connection, after a warm-up, in alternating blocks of direct and
  gateway requests. Through the gateway every request is authenticated, counted against its
  key's rate limit and recorded (record + rollup).
- **Throughput**: wrk with `bench/post.lua`, 2 threads, 32 connections,
  {config["wrk_seconds"]:g} s per side after a 2 s warm-up run.
- **Streams**: an asyncio client on raw sockets (`bench/streams.py`) parses the chunked NDJSON
  itself and times every token line. A chunk is *bunched* when it arrives less than 25 % of the
  upstream's spacing after the previous token of its stream. The gateway runs with
  `GUNICORN_THREADS={config["stream_threads"]}` for this part (a stream holds a thread); worker
  memory (VmRSS) is sampled every 0.25 s during the run.
- **Statistics**: records loaded with COPY, their hourly rollups computed in SQL exactly as the
  gateway's write path adds them (checked against `usage.services` for one hour at each size).

`scripts/bench --help` lists the knobs; `--quick` is a shorter run (100k and 1M records).
Full results: `bench/results/latest.json` (not committed).
"""


def write(results: dict, *, write_docs: bool) -> None:
    """bench/results/latest.json always; docs/benchmarks.md when asked."""
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if write_docs:
        DOCS.write_text(docs(results))
