"""Results as the reader sees them: goals judged, Markdown tables, JSON, docs/benchmarks.md."""

import json

from bench.processes import ROOT

RESULTS_JSON = ROOT / "bench" / "results" / "latest.json"
DOCS = ROOT / "docs" / "benchmarks.md"
SHARING_SECTION = "## Sharing the GPU (issue 12)"  # bench/sharing.py writes it: the last one
FLAT_FACTOR = 1.5  # "flat": p50 at the largest size at most this many times the smallest's
STATS_GOAL_MS = 50
MEMORY_GOAL_MIB = 150e6 / 2**20  # 150 MB; VmRSS is in KiB
TTFT_GOAL_MS = 50
BUNCHED_GOAL = 0.05
SEED_STEPS = ("copy_s", "rollups_s", "analyze_s")
STATS_LABELS = {
    "key_30d": "`GET /api/stats` (one key), last 30 days",
    "key_24h": "`GET /api/stats` (one key), last 24 hours",
    "admin_30d": "`GET /api/admin/stats`, last 30 days",
    "admin_24h": "`GET /api/admin/stats`, last 24 hours",
}


def _range(values: list[float], fmt) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low} - {high}"


def _per_round(results: dict, part: str, *path: str) -> list[float]:
    values = []
    for measured in results["rounds"]:
        value = measured[part]
        for name in path:
            value = value[name]
        values.append(value)
    return values


def _add_error_counts(results: dict) -> None:
    """Each wrk run's non-2xx answers plus socket errors, as "errors"."""
    for measured in results["rounds"]:
        for run in measured["throughput"].values():
            if isinstance(run, dict):
                run["errors"] = run["non_2xx"] + run["socket_errors"]


def goals(results: dict) -> dict[str, dict]:
    """Each goal of the project, by id, with the figure that judges it and whether it is met.

    Latency and throughput are judged on their worst round: a goal met only by a lucky round is
    not met.
    """
    _add_error_counts(results)
    streams = results["streams"]
    direct, via = streams["direct"], streams["gateway"]
    sizes = results["statistics"]["sizes"]
    largest, smallest = sizes[-1], sizes[0]
    stats_p95 = max(largest["latency"][name]["p95"] for name in STATS_LABELS)
    growth = max(
        largest["latency"][name]["p50"] / smallest["latency"][name]["p50"] for name in STATS_LABELS
    )
    peak_rss = max(results["memory"]["peak_mib"].values())
    ttft_added = via["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"]
    ramped = results.get("streams_ramped")
    if ramped:
        # Judged on the worse of the two: at once, and over the ramp.
        ttft_added = max(
            ttft_added, ramped["gateway"]["ttft_ms"]["p50"] - ramped["direct"]["ttft_ms"]["p50"]
        )
    added = max(_per_round(results, "latency", "added_p50_ms"))
    throughput = min(_per_round(results, "throughput", "gateway", "requests_per_s"))
    slow_clients = results["slow_clients"]["during"]
    trick = results["slow_clients"]["tricklers"]
    slow_p95 = slow_clients["ms"]["p95"]
    slow_model = results["slow_model"]
    answered = max(slow_model[name]["ms"]["max"] for name in ("health", "admin_keys"))
    refused = sum(
        part["statuses"].get("503", 0)
        for part in (slow_model, slow_model["health"], slow_model["admin_keys"])
    )
    return {
        "latency": _goal("added latency p50 <= 2 ms (worst round)", added, "ms", 2),
        "throughput": _goal(
            ">= 1,000 requests/s at concurrency 32 (worst round)",
            throughput,
            "req/s",
            throughput >= 1000,
        ),
        "ttft": _goal(
            f"time to first token added <= {TTFT_GOAL_MS} ms at p50"
            + (" (worse of: at once, over a ramp)" if ramped else ""),
            round(ttft_added, 1),
            "ms",
            TTFT_GOAL_MS,
        ),
        "bunching": _goal(
            f"<= {BUNCHED_GOAL:.0%} bunched chunks",
            round(100 * via["bunched_share"], 1),
            "%",
            via["bunched_share"] <= BUNCHED_GOAL,
        ),
        "completion": _goal(
            f"all {via['streams']:,} streams complete",
            via["completed"],
            "streams",
            via["completed"] == via["streams"],
        ),
        "memory": _goal(
            f"worker memory <= 150 MB ({MEMORY_GOAL_MIB:.0f} MiB)", peak_rss, "MiB", MEMORY_GOAL_MIB
        ),
        "slow_clients": _goal(
            f"another key's p95 < 1 s beside {trick['headers']['connections']} slow-header + "
            f"{trick['bodies']['connections']} slow-body connections",
            slow_p95,
            "ms",
            slow_p95 < 1000
            and sum(slow_clients["statuses"].values()) == slow_clients["statuses"].get("200", 0),
        ),
        "slow_model": _goal(
            f"/health and admin answer < 1 s (slowest call) beside {slow_model['requests']} "
            f"requests waiting on a {slow_model['ttft_s']:g} s model; no 503",
            answered,
            "ms",
            answered < 1000 and refused == 0,
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


def _plus_ms(value: float) -> str:
    return f"+{_ms(value)}" if value >= 0 else f"-{_ms(-value)}"


def _rps(value: float) -> str:
    return f"{value:,.0f} req/s"


def _share(run: dict) -> str:
    return f"{100 * run['bunched_share']:.1f} % ({run['bunched']:,})"


def _statuses(counts: dict) -> str:
    return ", ".join(f"{n} x {status}" for status, n in sorted(counts.items())) or "-"


def summary_table(results: dict) -> str:
    """Latency and throughput, each side as a range over the rounds, next to its goal."""
    verdicts = {name: _verdict(goal["met"]) for name, goal in results["goals"].items()}
    sides = results["sides"]
    has_nginx = "nginx" in sides
    header = ("Measure", "Direct", "Via nginx", "Via gateway", "Gateway adds", "Goal", "")
    nginx_missing = "not installed"

    def row(label, part, path, fmt, added, goal="", verdict=""):
        cells = [label]
        for side in ("direct", "nginx", "gateway"):
            if side == "nginx" and not has_nginx:
                cells.append(nginx_missing)
                continue
            cells.append(_range(_per_round(results, part, *path(side)), fmt))
        return (*cells, added, goal, verdict)

    rows = [
        row(
            "Latency p50, concurrency 1",
            "latency",
            lambda side: (f"{side}_ms", "p50"),
            _ms,
            _range(_per_round(results, "latency", "added_p50_ms"), _plus_ms),
            "added <= 2 ms",
            verdicts["latency"],
        ),
        row(
            "Latency p99, concurrency 1",
            "latency",
            lambda side: (f"{side}_ms", "p99"),
            _ms,
            _range(_per_round(results, "latency", "added_p99_ms"), _plus_ms),
        ),
        row(
            "Throughput, concurrency 32 (wrk)",
            "throughput",
            lambda side: (side, "requests_per_s"),
            _rps,
            "x" + _range(_per_round(results, "throughput", "ratio"), lambda v: f"{v:g}"),
            ">= 1,000 req/s",
            verdicts["throughput"],
        ),
        row(
            "Latency p50 under wrk, concurrency 32",
            "throughput",
            lambda side: (side, "latency_p50_ms"),
            _ms,
            "",
        ),
        row(
            "Non-2xx + socket errors, concurrency 32",
            "throughput",
            lambda side: (side, "errors"),
            lambda v: f"{v:,}",
            "",
        ),
    ]
    if has_nginx:
        nginx_added = _range(_per_round(results, "latency", "nginx_added_p50_ms"), _plus_ms)
        rows.append(("nginx adds, latency p50", "", nginx_added, "", "", "", ""))
    return _table(header, rows)


def streams_table(results: dict) -> str:
    """1,000 streams at once, direct against via the gateway, and the workers' memory."""
    verdicts = {name: _verdict(goal["met"]) for name, goal in results["goals"].items()}
    direct, via = results["streams"]["direct"], results["streams"]["gateway"]
    memory = results["memory"]
    spacing = results["streams"]["spacing_ms"]
    rows = [
        (
            f"Time to first token p50, {via['streams']:,} streams",
            _ms(direct["ttft_ms"]["p50"]),
            _ms(via["ttft_ms"]["p50"]),
            _plus_ms(results["goals"]["ttft"]["figure"]),
            f"added <= {TTFT_GOAL_MS} ms",
            verdicts["ttft"],
        ),
        (
            "Time to first token p95",
            _ms(direct["ttft_ms"]["p95"]),
            _ms(via["ttft_ms"]["p95"]),
            _plus_ms(via["ttft_ms"]["p95"] - direct["ttft_ms"]["p95"]),
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
        *_ramped_rows(results),
        (
            f"Bunched chunks (gap < {via['bunched_below_ms']:g} ms)",
            _share(direct),
            _share(via),
            "",
            f"<= {BUNCHED_GOAL:.0%}",
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


def _ramped_rows(results: dict) -> list[tuple]:
    ramped = results.get("streams_ramped")
    if not ramped:
        return []
    direct, via = ramped["direct"], ramped["gateway"]
    label = f"opened over {ramped['ramp_s']:g} s"
    return [
        (
            f"Time to first token p50 / p95, {label} (peak {direct['peak_concurrent']:,} direct, "
            f"{via['peak_concurrent']:,} via the gateway)",
            f"{_ms(direct['ttft_ms']['p50'])} / {_ms(direct['ttft_ms']['p95'])}",
            f"{_ms(via['ttft_ms']['p50'])} / {_ms(via['ttft_ms']['p95'])}",
            _plus_ms(via["ttft_ms"]["p50"] - direct["ttft_ms"]["p50"]),
            "",
            "",
        ),
        (
            f"Bunched chunks / completed, {label}",
            f"{_share(direct)} / {direct['completed']:,}",
            f"{_share(via)} / {via['completed']:,}",
            "",
            "",
            "",
        ),
    ]


def slow_table(results: dict) -> str:
    """Slow clients and a slow model: what everybody else saw meanwhile."""
    verdicts = {name: _verdict(goal["met"]) for name, goal in results["goals"].items()}
    clients, model = results["slow_clients"], results["slow_model"]
    trick = clients["tricklers"]

    def timed(part: dict) -> str:
        ms = part["ms"]
        return (
            f"{_ms(ms['p50'])} / {_ms(ms['p95'])} / {_ms(ms['max'])} "
            f"({ms['n']:,} calls: {_statuses(part['statuses'])})"
        )

    rows = [
        ("Another key's generate, alone: p50 / p95 / max", timed(clients["alone"]), "", ""),
        (
            f"... beside {trick['headers']['connections']} slow-header + "
            f"{trick['bodies']['connections']} slow-body connections ({clients['seconds']:g} s)",
            timed(clients["during"]),
            "p95 < 1 s",
            verdicts["slow_clients"],
        ),
        (
            "Slow-header connections: opened, answered, closed by the gateway",
            f"{trick['headers']['opened']:,}, {_statuses(trick['headers']['answered'])}, "
            f"{trick['headers']['closed_by_server']:,} (errors: "
            f"{_statuses(trick['headers']['errors'])})",
            "",
            "",
        ),
        (
            "Slow-body connections: opened, answered, closed by the gateway",
            f"{trick['bodies']['opened']:,}, {_statuses(trick['bodies']['answered'])}, "
            f"{trick['bodies']['closed_by_server']:,} (errors: "
            f"{_statuses(trick['bodies']['errors'])})",
            "",
            "",
        ),
        (
            f"{model['requests']} non-streamed requests on a model answering after "
            f"{model['ttft_s']:g} s: p50 / max",
            f"{_ms(model['slow_ms']['p50'])} / {_ms(model['slow_ms']['max'])} "
            f"({_statuses(model['statuses'])})",
            "no 503",
            "",
        ),
        (
            "... meanwhile `/health`: p50 / p95 / max",
            timed(model["health"]),
            "< 1 s",
            "",
        ),
        (
            "... meanwhile admin `GET /api/keys`: p50 / p95 / max",
            timed(model["admin_keys"]),
            "< 1 s",
            verdicts["slow_model"],
        ),
    ]
    return _table(("Measure", "Figure", "Goal", ""), rows)


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
    direct_rps = _range(_per_round(results, "throughput", "direct", "requests_per_s"), _rps)
    rounds = len(results["rounds"])
    errors = sum(_per_round(results, "throughput", "gateway", "errors"))
    extra = (
        [
            f"{errors} of the gateway's answers under wrk were errors (non-2xx or socket): the "
            "reason is in bench/results/logs/gateway.log (performance.md discusses those of the "
            "run it quotes)."
        ]
        if errors
        else []
    )
    return [
        *extra,
        f"Latency and throughput: {rounds} rounds in this run, each side measured in every round; "
        "a cell shows the range over the rounds, and goals are judged on the worst round.",
        f"Direct figures show the development Ollama's own ceiling (a Python threading server): "
        f"{direct_rps} at concurrency 32. wrk (C, epoll, "
        f"{results['rounds'][0]['throughput']['direct']['threads']} threads) is not the limit. "
        "nginx: a plain reverse proxy (2 workers, upstream keep-alive, no buffering) in front of "
        "the same development Ollama: what any proxy hop adds on this machine.",
        f"Streams: {streams['direct']['streams']:,} opened at once (ramp "
        f"{streams['ramp_s']:g} s; the starts spread over {spread['direct']:g} s direct, "
        f"{spread['gateway']:g} s via the gateway), "
        f"{streams['tokens']} tokens {streams['spacing_ms']:g} ms apart each. Time to first token "
        "counts from before the connection is opened.",
        "Time to first token directly is the development Ollama's own time to start 1,000 "
        "threads on 2 shared cores (0.6-1.2 s between runs): the added figure is the difference "
        "of two such figures, measured one after the other, and moves by hundreds of "
        "milliseconds between runs (see performance.md, which also measures it with the streams "
        "opened over 1-2 s).",
        f"CPU during the gateway's stream run ({wall:g} s wall, {machine['nproc']} cores): gateway "
        f"workers {cpu['gateway_workers']:g} s, development Ollama {cpu['fake']:g} s, client "
        f"{cpu['client']:g} s ({streams['gateway']['client_cpu_percent']:g} % of one core).",
        "Slow clients: each connection sends one byte a second (headers from their first byte; "
        "or complete headers, then a 1 MB body), without a key, and is reopened when the gateway "
        "cuts it; another key (role user) makes non-streamed requests one after another, "
        "timed alone first and then beside them. A failed call counts with its elapsed time.",
        "Slow model: the development Ollama's `ttft` is set through `POST /_fake/config`; the "
        "requests start together, each on its own connection, and `/health` (no key) and "
        "`GET /api/keys` (admin key) alternate while they wait.",
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


def goals_list(results: dict) -> str:
    return "\n".join(
        f"- {goal['goal']}: {goal['figure']:,} {goal['unit']}, {_verdict(goal['met'])}"
        for goal in results["goals"].values()
    )


def markdown(results: dict) -> str:
    """The tables and notes, as printed at the end of a run."""
    lines = [
        "## Goals",
        "",
        goals_list(results),
        "",
        "## Per request: direct, nginx, gateway",
        "",
        summary_table(results),
        "",
        "## Streaming and memory",
        "",
        streams_table(results),
        "",
        "## Slow clients and a slow model",
        "",
        slow_table(results),
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
    records = ", ".join(_count(n) for n in config["records"])
    return f"""# Benchmarks

The gateway under its production configuration (`gunicorn -c gunicorn.conf.py
ollama_gateway.asgi`: event-loop workers, uvloop and httptools, aiohttp to Ollama, an async
psycopg pool, PostgreSQL) in front of the development Ollama, on one machine, beside the same
requests sent to the development Ollama directly and through nginx as a plain reverse proxy. On a
shared machine absolute times drift, so read the differences and ratios. Goals are those of
issue 11; each is marked met or missed. [performance.md](performance.md) has the before/after and
the profile of what remains.

Latest run: {results["started_at"]}, {results["duration_s"] / 60:.1f} minutes.

```sh
{results["command"]}
```

Machine: {machine["nproc"]} CPUs ({machine["cpu_model"]}), {machine["memory_gib"]} GiB memory,
Linux {machine["kernel"]}, Python {machine["python"]}, PostgreSQL {machine["postgresql"]};
{config["workers"]} gunicorn workers. The load generators, the development Ollama and PostgreSQL
run on the same machine and compete with the gateway for its cores (and so does other work:
see the load averages in the notes).

{markdown(results)}
## How it is measured

- **Latency**: {config["requests"]:,} sequential `POST /api/generate` (`"stream": false`) per
  side and round over one keep-alive connection, after a warm-up, in alternating blocks of
  direct, nginx and gateway requests. Through the gateway every request is authenticated,
  counted against its key's rate limit and recorded (record + rollup).
- **Throughput**: wrk with `bench/post.lua`, 2 threads, 32 connections,
  {config["wrk_seconds"]:g} s per side and round after a 2 s warm-up run.
- **Streams**: an asyncio client on raw sockets (`bench/streams.py`) parses the chunked NDJSON
  itself and times every token line. A chunk is *bunched* when it arrives less than 25 % of the
  upstream's spacing after the previous token of its stream. Worker memory (VmRSS) is sampled
  every 0.25 s during the run. The streams are opened at once, then again over
  {config.get("stream_check_ramp", 0):g} s (0: not run).
- **Slow clients and slow model**: `bench/slow.py` (see the notes above);
  {config["slow_seconds"]:g} s of trickling, {config["slow_model_requests"]} requests on a model
  answering after {config["slow_model_ttft"]:g} s.
- **Statistics**: records loaded with COPY ({records}), their hourly rollups computed in SQL
  exactly as the gateway's write path adds them (checked against `usage.services` for one hour
  at each size).

`scripts/bench --help` lists the knobs; `--quick` is a shorter run (100k and 1M records).
nginx is started by the benchmark from a generated configuration in a temporary directory
(`apt-get install nginx`; without it the column says "not installed").
Full results: `bench/results/latest.json` (not committed).
"""


def write(results: dict, *, write_docs: bool) -> None:
    """bench/results/latest.json always; docs/benchmarks.md when asked."""
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if write_docs:
        # The sharing section (bench/sharing.py, run on its own) survives this rewrite.
        old = DOCS.read_text() if DOCS.exists() else ""
        kept = old[old.find(SHARING_SECTION) :] if SHARING_SECTION in old else ""
        DOCS.write_text(docs(results) + ("\n" + kept if kept else ""))
