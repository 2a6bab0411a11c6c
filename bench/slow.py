"""Slow clients and a slow model: what they cost everyone else.

- `slow_clients`: connections that trickle their request headers, and others that trickle a
  request body, one byte at a time and without a key (an attacker needs none), reopened when
  the gateway cuts them, for a bounded time; meanwhile another key makes ordinary requests,
  whose latency is the figure.
- `slow_model`: non-streamed requests that wait on a model answering after several seconds;
  meanwhile `/health` and an admin `GET /api/keys` are timed, and every status is counted
  (none may be 503: the database pool must not be held while Ollama thinks).

Everything targets 127.0.0.1; every loop is bounded in count and in time.
"""

import asyncio
import contextlib
import json
import threading
import time

from bench.client import GENERATE_BODY, Client
from bench.quantiles import summarize

HOST = "127.0.0.1"
# Sent one byte at a time from the first: never complete before the header deadline.
_HEADER_REQUEST = (
    b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 48\r\nX-Slow: " + b"a" * 4000 + b"\r\n\r\n"
)
# Complete headers at once, then a 1 MB body one byte at a time.
_BODY_HEAD = (
    b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000000\r\n\r\n"
)
_BODY = b'{"model":"llama3.2","prompt":"' + b"a" * 999_000


class Sampler:
    """Sequential calls in a thread, round-robin over `calls`, until stopped or `limit` calls.

    Each call is timed; a call that fails (timeout, reset) counts under its error's name with
    its elapsed time, so a hung call weighs in the percentiles instead of vanishing.
    """

    def __init__(self, calls: dict[str, tuple[Client, str, str, bytes | None]], *, limit: int):
        self.calls = calls
        self.limit = limit
        self.times: dict[str, list[float]] = {name: [] for name in calls}
        self.statuses: dict[str, dict[str, int]] = {name: {} for name in calls}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        done = 0
        while not self._stop.is_set() and done < self.limit:
            for name, (client, method, path, body) in self.calls.items():
                started = time.perf_counter()
                try:
                    status = str(client.call(method, path, body).status)
                except OSError as exc:
                    client.close()
                    status = type(exc).__name__
                self.times[name].append((time.perf_counter() - started) * 1000)
                self.statuses[name][status] = self.statuses[name].get(status, 0) + 1
                done += 1
            self._stop.wait(0.02)

    def summary(self) -> dict:
        return {
            name: {"ms": summarize(self.times[name]), "statuses": self.statuses[name]}
            for name in self.calls
        }


async def _trickle(
    port: int, head: bytes, drip: bytes, *, deadline: float, interval: float, stats: dict
) -> None:
    """One slow connection after another until `deadline`: `head` at once, then `drip` a byte
    every `interval` seconds; when the server answers or closes, a new connection."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            stats["opened"] += 1
            if head:
                writer.write(head)
            for i in range(len(drip)):
                if loop.time() >= deadline:
                    break
                writer.write(drip[i : i + 1])
                await writer.drain()
                answer = None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        answer = await reader.read(4096)
                if answer is None:
                    continue
                if answer:
                    status = answer[9:12].decode(errors="replace")
                    stats["answered"][status] = stats["answered"].get(status, 0) + 1
                else:
                    stats["closed_by_server"] += 1
                break
        except OSError as exc:
            name = type(exc).__name__
            stats["errors"][name] = stats["errors"].get(name, 0) + 1
            await asyncio.sleep(interval)
        finally:
            if writer is not None:
                writer.close()


async def _tricklers(port: int, *, headers: int, bodies: int, seconds: float, interval: float):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    kinds = {"headers": (headers, b"", _HEADER_REQUEST), "bodies": (bodies, _BODY_HEAD, _BODY)}
    stats = {
        kind: {"connections": n, "opened": 0, "closed_by_server": 0, "answered": {}, "errors": {}}
        for kind, (n, _, _) in kinds.items()
    }
    tasks = [
        _trickle(port, head, drip, deadline=deadline, interval=interval, stats=stats[kind])
        for kind, (n, head, drip) in kinds.items()
        for _ in range(n)
    ]
    # Bounded twice: each trickle stops at the deadline, and the whole group soon after.
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 30)
    return stats


def slow_clients(
    port: int, key: str, *, headers: int, bodies: int, seconds: float, interval: float = 1.0
) -> dict:
    """`headers` + `bodies` trickling connections for `seconds`, while `key` makes
    non-streamed requests one after another (timed alone first, to compare, then during)."""

    def sampler() -> Sampler:
        client = Client(port, key=key, timeout=10.0)
        return Sampler({"generate": (client, "POST", "/api/generate", GENERATE_BODY)}, limit=10**6)

    with sampler() as alone:
        time.sleep(3)
    result: dict = {"alone": alone.summary()["generate"]}
    during = sampler()
    started = time.monotonic()

    async def run():
        load = asyncio.ensure_future(
            _tricklers(port, headers=headers, bodies=bodies, seconds=seconds, interval=interval)
        )
        await asyncio.sleep(min(3.0, seconds / 4))  # every trickle connection open first
        with during:
            while not load.done():
                await asyncio.sleep(0.1)
        return load.result()

    result["tricklers"] = asyncio.run(run())
    result.update(
        during=during.summary()["generate"],
        seconds=round(time.monotonic() - started, 1),
        interval_s=interval,
    )
    return result


def slow_model(port: int, key: str, *, requests: int, ttft: float, control: Client) -> dict:
    """`requests` non-streamed generates at once on a model that answers after `ttft` seconds;
    meanwhile /health and an admin `GET /api/keys` are timed one after the other."""
    control.call("POST", "/_fake/config", json.dumps({"ttft": ttft}).encode())
    calls = {
        "health": (Client(port, timeout=10.0), "GET", "/health", None),
        "admin_keys": (Client(port, key=key, timeout=10.0), "GET", "/api/keys", None),
    }
    sampler = Sampler(calls, limit=10**6)
    try:

        async def run():
            tasks = [
                asyncio.ensure_future(_one_request(port, key, timeout=ttft + 60))
                for _ in range(requests)
            ]
            await asyncio.sleep(1.0)  # every request is waiting on the model
            with sampler:
                done, pending = await asyncio.wait(tasks, timeout=ttft + 90)
            for task in pending:
                task.cancel()
            return [task.result() for task in done]

        started = time.monotonic()
        answers = asyncio.run(run())
        wall = time.monotonic() - started
    finally:
        control.call("POST", "/_fake/config", json.dumps({"ttft": 0.0}).encode())
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "requests": requests,
        "ttft_s": ttft,
        "wall_s": round(wall, 1),
        "statuses": statuses,
        "slow_ms": summarize(seconds * 1000 for _, seconds in answers),
        **sampler.summary(),
    }


async def _one_request(port: int, key: str, *, timeout: float) -> tuple[str, float]:
    """One non-streamed generate on a connection of its own: (status or error, seconds)."""
    started = time.monotonic()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(
                b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n"
                + f"Authorization: Bearer {key}\r\n".encode()
                + f"Content-Length: {len(GENERATE_BODY)}\r\n\r\n".encode()
                + GENERATE_BODY
            )
            answer = await reader.read()
            status = answer[9:12].decode(errors="replace") or "closed"
    except TimeoutError:
        status = "timeout"
    except OSError as exc:
        status = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    return status, time.monotonic() - started
