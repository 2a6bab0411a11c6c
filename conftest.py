"""Fixtures shared by every app's tests: keys, the development Ollama, live gateways (Django's
live server and gunicorn) and a headless chromium."""

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from keys.services import api_key_create


@pytest.fixture
def make_key(db):
    """Create a key through the service; returns (ApiKey, raw key)."""

    def make(role="user", **fields):
        fields.setdefault("name", f"test-{role}")
        return api_key_create(role=role, **fields)

    return make


@pytest.fixture
def admin_key(make_key):
    return make_key("admin")


@pytest.fixture
def user_key(make_key):
    return make_key("user")


@pytest.fixture
def client_for():
    """A DRF test client sending `Authorization: Bearer <raw>`."""

    def make(raw):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return make


@pytest.fixture(scope="session")
def fake_ollama_server():
    from devollama.server import FakeOllama

    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def fake_ollama(fake_ollama_server, settings):
    """The development Ollama, reset, with the gateway pointed at it."""
    fake_ollama_server.reset()
    settings.OLLAMA_BASE_URL = fake_ollama_server.url
    yield fake_ollama_server
    fake_ollama_server.reset()


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


@pytest.fixture(scope="session")
def asgi_gateway(django_db_setup, django_db_blocker):
    with InProcessGateway() as server:
        yield server


@pytest.fixture
def gateway(asgi_gateway, transactional_db, fake_ollama):
    """The gateway served over real HTTP (uvicorn, in this process) in front of the fake."""
    return asgi_gateway.url


def _test_database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or "postgres"
    return f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_gunicorn(port: int, **env) -> subprocess.Popen:
    """The gateway under its production gunicorn configuration, on the test database."""
    environment = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "PORT": str(port),
        "GUNICORN_WORKERS": "2",
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ollama_gateway.asgi"],
        cwd=Path(__file__).parent,
        env=environment,
    )
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


@pytest.fixture(scope="session")
def gunicorn_gateway(django_db_setup, django_db_blocker, fake_ollama_server):
    """A gunicorn gateway in front of the session's development Ollama."""
    with gunicorn_serving(fake_ollama_server) as url:
        yield url


@pytest.fixture
def served(gunicorn_gateway, transactional_db, fake_ollama_server):
    """The gunicorn gateway, with a fresh development Ollama state for this test."""
    fake_ollama_server.reset()
    yield gunicorn_gateway
    fake_ollama_server.reset()


@pytest.fixture(scope="session")
def second_gunicorn_gateway(gunicorn_gateway, fake_ollama_server):
    """Another gateway process group on the same database: limits must hold across both."""
    with gunicorn_serving(fake_ollama_server) as url:
        yield url


@pytest.fixture
def served_pair(served, second_gunicorn_gateway):
    return served, second_gunicorn_gateway


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "about:blank",
]


# --- Headless chromium over the DevTools protocol --------------------------------------------


class Chromium:
    """One headless chromium tab, driven through `--remote-debugging-pipe`.

    The protocol's messages are JSON, NUL-terminated, read by the browser on fd 3 and written
    on fd 4: a few lines of stdlib instead of a websocket client or a browser-automation
    package. The session cookie is set through the protocol, so the product needs no test hook.
    """

    def __init__(self, profile: Path, timeout: float = 20):
        self.timeout = timeout
        to_browser, self._send = os.pipe()
        self._receive, from_browser = os.pipe()
        # Moved above fd 4, so that placing them on 3 and 4 cannot overwrite one another.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        # Protocol events (Network.requestWillBeSent...), in order, once a domain is enabled.
        self.events: list[dict] = []
        # posix_spawn places the pipe ends on fds 3 and 4 in the browser; unlike Popen's
        # preexec_fn, it is safe while the live server's threads run.
        self.pid = os.posix_spawn(
            CHROMIUM,
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, ends[0], 3),
                (os.POSIX_SPAWN_DUP2, ends[1], 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        for fd in ends:
            os.close(fd)
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        except (RuntimeError, OSError):
            self.close()
            raise
        self.session = attached["sessionId"]

    def call(self, method: str, *, session: str | None = None, **params) -> dict:
        """Send one command and wait for its answer (events in between go to `events`)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._receive], [], [], deadline - time.monotonic())
                chunk = os.read(self._receive, 1 << 20) if ready else b""
                if not chunk:
                    raise RuntimeError(f"chromium did not answer {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if "method" in answer:
                self.events.append(answer)
            elif answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def open(self, url: str, *, cookies: dict | None = None, width=1280, height=1800) -> None:
        """Load `url` with `cookies` set for its site, and wait until it has loaded."""
        for name, value in (cookies or {}).items():
            self.page("Network.setCookie", name=name, value=value, url=url)
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        # Screenshots of the whole page keep the full width.
        self.page("Emulation.setScrollbarsHidden", hidden=True)
        navigation = self.page("Page.navigate", url=url)
        assert not navigation.get("errorText"), navigation
        deadline = time.monotonic() + self.timeout
        while self.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, f"{url} did not finish loading"
            time.sleep(0.05)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Poll `expression` until it is truthy (pages that render after fetching data)."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)
        return value

    def screenshot(self, path: Path) -> tuple[int, int]:
        """Save the whole page as PNG; returns its (width, height) read from the PNG header."""
        data = base64.b64decode(
            self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        )
        path.write_bytes(data)
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        return struct.unpack(">II", data[16:24])

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):  # Already gone: nothing to close.
            self.call("Browser.close")
        deadline = time.monotonic() + 10
        while not os.waitpid(self.pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._send)
        os.close(self._receive)


@pytest.fixture
def chromium(tmp_path):
    """A headless chromium tab; skipped where chromium is absent, unless REQUIRE_BROWSER=1."""
    if not shutil.which(CHROMIUM):
        message = f"{CHROMIUM} is not installed"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {message}: install the `chromium` package.")
        pytest.skip(message)
    browser = Chromium(tmp_path / "chromium-profile")
    yield browser
    browser.close()
