"""`python -m bench.choices`: the measurements behind two choices of the event-loop core.

1. The HTTP client to Ollama: aiohttp against httpx, the same requests to the same development
   Ollama from one process (concurrency 16), both in their async forms.
2. The gunicorn worker: uvicorn's (ours, ollama_gateway.server.GatewayWorker) against
   gunicorn's own ASGI worker, one worker each, the same application and database.

Each is run twice, alternating, in one sitting; figures print as they come. Loopback only.
"""

import asyncio
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time

import aiohttp
import httpx

from bench.processes import ROOT
from devollama.server import FakeOllama

REQUESTS, CONCURRENCY = 2000, 16
BODY = {"model": "llama3.2", "prompt": "x", "stream": False}
WORKERS = ("ollama_gateway.server.GatewayWorker", "gunicorn.workers.gasgi.ASGIWorker")


async def _drive(send, n: int) -> list[float]:
    latencies, gate = [], asyncio.Semaphore(CONCURRENCY)

    async def one():
        async with gate:
            started = time.perf_counter()
            await send()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(n)))
    return latencies


async def with_aiohttp(url: str, n: int, headers=None) -> list[float]:
    async with aiohttp.ClientSession(headers=headers) as session:

        async def send():
            async with session.post(url + "/api/generate", json=BODY) as answer:
                await answer.read()
                assert answer.status == 200, answer.status

        await _drive(send, 100)
        return await _drive(send, n)


async def with_httpx(url: str, n: int) -> list[float]:
    async with httpx.AsyncClient() as client:

        async def send():
            (await client.post(url + "/api/generate", json=BODY)).raise_for_status()

        await _drive(send, 100)
        return await _drive(send, n)


def clients(fake: FakeOllama) -> None:
    for name, run in (("aiohttp", with_aiohttp), ("httpx", with_httpx)) * 2:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        asyncio.run(run(fake.url, REQUESTS))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        print(
            f"client {name}: {REQUESTS / wall:,.0f} req/s, {cpu / REQUESTS * 1e6:,.0f} us CPU per "
            "request (this process, the development Ollama's threads included)"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workers(fake: FakeOllama, database_url: str) -> None:
    key = "ollama-" + secrets.token_urlsafe(32)
    for worker in WORKERS * 2:
        port = _free_port()
        environment = {
            **os.environ,
            "SECRET_KEY": "bench",
            "DATABASE_URL": database_url,
            "OLLAMA_BASE_URL": fake.url,
            "PORT": str(port),
            "GUNICORN_WORKERS": "1",
            "DEMO_ADMIN_KEY": key,
            "DEFAULT_RATE_LIMIT_ADMIN": "100000000",
            "LOG_LEVEL": "WARNING",
            "GATEWAY_ENV_FILE": "",
        }
        argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-k", worker]
        process = subprocess.Popen(
            [*argv, "ollama_gateway.asgi"],
            cwd=ROOT,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            started = time.perf_counter()
            latencies = asyncio.run(
                with_aiohttp(
                    f"http://127.0.0.1:{port}", REQUESTS, {"Authorization": f"Bearer {key}"}
                )
            )
            rate = REQUESTS / (time.perf_counter() - started)
            p50 = statistics.median(latencies) * 1000
            print(f"worker {worker}: {rate:,.0f} req/s, p50 {p50:.1f} ms (1 worker)")
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    database_url = os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ollama_gateway_choices"
    )
    name = database_url.rsplit("/", 1)[1]
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    import psycopg

    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    with FakeOllama() as fake:
        clients(fake)
        workers(fake, database_url)


if __name__ == "__main__":
    main()
