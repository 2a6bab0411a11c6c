"""`python -m bench.sharing` (`make bench-sharing`): sharing the GPU (issue 12), in one run.

1. **Direct (Ollama's FIFO)**: the development Ollama with `parallel` = 2. A batch client opens
   `--batch-streams` long streams at once (`--long-tokens` tokens, `--token-delay` apart); 0.2 s
   later an interactive client sends `--interactive` short non-streamed requests at once
   (`--short-tokens` tokens, via `options.num_predict`). Each interactive latency is timed.
2. **Through the gateway**: gunicorn (2 workers, production configuration, PostgreSQL on a fresh
   database) with `OLLAMA_NUM_PARALLEL=2`, in front of the same development Ollama (still
   `parallel` = 2). A key of priority `batch` opens the same streams, an interactive key sends
   the same requests. Goals: interactive latency <= one generation + 1 s, >= 4x better than
   direct (p50).
3. **Two saturating keys**: two keys each send `--saturating` long requests at once through the
   same gateway; the two keys' finish times (their last answer) within 10 % of each other.
4. **Scheduler cost with an empty queue**: `--requests` sequential non-streamed requests per
   side, over one keep-alive connection each, through two gateways side by side, one with
   `OLLAMA_NUM_PARALLEL=2` and one without (each on a database of its own: the Backend table is
   the configuration once seeded), in alternating blocks. Goal: added p50 <= 0.3 ms.

Results print as Markdown, go to bench/results/sharing.json and, with --write-docs, replace the
"Sharing the GPU (issue 12)" section of docs/benchmarks.md. Everything targets 127.0.0.1; every
wait is bounded; the processes and both databases are removed at the end.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench import processes, report, system
from bench.client import Client
from bench.quantiles import summarize

HOST = "127.0.0.1"
LOGS = processes.ROOT / "bench" / "results" / "logs"
RESULTS_JSON = processes.ROOT / "bench" / "results" / "sharing.json"
DOCS = processes.ROOT / "docs" / "benchmarks.md"
SECTION = report.SHARING_SECTION
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ollama_gateway_bench_sharing"
PARALLEL = 2
INTERACTIVE_DELAY = 0.2  # seconds between the batch streams and the interactive requests
FAIRNESS_LIMIT = 0.10
SPEEDUP_GOAL = 4.0
MARGIN_S = 1.0
ADDED_P50_LIMIT_MS = 0.3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sharing",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--batch-streams", type=int, default=16, help="batch streams at once")
    parser.add_argument("--interactive", type=int, default=4, help="interactive requests")
    parser.add_argument("--long-tokens", type=int, default=40, help="tokens of a long one")
    parser.add_argument("--short-tokens", type=int, default=2, help="tokens of a short one")
    parser.add_argument("--token-delay", type=float, default=0.05, help="seconds between tokens")
    parser.add_argument("--saturating", type=int, default=10, help="requests per saturating key")
    parser.add_argument("--requests", type=int, default=1000, help="sequential, per side")
    parser.add_argument("--rounds", type=int, default=5, help="alternating blocks per side")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the docs section")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_SHARING_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="dropped and recreated, then dropped at the end; a second one named\n"
        "<name>_noqueue serves the gateway without a queue (default %(default)s)",
    )
    return parser


def _say(message: str) -> None:
    print(f"[sharing {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- requests on connections of their own -------------------------------------------------------


def _request(key: str | None, *, stream: bool, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": "llama3.2",
            "prompt": "hi",
            "stream": stream,
            "options": {"num_predict": tokens},
        }
    ).encode()
    head = [
        "POST /api/generate HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _one(port: int, payload: bytes, *, timeout: float, origin: float) -> dict:
    """One request on its own connection, read to the end: status, and start, first byte and
    end in seconds from `origin` (monotonic)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = None
    status = "closed"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(payload)
            answer = b""
            while chunk := await reader.read(65536):
                if first is None:
                    first = loop.time()
                answer += chunk
            if answer:
                status = answer[9:12].decode(errors="replace")
                if b'"done":true' not in answer.replace(b" ", b""):
                    status += " incomplete"
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    ended = loop.time()
    return {
        "status": status,
        "start_s": round(started - origin, 4),
        "first_byte_s": None if first is None else round(first - origin, 4),
        "end_s": round(ended - origin, 4),
        "seconds": round(ended - started, 4),
    }


def _statuses(answers: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for answer in answers:
        counts[answer["status"]] = counts.get(answer["status"], 0) + 1
    return counts


async def _mixed(port: int, batch_key, interactive_key, args, timeout: float) -> dict:
    """The batch streams at once, then (INTERACTIVE_DELAY later) the interactive requests."""
    loop = asyncio.get_running_loop()
    origin = loop.time()
    long_req = _request(batch_key, stream=True, tokens=args.long_tokens)
    short_req = _request(interactive_key, stream=False, tokens=args.short_tokens)
    batch = [
        asyncio.ensure_future(_one(port, long_req, timeout=timeout, origin=origin))
        for _ in range(args.batch_streams)
    ]
    await asyncio.sleep(INTERACTIVE_DELAY)
    interactive = [
        asyncio.ensure_future(_one(port, short_req, timeout=timeout, origin=origin))
        for _ in range(args.interactive)
    ]
    batch_answers = await asyncio.gather(*batch)
    interactive_answers = await asyncio.gather(*interactive)
    return {
        "interactive_s": summarize(a["seconds"] for a in interactive_answers),
        "interactive_statuses": _statuses(interactive_answers),
        "interactive": interactive_answers,
        "batch_last_end_s": max(a["end_s"] for a in batch_answers),
        "batch_statuses": _statuses(batch_answers),
    }


ARRIVALS = {
    # Each key's first request arrives before the other's second: A1, B1, A2, B2... 10 ms apart.
    "interleaved": "interleaved, 10 ms apart",
    # Every request of key A, then (0.1 s later) every request of key B: A takes both free slots
    # before anything waits, B's then queue behind A's.
    "a_first": "key A's first, B's 0.1 s later",
}


async def _saturating(port: int, keys: dict[str, str], args, timeout: float, arrival: str) -> dict:
    """Each key sends `args.saturating` long non-streamed requests, arriving as `arrival` says."""
    loop = asyncio.get_running_loop()
    origin = loop.time()
    tasks: dict[str, list] = {name: [] for name in keys}

    def send(name: str) -> None:
        payload = _request(keys[name], stream=False, tokens=args.long_tokens)
        tasks[name].append(
            asyncio.ensure_future(_one(port, payload, timeout=timeout, origin=origin))
        )

    if arrival == "interleaved":
        for _ in range(args.saturating):
            for name in keys:
                send(name)
                await asyncio.sleep(0.01)
    else:
        for name in keys:
            for _ in range(args.saturating):
                send(name)
            await asyncio.sleep(0.1)
    result: dict = {"arrival": arrival}
    for name, futures in tasks.items():
        answers = await asyncio.gather(*futures)
        result[name] = {
            "finish_s": max(a["end_s"] for a in answers),
            "median_end_s": round(statistics.median(a["end_s"] for a in answers), 3),
            "statuses": _statuses(answers),
            "ends_s": sorted(a["end_s"] for a in answers),
        }
    finishes = [result[name]["finish_s"] for name in keys]
    result["spread"] = round((max(finishes) - min(finishes)) / max(finishes), 4)
    return result


def _saturating_runs(port: int, fake_port: int, keys: dict, args, generation: float) -> dict:
    runs = {}
    for arrival in ARRIVALS:
        _say(f"two saturating keys on port {port}: {arrival}")
        _configure(fake_port, parallel=PARALLEL)  # resets the peak
        timeout = 60 + 2 * args.saturating * generation
        runs[arrival] = asyncio.run(_saturating(port, keys, args, timeout, arrival))
        runs[arrival]["upstream"] = _fake_state(fake_port)
    return runs


# --- processes, keys and databases ---------------------------------------------------------------


def _configure(port: int, **changes) -> dict:
    with Client(port) as control:
        reply = control.call("POST", "/_fake/config", json.dumps(changes).encode())
        if reply.status != 200:
            raise RuntimeError(f"/_fake/config answered {reply.status}: {reply.body[:200]!r}")
        return reply.json()


def _fake_state(port: int) -> dict:
    with Client(port) as control:
        state = control.call("GET", "/_fake/state").json()
    return {name: state[name] for name in ("running", "queued", "max_running")}


def _key_create(env: dict, name: str, *options: str) -> str:
    return processes.admin_key_create(env=env, name=name, role="user", options=options)


def _database_drop(url: str) -> None:
    name = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _second_url(url: str) -> str:
    """The same URL, naming the database `<name>_noqueue` (a URL: the gateway parses one)."""
    base, _, query = url.partition("?")
    return base + "_noqueue" + (f"?{query}" if query else "")


def _warm(port: int, keys: list[str], count: int = 20) -> None:
    for key in keys:
        with Client(port, key=key) as client:
            for _ in range(count):
                if client.generate().status != 200:
                    raise RuntimeError(f"warm-up request failed on port {port}")


def _one_generation(port: int, args) -> float:
    """How long one long generation takes alone, directly (median of 3)."""

    async def run():
        origin = asyncio.get_running_loop().time()
        payload = _request(None, stream=True, tokens=args.long_tokens)
        return await _one(port, payload, timeout=60, origin=origin)

    return round(statistics.median(asyncio.run(run())["seconds"] for _ in range(3)), 3)


def _scheduler_cost(ports: dict[str, int], keys: dict[str, str], args) -> dict:
    """Sequential requests in alternating blocks; p50 per side over all blocks, and per round."""
    clients = {side: Client(port, key=keys[side]) for side, port in ports.items()}
    times: dict[str, list[float]] = {side: [] for side in ports}
    rounds = []
    block = max(1, args.requests // args.rounds)
    try:
        for client in clients.values():  # warm-up
            for _ in range(max(100, block // 2)):
                client.generate()
        for number in range(args.rounds):
            order = list(clients) if number % 2 == 0 else list(reversed(clients))
            medians = {}
            for side in order:
                measured = []
                for _ in range(block):
                    reply = clients[side].generate()
                    if reply.status != 200:
                        raise RuntimeError(f"{side}: status {reply.status}")
                    measured.append(reply.seconds * 1000)
                times[side].extend(measured)
                medians[side] = round(statistics.median(measured), 3)
            rounds.append(medians)
    finally:
        for client in clients.values():
            client.close()
    summary = {side: summarize(values) for side, values in times.items()}
    added = [r["queue"] - r["no_queue"] for r in rounds]
    return {
        "requests": block * args.rounds,
        "rounds": rounds,
        "ms": summary,
        "added_p50_ms": round(summary["queue"]["p50"] - summary["no_queue"]["p50"], 3),
        "added_p50_per_round_ms": [round(a, 3) for a in added],
    }


def _run(args, results: dict) -> None:
    base_env = {**os.environ, "SECRET_KEY": secrets.token_urlsafe(50), "DEBUG": "false"}
    base_env.pop("OLLAMA_NUM_PARALLEL", None)
    urls = {"queue": args.database_url, "no_queue": _second_url(args.database_url)}
    try:
        for url in urls.values():
            processes.database_recreate(url)
        results["machine"]["postgresql"] = processes.server_version(args.database_url)
        with processes.fake_ollama(log=LOGS / "sharing-fake-ollama.log") as fake:
            env = {
                **base_env,
                "OLLAMA_BASE_URL": f"http://127.0.0.1:{fake.port}",
                "DATABASE_URL": urls["queue"],
                "OLLAMA_NUM_PARALLEL": str(PARALLEL),
            }
            _configure(
                fake.port, tokens=args.long_tokens, token_delay=args.token_delay, parallel=PARALLEL
            )
            generation = _one_generation(fake.port, args)
            results["one_generation_s"] = generation
            timeout = 60 + 2 * args.batch_streams * generation
            _say(f"one long generation alone: {generation} s")

            _say("direct: Ollama's FIFO")
            _configure(fake.port, parallel=PARALLEL)  # resets the peak
            results["direct"] = asyncio.run(_mixed(fake.port, None, None, args, timeout))
            results["direct"]["upstream"] = _fake_state(fake.port)
            results["saturating_direct"] = _saturating_runs(
                fake.port, fake.port, {"a": None, "b": None}, args, generation
            )

            with processes.gateway(env=env, log=LOGS / "sharing-gateway.log") as gateway:
                batch = _key_create(env, "bench-batch", "--priority", "batch")
                interactive = _key_create(env, "bench-interactive")
                other = _key_create(env, "bench-saturating-b")
                _configure(fake.port, tokens=5, token_delay=0)
                _warm(gateway.port, [batch, interactive, other])
                _configure(
                    fake.port,
                    tokens=args.long_tokens,
                    token_delay=args.token_delay,
                    parallel=PARALLEL,
                )
                _say("gateway: batch key and interactive key")
                results["gateway"] = asyncio.run(
                    _mixed(gateway.port, batch, interactive, args, timeout)
                )
                results["gateway"]["upstream"] = _fake_state(fake.port)
                results["saturating"] = _saturating_runs(
                    gateway.port, fake.port, {"a": interactive, "b": other}, args, generation
                )
                _configure(fake.port, tokens=5, token_delay=0)
                no_queue_env = {**env, "DATABASE_URL": urls["no_queue"]}
                no_queue_env.pop("OLLAMA_NUM_PARALLEL")
                log = LOGS / "sharing-gateway-noqueue.log"
                with processes.gateway(env=no_queue_env, log=log) as plain:
                    plain_key = _key_create(no_queue_env, "bench-plain")
                    _say(f"scheduler cost: {args.requests} requests per side")
                    results["scheduler_cost"] = _scheduler_cost(
                        {"queue": gateway.port, "no_queue": plain.port},
                        {"queue": interactive, "no_queue": plain_key},
                        args,
                    )
    finally:
        for url in urls.values():
            with contextlib.suppress(psycopg.Error):
                _database_drop(url)


# --- report --------------------------------------------------------------------------------------


def goals(results: dict) -> dict[str, dict]:
    direct = results["direct"]["interactive_s"]
    via = results["gateway"]["interactive_s"]
    limit = results["one_generation_s"] + MARGIN_S
    speedup = direct["p50"] / via["p50"]
    worst = max(results["saturating"].values(), key=lambda run: run["spread"])
    spread = worst["spread"]
    added = results["scheduler_cost"]["added_p50_ms"]
    return {
        "interactive_max": {
            "goal": f"interactive latency <= one generation + 1 s ({limit:.2f} s), max",
            "figure": f"{via['max']:.2f} s",
            "met": via["max"] <= limit,
        },
        "speedup": {
            "goal": f">= {SPEEDUP_GOAL:g}x better than Ollama's FIFO (p50)",
            "figure": f"{speedup:.1f}x",
            "met": speedup >= SPEEDUP_GOAL,
        },
        "fairness": {
            "goal": f"two saturating keys finish within {FAIRNESS_LIMIT:.0%} of each other"
            " (the worse arrival)",
            "figure": f"{spread:.1%} ({ARRIVALS[worst['arrival']]})",
            "met": spread <= FAIRNESS_LIMIT,
        },
        "scheduler_cost": {
            "goal": f"scheduler cost with an empty queue <= {ADDED_P50_LIMIT_MS} ms added p50",
            "figure": f"{added:+.3f} ms",
            "met": added <= ADDED_P50_LIMIT_MS,
        },
    }


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _counts(counts: dict) -> str:
    return ", ".join(f"{n} x {status}" for status, n in sorted(counts.items()))


def markdown(results: dict) -> str:
    config, found = results["config"], results["goals"]
    direct, via, sat = results["direct"], results["gateway"], results["saturating"]
    cost = results["scheduler_cost"]
    gen = results["one_generation_s"]

    def side(name: str, part: dict) -> str:
        s = part["interactive_s"]
        up = part["upstream"]
        return (
            f"| {name} | {s['p50']:.2f} s | {s['max']:.2f} s | {part['batch_last_end_s']:.1f} s "
            f"| {up['max_running']} | {_counts(part['interactive_statuses'])}; "
            f"{_counts(part['batch_statuses'])} |"
        )

    lines = [
        f"One long generation ({config['long_tokens']} tokens, {config['token_delay'] * 1000:g} ms"
        f" apart) takes {gen:.2f} s alone. The development Ollama runs {PARALLEL} at once"
        f" (`parallel`), first come first served beyond. {config['batch_streams']} batch streams"
        f" at once, then, {INTERACTIVE_DELAY:g} s later, {config['interactive']} interactive"
        f" non-streamed requests of {config['short_tokens']} tokens at once:",
        "",
        "| | interactive p50 | interactive max | last batch stream done | upstream peak "
        "| statuses (interactive; batch) |",
        "|---|---|---|---|---|---|",
        side("direct (Ollama's FIFO)", direct),
        side(f"gateway (`OLLAMA_NUM_PARALLEL={PARALLEL}`, batch key + interactive key)", via),
        "",
        f"Two keys, {config['saturating']} long non-streamed requests each at once, directly and"
        " through the gateway (key A's and B's requests on the development Ollama directly"
        " carry no key); a key is done when its last answer arrives:",
        "",
        "| | arrival | key A done (median answer) | key B done (median answer) | spread "
        "| upstream peak | statuses (A; B) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {side} | {ARRIVALS[arrival]}"
            f" | {run['a']['finish_s']:.2f} s ({run['a']['median_end_s']:.2f} s)"
            f" | {run['b']['finish_s']:.2f} s ({run['b']['median_end_s']:.2f} s)"
            f" | {run['spread']:.1%} | {run['upstream']['max_running']}"
            f" | {_counts(run['a']['statuses'])}; {_counts(run['b']['statuses'])} |"
            for side, part in (("direct (FIFO)", results["saturating_direct"]), ("gateway", sat))
            for arrival, run in part.items()
            if arrival != "arrival"
        ),
        "",
        f"Scheduler cost: {cost['requests']:,} sequential `POST /api/generate` per side"
        f" (5 tokens, no delay), in {config['rounds']} alternating blocks, through two gateways"
        f" side by side:",
        "",
        "| | p50 | p95 | p99 |",
        "|---|---|---|---|",
        *(
            f"| {label} | {cost['ms'][name]['p50']:.3f} ms | {cost['ms'][name]['p95']:.3f} ms"
            f" | {cost['ms'][name]['p99']:.3f} ms |"
            for name, label in (
                ("no_queue", "`OLLAMA_NUM_PARALLEL` unset"),
                ("queue", f"`OLLAMA_NUM_PARALLEL={PARALLEL}`"),
            )
        ),
        "",
        "Added p50 per block: "
        + ", ".join(f"{a:+.3f} ms" for a in cost["added_p50_per_round_ms"])
        + ".",
        "",
        "| goal | figure | |",
        "|---|---|---|",
        *(f"| {g['goal']} | {g['figure']} | {_verdict(g['met'])} |" for g in found.values()),
    ]
    return "\n".join(lines) + "\n"


def section(results: dict) -> str:
    machine = results["machine"]
    return f"""{SECTION}

The sharing scenario of issue 12 (`bench/sharing.py`): the development Ollama directly, then the
gateway (production gunicorn configuration, 2 workers, PostgreSQL on a fresh database) with
`OLLAMA_NUM_PARALLEL={PARALLEL}` in front of it, in one run.

Latest run: {results["started_at"]}, {results["duration_s"]:.0f} s, load average
{" / ".join(f"{v:g}" for v in machine["load_average_start"])} at the start.

```sh
{results["command"]}
```

Machine: {machine["nproc"]} CPUs ({machine["cpu_model"]}), {machine["memory_gib"]} GiB memory,
Linux {machine["kernel"]}, Python {machine["python"]}, PostgreSQL {machine["postgresql"]}; the
clients, the development Ollama, PostgreSQL and the gateways share those cores.

{markdown(results)}
Notes:

- Interactive requests through the gateway wait for the next free slot: the first batch
  generations end about one generation after they started, and the interactive key, with none
  running, goes before the batch key's waiting streams. Directly, they wait for all
  {results["config"]["batch_streams"]}.
- Two saturating keys: when key A's requests arrive first, A takes both free slots before anything
  waits (no queue decision is involved); from then on the keys alternate, so A finishes one
  generation before B, 1/{results["config"]["saturating"]} of the run: the figure sits at the
  10 % limit by construction (directly, FIFO: A finishes in half the time, 50 %).
- Scheduler cost: the two statements (`gateway_queue_enter` before contacting Ollama,
  `gateway_queue_release` after the answer) took about 0.11 ms each from a plain client when
  measured by hand (2026-12-05); the rest of the added time is on the gateway's side of those
  round trips: see [performance.md](performance.md#issue-12-sharing-the-gpu).
- Full results: `bench/results/sharing.json` (not committed); knobs: `python -m bench.sharing
  --help`.
"""


def write(results: dict, *, write_docs: bool) -> None:
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if write_docs:
        text = DOCS.read_text()
        pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
        new = section(results)
        if pattern.search(text):
            text = pattern.sub(lambda _: new + "\n", text, count=1).rstrip("\n") + "\n"
        else:
            text = text.rstrip("\n") + "\n\n" + new
        DOCS.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    started = time.monotonic()
    results: dict = {
        "command": " ".join(
            ["python -m bench.sharing", shlex.join(sys.argv[1:] if argv is None else argv)]
        ).strip(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {"workers": 2, "parallel": PARALLEL, **vars(args)},
        "machine": {**system.machine(), "load_average_start": system.load_average()},
    }
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.glob("sharing-*.log"):
        old.unlink()
    _run(args, results)
    results["machine"]["load_average_end"] = system.load_average()
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["goals"] = goals(results)
    write(results, write_docs=args.write_docs)
    print(markdown(results))
    _say(f"done in {results['duration_s']:.0f} s: {RESULTS_JSON}")


if __name__ == "__main__":
    main()
