"""`python -m bench.profile`: where a gateway worker's time goes, sampled by py-spy.

Starts the development Ollama and the gateway (production config, its own database), loads it
with wrk at concurrency 32 (`--load wrk`) or with concurrent streams (`--load streams`), and
samples one worker with `py-spy record` meanwhile (raw collapsed stacks). Prints the functions
that take the most samples, by own time and by inclusive time, and keeps the raw stacks in
bench/results/. py-spy is not a dependency of the project: install it outside the project's
virtualenv (`pip install --target /tmp/pyspy py-spy`) and pass `--py-spy /tmp/pyspy/bin/py-spy`.
"""

import argparse
import collections
import json
import os
import resource
import secrets
import subprocess
import time
from pathlib import Path

from bench import processes, streams, system, throughput
from bench.client import Client

RESULTS = processes.ROOT / "bench" / "results"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ollama_gateway_profile"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--load", choices=("wrk", "streams"), default="wrk")
    parser.add_argument("--seconds", type=float, default=15.0, help="wrk seconds")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="no py-spy (it costs CPU of its own): only the CPU seconds by process",
    )
    parser.add_argument("--idle", action="store_true", help="also sample idle (waiting) stacks")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--synchronous-commit-off",
        action="store_true",
        help="an experiment: the profile database without waiting for WAL flushes",
    )
    parser.add_argument(
        "--database-url", default=os.environ.get("BENCH_PROFILE_DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    return parser


def _record(py_spy: str | None, pid: int, seconds: float, rate: int, idle: bool, out):
    if py_spy is None:
        return None
    argv = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
        "--nonblocking",
    ]
    if idle:
        argv.append("--idle")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """(command name, CPU seconds used so far) of every live process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        found[int(entry.name)] = (name, system.cpu_seconds(int(entry.name)))
    return found


def _cpu_used(before: dict, after: dict, labels: dict[int, str]) -> dict[str, float]:
    """CPU seconds used between two snapshots by the processes alive at the second, by label
    (or command name); one started meanwhile counts whole. Processes that ended meanwhile are
    not in it (wrk's CPU comes from this process's children's usage instead)."""
    used: dict[str, float] = collections.defaultdict(float)
    for pid, (name, seconds) in after.items():
        earlier = before[pid][1] if pid in before and before[pid][0] == name else 0.0
        used[labels.get(pid, name)] += seconds - earlier
    return {k: round(v, 1) for k, v in sorted(used.items(), key=lambda kv: -kv[1]) if v >= 0.1}


def summarize(raw: str, top: int) -> dict:
    """Own and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return {
        "samples": total,
        "own": [(f, n, round(100 * n / total, 1)) for f, n in own.most_common(top)],
        "inclusive": [(f, n, round(100 * n / total, 1)) for f, n in inclusive.most_common(top)],
    }


def _frame(frame: str) -> str:
    """`function (path/to/module.py:line)` -> `function (module path)`, lines dropped."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    system.raise_open_files_limit(4 * args.streams + 4096)
    RESULTS.mkdir(parents=True, exist_ok=True)
    processes.database_recreate(args.database_url)
    if args.synchronous_commit_off:
        import psycopg

        with psycopg.connect(args.database_url, autocommit=True) as connection:
            name = connection.info.dbname
            connection.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    env = {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "SECRET_KEY": secrets.token_urlsafe(50),
        "DEBUG": "false",
    }
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"profile-{args.load}.txt"
    with processes.fake_ollama(log=logs / "profile-fake.log") as fake:
        env["OLLAMA_BASE_URL"] = f"http://127.0.0.1:{fake.port}"
        with processes.gateway(env=env, log=logs / "profile-gateway.log") as gateway:
            key = processes.admin_key_create(env=env)
            worker = system.children(gateway.pid)[0]
            with Client(gateway.port, key=key) as warm:
                for _ in range(200):
                    warm.generate()
            cpu_before, wall_before = _cpu_by_process(), time.monotonic()
            children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            seconds = args.seconds if args.load == "wrk" else 12
            if args.load != "wrk":
                with Client(fake.port) as control:
                    config = {"tokens": 20, "token_delay": 0.02}
                    control.call("POST", "/_fake/config", json.dumps(config).encode())
            py_spy = None if args.cpu_only else args.py_spy
            spy = _record(py_spy, worker, seconds, args.rate, args.idle, out)
            if args.load == "wrk":
                load = throughput.wrk(
                    gateway.port, seconds=seconds, threads=2, connections=32, key=key
                )
            else:
                time.sleep(0.5)
                load = streams.run_streams(
                    gateway.port, key=key, count=args.streams, ramp=0.0, timeout=60, spacing=0.02
                )
                load = {k: load[k] for k in ("completed", "ttft_ms", "bunched_share", "wall_s")}
            wall = time.monotonic() - wall_before
            cpu_after = _cpu_by_process()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)  # before py-spy is waited
            labels = {fake.pid: "development Ollama", os.getpid(): "load client (this process)"}
            labels.update({pid: f"gateway worker {pid}" for pid in system.children(gateway.pid)})
            errors = "" if spy is None else spy.communicate(timeout=seconds + 60)[1]
            cpu = {pid: system.cpu_seconds(pid) for pid in system.children(gateway.pid)}
    used = _cpu_used(cpu_before, cpu_after, labels)
    used["wrk (ended child)"] = round(
        children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime,
        1,
    )
    print(json.dumps({"load": load, "worker": worker, "cpu_s_workers": cpu}, indent=1))
    print(f"CPU seconds by command over the load's {wall:.1f} s wall (2 cores = {2 * wall:.0f}):")
    print(json.dumps(used, indent=1))
    if spy is None:
        return
    summary = summarize(out.read_text(), args.top)
    print(f"py-spy: {summary['samples']} samples ({errors.strip()[-300:]})")
    for kind in ("own", "inclusive"):
        print(f"\n## {kind}")
        for frame, n, share in summary[kind]:
            print(f"{share:5.1f} %  {n:6d}  {frame}")


if __name__ == "__main__":
    main()
