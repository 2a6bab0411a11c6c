"""Starting and stopping what is measured: the development Ollama, the gateway under gunicorn,
nginx as a plain reverse proxy (the baseline of what any proxy adds), and the benchmark's own
PostgreSQL database.

Every process starts in its own process group and is stopped with its whole group when the
`with` block ends, however it ends.
"""

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bench.client import Client
from bench.system import children

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 20.0  # seconds a stopped process group gets before SIGKILL


@dataclass(frozen=True)
class Server:
    """A started server: its port and the pid of its main process (gunicorn's master)."""

    port: int
    pid: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _process_group(
    argv: list[str],
    *,
    env: dict,
    log: Path,
    ready: Callable[[subprocess.Popen], bool],
    timeout: float,
) -> Iterator[subprocess.Popen]:
    """Run `argv` in a new process group, logging to `log`, until `ready(process)` holds."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not _ready(ready, process):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{argv[2]} exited at start (status {process.returncode}): {log}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2]} was not ready after {timeout:.0f} s: {log}")
            time.sleep(0.1)
        yield process
    finally:
        _stop_group(process)


def _ready(check: Callable[[subprocess.Popen], bool], process: subprocess.Popen) -> bool:
    try:
        return check(process)
    except OSError:  # not listening yet
        return False


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the group (gunicorn finishes running requests), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT)
    # Workers that outlived their master would still hold the port.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _answers(port: int, path: str) -> bool:
    with Client(port, timeout=2.0) as client:
        return client.call("GET", path).status == 200


def _gateway_ready(port: int, workers: int, master: subprocess.Popen) -> bool:
    return len(children(master.pid)) >= workers and _answers(port, "/health")


@contextlib.contextmanager
def fake_ollama(*, log: Path) -> Iterator[Server]:
    """The development Ollama in fast mode (its defaults: 5 tokens, no delays)."""
    port = free_port()
    argv = [sys.executable, "-m", "devollama", "--port", str(port)]
    with _process_group(
        argv, env=dict(os.environ), log=log, ready=lambda _: _answers(port, "/"), timeout=30
    ) as process:
        yield Server(port, process.pid)


@contextlib.contextmanager
def gateway(*, env: dict, log: Path, workers: int = 2) -> Iterator[Server]:
    """The gateway under its production gunicorn configuration, with `env` (DATABASE_URL...).

    The master migrates the database before the workers start; ready once every worker is up
    and /health answers 200 (database and Ollama both reachable).
    """
    port = free_port()
    metrics_dir = tempfile.mkdtemp(prefix="bench-gateway-metrics-")
    environment = {
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "GUNICORN_WORKERS": str(workers),
        # Only shortens the stop at the end; nothing is running by then.
        "GUNICORN_GRACEFUL_TIMEOUT": "10",
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
    }
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ollama_gateway.asgi"]
    try:
        with _process_group(
            argv,
            env=environment,
            log=log,
            ready=functools.partial(_gateway_ready, port, workers),
            timeout=90,
        ) as process:
            yield Server(port, process.pid)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream ollama {{
        server 127.0.0.1:{upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        keepalive_requests 100000;
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx_available() -> bool:
    return shutil.which("nginx") is not None


@contextlib.contextmanager
def nginx(*, upstream: int, log: Path, workers: int = 2) -> Iterator[Server]:
    """nginx as a plain reverse proxy to 127.0.0.1:`upstream` (keep-alive upstream, no
    buffering), from a generated configuration in a temporary prefix, on loopback only."""
    port = free_port()
    prefix = tempfile.mkdtemp(prefix="bench-nginx-")
    conf = Path(prefix) / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(prefix=prefix, upstream=upstream, port=port, workers=workers)
    )
    argv = [
        shutil.which("nginx") or "nginx",
        "-e",
        f"{prefix}/error.log",
        "-c",
        str(conf),
        "-p",
        prefix,
    ]
    try:
        with _process_group(
            argv, env=dict(os.environ), log=log, ready=lambda _: _answers(port, "/"), timeout=30
        ) as process:
            yield Server(port, process.pid)
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def database_recreate(url: str) -> None:
    """Drop the database named in `url` (disconnecting its users) and create it empty."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def server_version(url: str) -> str:
    with psycopg.connect(url) as connection:
        return connection.execute("SHOW server_version").fetchone()[0]


def admin_key_create(
    *, env: dict, name: str = "bench", role: str = "admin", options: tuple = ()
) -> str:
    """A key (admin by default) with a limit no benchmark reaches, made by the documented
    command; `options` are more of its arguments (`--priority batch`...)."""
    command = [sys.executable, "manage.py", "createapikey", "--name", name, "--role", role]
    result = subprocess.run(
        [*command, "--rate-limit", "100000000", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # Log lines share stdout with the key (LOGGING sends everything there): take the key's line.
    return next(line for line in result.stdout.splitlines() if line.startswith("ollama-"))
