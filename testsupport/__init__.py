"""What the tests share besides fixtures: live gateways (uvicorn in the test process, gunicorn
as in production), waiting for usage records, free ports. Fixtures are in conftest.py."""

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bearer(raw: str) -> dict:
    """The header a client sends its key in."""
    return {"Authorization": f"Bearer {raw}"}


class InProcessGateway:
    """The ASGI application under uvicorn (the production worker's protocol), in a thread of
    the test process: settings changed by a test apply to it at once."""

    def __init__(self):
        import uvicorn

        from ollama_gateway.asgi import application
        from ollama_gateway.server import GatewayHttpToolsProtocol

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            application,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            # asyncio's loop (gunicorn's workers run uvloop): tests can instrument it.
            loop="asyncio",
            log_level="warning",
            http=GatewayHttpToolsProtocol,
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="gateway", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the in-process gateway did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=20)


def suite_database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


_started: list[subprocess.Popen] = []


@atexit.register
def _stop_survivors() -> None:
    """A test that failed before stopping its gunicorn leaves it running, holding a port and
    database connections: none outlives the test run."""
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_gunicorn(port: int, **env) -> subprocess.Popen:
    """The gateway under its production gunicorn configuration, on the test database."""
    environment = {
        **os.environ,
        "DATABASE_URL": suite_database_url(),
        "PORT": str(port),
        "GUNICORN_WORKERS": "2",
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
        "LOG_LEVEL": "WARNING",
        # Several of these run beside the in-process gateway for the whole session: small pools
        # that give burst connections back keep the suite far below PostgreSQL's 100.
        "DB_POOL_MAX_SIZE": "5",
        "DB_POOL_MAX_IDLE": "2",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ollama_gateway.asgi"],
        cwd=ROOT,
        env=environment,
    )
    _started.append(process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("gunicorn exited at start") from None
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gunicorn did not start listening")


def wait_for_record(**filters):
    """The one usage record matching `filters`, once written (streams write theirs at the end)."""
    records = wait_for_records(1, **filters)
    assert len(records) == 1, f"expected one usage record matching {filters}, got {records}"
    return records[0]


def wait_for_records(count: int, timeout: float = 10.0, **filters) -> list:
    """Exactly `count` usage records matching `filters`, oldest first. Records are written
    once the answer has gone out, a moment after the client has it: wait for them, then make
    sure no extra one follows."""
    from usage.models import UsageRecord

    records = UsageRecord.objects.filter(**filters).order_by("started_at")
    deadline = time.monotonic() + timeout
    while records.count() < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    return list(records)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def gunicorn_serving(fake):
    """A gunicorn gateway (2 workers) in front of `fake`, stopped on exit; yields its URL."""
    port = free_port()
    process = start_gunicorn(port, OLLAMA_BASE_URL=fake.url)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=20)


def settle(timeout: float = 3.0) -> None:
    """Wait until the gateways' work after the answers (usage records) is done: the in-process
    server's background tasks, and on PostgreSQL any statement another connection still runs
    on the test database. Emptying the tables under a record being written can deadlock."""
    from django.db import connection

    from ollama_gateway import runtime

    deadline = time.monotonic() + timeout
    time.sleep(0.05)
    while runtime._tasks and time.monotonic() < deadline:
        time.sleep(0.02)
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.02)


def content_of(response) -> bytes:
    """A Django test client response's whole body, streamed (sync or async) or not. An async
    stream is read through async_to_sync, so that its database reads run in this thread (the
    test's transaction)."""
    if not response.streaming:
        return response.content
    if not response.is_async:
        return b"".join(response.streaming_content)
    from asgiref.sync import async_to_sync

    async def drain(content):
        return b"".join(
            [bytes(part, "utf-8") if isinstance(part, str) else part async for part in content]
        )

    return async_to_sync(drain)(response.streaming_content)
