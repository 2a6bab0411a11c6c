"""`python -m bench.run` (via `scripts/bench`): the whole benchmark, in one run.

1. added latency at concurrency 1 and throughput at concurrency 32, directly, through nginx (a
   plain reverse proxy: what any proxy adds) and through the gateway, in `--rounds` rounds;
2. concurrent streams and worker memory;
3. slow clients (trickled headers and bodies) beside another key's requests;
4. a slow model (non-streamed requests waiting on it) beside /health and the admin API;
5. statistics latency at growing numbers of usage records.

The gateway runs under its production configuration (`gunicorn -c gunicorn.conf.py`, event-loop
workers) in every part. Results print as Markdown, go to bench/results/latest.json and, with
--write-docs, to docs/benchmarks.md.

The sharing scenario of issue 12 (a fair GPU queue: direct FIFO against the gateway's queue,
two saturating keys, the scheduler's cost) runs on its own: `.venv/bin/python -m bench.sharing
[--write-docs]` or `make bench-sharing` (`python -m bench.sharing --help`); it keeps its section
of docs/benchmarks.md, which this run's --write-docs leaves in place.
"""

import argparse
import contextlib
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from bench import (
    latency,
    processes,
    report,
    routing,
    seed,
    slow,
    stats,
    streams,
    system,
    throughput,
)
from bench.client import Client

LOGS = processes.ROOT / "bench" / "results" / "logs"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ollama_gateway_bench"
FULL_RECORDS = "100000,1000000,10000000"
QUICK_RECORDS = "100000,1000000"
SEEDED_KEYS = 50
# An hour whose rollups are recomputed in Python at each size: seeded, and untouched by traffic.
CHECKED_HOUR_AGO = timedelta(days=7, hours=5)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, records up to 1M")
    parser.add_argument("--write-docs", action="store_true", help="rewrite docs/benchmarks.md")
    parser.add_argument(
        "--records", help=f"comma-separated database sizes (default {FULL_RECORDS})"
    )
    parser.add_argument("--requests", type=int, help="sequential requests per side (2000)")
    parser.add_argument("--wrk-seconds", type=float, help="seconds per wrk run (10)")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams")
    parser.add_argument("--stream-tokens", type=int, default=20, help="tokens per stream")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument(
        "--stream-ramp", type=float, default=0.0, help="seconds over which streams open"
    )
    parser.add_argument(
        "--stream-check-ramp",
        type=float,
        default=2.0,
        help="also open the streams over this many seconds (0: skip), where the upstream keeps up",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="latency and throughput rounds (range reported)"
    )
    parser.add_argument("--slow-headers", type=int, default=300, help="header-trickling conns")
    parser.add_argument("--slow-bodies", type=int, default=100, help="body-trickling conns")
    parser.add_argument("--slow-seconds", type=float, help="seconds of trickling (30)")
    parser.add_argument("--slow-model-requests", type=int, default=100, help="waiting requests")
    parser.add_argument("--slow-model-ttft", type=float, default=8.0, help="model's delay (s)")
    parser.add_argument("--stats-calls", type=int, help="calls per statistics figure (30)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="dropped and recreated at every run (default %(default)s)",
    )
    return parser


def _options(argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with the defaults --quick shortens filled in."""
    args = _parser().parse_args(argv)
    quick = args.quick
    args.records = sorted(
        {int(n) for n in (args.records or (QUICK_RECORDS if quick else FULL_RECORDS)).split(",")}
    )
    args.requests = args.requests or (500 if quick else 2000)
    args.wrk_seconds = args.wrk_seconds or (5.0 if quick else 10.0)
    args.stats_calls = args.stats_calls or (10 if quick else 30)
    args.slow_seconds = args.slow_seconds or (15.0 if quick else 30.0)
    return args


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _phase(timings: dict, name: str) -> Iterator[None]:
    _say(f"{name}...")
    started = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - started, 1)
    _say(f"{name}: {timings[name]} s")


def _django_setup(env: dict) -> None:
    """Django in this process too, on the benchmark database: the loader and the rollup check
    read the gateway's models and write path. No pool here: one thread, few queries."""
    os.environ.update(
        DATABASE_URL=env["DATABASE_URL"],
        SECRET_KEY=env["SECRET_KEY"],
        DJANGO_SETTINGS_MODULE="ollama_gateway.settings",
        DB_POOL="false",
    )
    import django

    django.setup()


def _latency_and_throughput(args, fake: processes.Server, env: dict, results: dict) -> str:
    """Direct, nginx (when installed) and gateway side by side, `args.rounds` times."""
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(processes.gateway(env=env, log=LOGS / "gateway.log"))
        key = processes.admin_key_create(env=env)
        ports = {"direct": fake.port}
        if processes.nginx_available():
            ports["nginx"] = stack.enter_context(
                processes.nginx(upstream=fake.port, log=LOGS / "nginx.log")
            ).port
        else:
            _say("note: nginx is not installed: no nginx column")
        ports["gateway"] = gateway.port
        rounds = []
        for number in range(1, args.rounds + 1):
            _say(f"latency and throughput: round {number} of {args.rounds}")
            clients = {
                side: Client(port, key=key if side == "gateway" else None)
                for side, port in ports.items()
            }
            try:
                measured = latency.added_latency(
                    clients,
                    requests=args.requests,
                    warmup=max(100, args.requests // 10),
                    block=100,
                )
            finally:
                for client in clients.values():
                    client.close()
            rounds.append(
                {
                    "latency": measured,
                    "throughput": throughput.compare(
                        ports,
                        key,
                        seconds=args.wrk_seconds,
                        warmup=2,
                        threads=2,
                        connections=32,
                    ),
                }
            )
    results["rounds"] = rounds
    results["sides"] = list(ports)
    return key


def _streams(args, fake: processes.Server, env: dict, key: str, results: dict) -> None:
    with Client(fake.port) as control:
        config = {"tokens": args.stream_tokens, "token_delay": args.token_delay}
        control.call("POST", "/_fake/config", json.dumps(config).encode())
    log = LOGS / "gateway-streams.log"
    with processes.gateway(env=env, log=log) as gateway:
        workers = system.children(gateway.pid)
        for _ in range(20):  # every worker loads its code before "idle" is read
            with Client(gateway.port, key=key) as warm:
                warm.generate()
        idle = {pid: system.rss_mib(pid) for pid in workers}
        run = {"count": args.streams, "ramp": args.stream_ramp, "spacing": args.token_delay}
        timeout = 60 + args.stream_tokens * args.token_delay
        direct = streams.run_streams(fake.port, key=None, timeout=timeout, **run)
        cpu_before = {pid: system.cpu_seconds(pid) for pid in [fake.pid, *workers]}
        with system.RssSampler(gateway.pid) as sampler:
            via = streams.run_streams(gateway.port, key=key, timeout=timeout, **run)
        cpu = {pid: system.cpu_seconds(pid) - cpu_before[pid] for pid in cpu_before}
        after = {pid: system.rss_mib(pid) for pid in workers}
        if args.stream_check_ramp > 0:
            # At once, the development Ollama's own start-up (~1 s for 1,000 threads) hides the
            # gateway's; over a ramp it keeps up, and what the gateway adds shows.
            ramped = {**run, "ramp": args.stream_check_ramp}
            results["streams_ramped"] = {
                "ramp_s": args.stream_check_ramp,
                "direct": streams.run_streams(fake.port, key=None, timeout=timeout, **ramped),
                "gateway": streams.run_streams(gateway.port, key=key, timeout=timeout, **ramped),
            }
    results["streams"] = {
        "tokens": args.stream_tokens,
        "spacing_ms": args.token_delay * 1000,
        "ramp_s": args.stream_ramp,
        "direct": direct,
        "gateway": via,
        "cpu_s": {
            "client": via["client_cpu_s"],
            "fake": round(cpu[fake.pid], 1),
            "gateway_workers": round(sum(cpu[pid] for pid in workers), 1),
        },
    }
    results["memory"] = {
        "idle_mib": {str(pid): idle[pid] for pid in workers},
        "peak_mib": {str(pid): mib for pid, mib in sampler.peaks.items()},
        "after_mib": {str(pid): after[pid] for pid in workers},
        "samples": sampler.samples,
    }


def _slow(args, fake: processes.Server, env: dict, key: str, results: dict) -> None:
    """Slow clients, then a slow model, on one gateway."""
    with Client(fake.port) as control:  # fast tokens again: these parts wait on other things
        control.call("POST", "/_fake/config", json.dumps({"tokens": 5, "token_delay": 0}).encode())
    other = processes.admin_key_create(env=env, name="bench-other", role="user")
    with processes.gateway(env=env, log=LOGS / "gateway-slow.log") as gateway:
        _say(f"slow clients: {args.slow_headers} + {args.slow_bodies} for {args.slow_seconds:g} s")
        results["slow_clients"] = slow.slow_clients(
            gateway.port,
            other,
            headers=args.slow_headers,
            bodies=args.slow_bodies,
            seconds=args.slow_seconds,
        )
        _say(f"slow model: {args.slow_model_requests} requests, {args.slow_model_ttft:g} s")
        with Client(fake.port) as control:
            results["slow_model"] = slow.slow_model(
                gateway.port,
                key,
                requests=args.slow_model_requests,
                ttft=args.slow_model_ttft,
                control=control,
            )


def _statistics(args, env: dict, key: str, results: dict) -> None:
    from keys.models import ApiKey

    url = env["DATABASE_URL"]
    with (
        processes.gateway(env=env, log=LOGS / "gateway-stats.log") as gateway,
        Client(gateway.port, key=key) as client,
    ):
        for n in range(1, SEEDED_KEYS):
            body = json.dumps({"name": f"bench-user-{n:02d}", "role": "user"}).encode()
            if client.call("POST", "/api/keys", body).status != 201:
                raise RuntimeError("could not create the keys to spread records over")
        # The calling key first: it is the busiest, so "one key's statistics" is the worst case.
        key_ids = list(ApiKey.objects.order_by("pk").values_list("pk", flat=True))
        seed.usage_truncate(url)
        end_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        rollup_sql = seed.rollups_add_sql()
        sizes, loaded = [], 0
        for target in args.records:
            _say(f"statistics: loading {target - loaded:,} records (total {target:,})")
            timings = seed.seed(
                url,
                count=target - loaded,
                key_ids=key_ids,
                end_hour=end_hour,
                rollup_sql=rollup_sql,
                seed=target,
            )
            loaded = target
            check = seed.rollups_verify(end_hour - CHECKED_HOUR_AGO)
            if check["mismatches"]:
                raise RuntimeError(f"seeded rollups differ from the gateway's: {check}")
            sizes.append(
                {
                    "records": target,
                    "rollup_rows": seed.rollup_rows(url),
                    "seed": timings,
                    "check": check,
                    "latency": stats.stats_latency(
                        client, calls=args.stats_calls, now=datetime.now(UTC)
                    ),
                }
            )
    results["statistics"] = {"calls": args.stats_calls, "sizes": sizes}


def main(argv: list[str] | None = None) -> None:
    args = _options(argv)
    started = time.monotonic()
    results: dict = {
        "command": shlex.join(["scripts/bench", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"workers": 2, **vars(args)},
        "phases_s": {},
    }
    soft, _ = system.raise_open_files_limit(4 * args.streams + 4 * args.slow_headers + 4096)
    if soft < 3 * args.streams:
        raise SystemExit(f"open files limit {soft} is too low for {args.streams} streams")
    if system.listen_backlog_cap() < args.streams:
        _say(f"note: net.core.somaxconn {system.listen_backlog_cap()} < {args.streams} streams")
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("*.log"):
        old.unlink()
    processes.database_recreate(args.database_url)
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
    }
    _django_setup(env)
    results["machine"] = {
        **system.machine(),
        "postgresql": processes.server_version(args.database_url),
        "open_files_limit": soft,
        "load_average_start": system.load_average(),
    }
    phases = results["phases_s"]
    with processes.fake_ollama(log=LOGS / "fake-ollama.log") as fake:
        env["OLLAMA_BASE_URL"] = f"http://127.0.0.1:{fake.port}"
        with _phase(phases, "latency and throughput"):
            key = _latency_and_throughput(args, fake, env, results)
        with _phase(phases, "streams and memory"):
            _streams(args, fake, env, key, results)
        with _phase(phases, "slow clients and slow model"):
            _slow(args, fake, env, key, results)
        with _phase(phases, "statistics"):
            _statistics(args, env, key, results)
        with _phase(phases, "routing"):
            results["routing"] = routing.routing_cost()
    results["machine"]["load_average_end"] = system.load_average()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["goals"] = report.goals(results)
    report.write(results, write_docs=args.write_docs)
    print(report.markdown(results))
    _say(f"done in {results['duration_s'] / 60:.1f} min: {report.RESULTS_JSON}")


if __name__ == "__main__":
    main()
