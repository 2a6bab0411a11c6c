"""Breaking things on purpose, under the production server: the database going away and
coming back, SIGTERM with streams in flight, and a mixed load across two processes."""

import concurrent.futures
import contextlib
import json
import signal
import socket
import threading
import time

import pytest
import requests
from django.db import connection

from testsupport import bearer, free_port, start_gunicorn
from usage.models import UsageRecord


class TcpProxy:
    """A loopback TCP relay that can be cut and restored: the database 'going away'."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = free_port()
        self.sockets: list[socket.socket] = []
        self.listener = None

    def start(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        return self

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, target):
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            TcpProxy._shut(source, target)

    @staticmethod
    def _shut(*sockets):
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self):
        # shutdown() first: close() alone does not wake a thread blocked in accept().
        self._shut(self.listener, *self.sockets)
        self.listener.close()
        self.sockets.clear()


def wait_until(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="a database server to lose: PostgreSQL only"
)
def test_database_outage_fails_closed_and_recovers(transactional_db, fake_ollama_server, make_key):
    db = connection.settings_dict
    proxy = TcpProxy(int(db["PORT"] or 5432)).start()
    port = free_port()
    gateway = start_gunicorn(
        port,
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@127.0.0.1:{proxy.port}/{db['NAME']}",
        OLLAMA_BASE_URL=fake_ollama_server.url,
        DB_POOL_TIMEOUT="2",
        DB_CONNECT_TIMEOUT="2",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _, raw = make_key()
        assert (
            requests.get(f"{url}/api/version", headers=bearer(raw), timeout=10).status_code == 200
        )
        proxy.cut()
        started = time.monotonic()
        down = requests.get(f"{url}/api/version", headers=bearer(raw), timeout=30)
        assert time.monotonic() - started < 5
        assert down.status_code == 503
        assert down.json() == {"error": "The gateway's database is unavailable."}
        health = requests.get(f"{url}/health", timeout=30)
        assert health.status_code == 503
        assert health.json() == {"status": "unavailable", "database": "unreachable", "ollama": "ok"}
        proxy.start()  # the database is back, on the same address
        assert wait_until(
            lambda: (
                requests.get(f"{url}/api/version", headers=bearer(raw), timeout=10).status_code
                == 200
            )
        )
        # (/health answers from a cache of a few seconds: the outage may still be in it.)
        assert wait_until(lambda: requests.get(f"{url}/health", timeout=10).status_code == 200)
    finally:
        gateway.terminate()
        gateway.wait(timeout=20)
        proxy.cut()


def test_sigterm_lets_streams_in_flight_finish(transactional_db, fake_ollama_server, make_key):
    fake_ollama_server.reset()
    fake_ollama_server.configure(tokens=30, token_delay=0.05)
    port = free_port()
    gateway = start_gunicorn(
        port, OLLAMA_BASE_URL=fake_ollama_server.url, GUNICORN_GRACEFUL_TIMEOUT="20"
    )
    url = f"http://127.0.0.1:{port}"
    key, raw = make_key()
    payload = {"model": "llama3.2", "prompt": "long answer"}

    def stream(_):
        with requests.post(
            f"{url}/api/generate", json=payload, headers=bearer(raw), stream=True, timeout=30
        ) as response:
            return [json.loads(line) for line in response.iter_lines() if line]

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            streams = [pool.submit(stream, i) for i in range(50)]
            assert wait_until(lambda: len(fake_ollama_server.requests) >= 50, timeout=10)
            gateway.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(requests.ConnectionError):
                requests.get(f"{url}/api/version", headers=bearer(raw), timeout=5)
            results = [s.result(timeout=30) for s in streams]
        assert all(lines[-1]["done"] is True for lines in results)
        assert gateway.wait(timeout=30) == 0
        records = UsageRecord.objects.filter(key=key, route="/api/generate")
        assert records.count() == 50
        assert set(records.values_list("outcome", flat=True)) == {"ok"}
    finally:
        if gateway.poll() is None:
            gateway.kill()
        fake_ollama_server.reset()


def test_mixed_load_across_two_processes(served_pair, fake_ollama_server, make_key):
    """Successes, upstream errors, client disconnects and 429s: exact limits, one record each."""
    key, raw = make_key(rate_limit=60)
    fake_ollama_server.configure(tokens=20, token_delay=0.01)
    kinds = ["ok", "missing-model", "disconnect"] * 40

    def send(i_kind):
        i, kind = i_kind
        base = served_pair[i % 2]
        model = "no-such-model" if kind == "missing-model" else "llama3.2"
        stream = kind == "disconnect"
        response = requests.post(
            f"{base}/api/generate",
            json={"model": model, "prompt": "x", "stream": stream},
            headers=bearer(raw),
            stream=stream,
            timeout=30,
        )
        status = response.status_code
        if stream and status == 200:
            next(response.iter_lines())
        response.close()
        return status

    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        statuses = list(pool.map(send, enumerate(kinds)))
    assert statuses.count(429) == len(kinds) - 60
    assert all(s in (200, 404, 429) for s in statuses)
    assert wait_until(lambda: UsageRecord.objects.filter(key=key).count() == len(kinds))
    time.sleep(0.5)  # nothing is recorded twice, even late
    assert UsageRecord.objects.filter(key=key).count() == len(kinds)
    outcomes = set(UsageRecord.objects.filter(key=key).values_list("outcome", flat=True))
    assert {"ok", "bad_request", "rate_limited"} <= outcomes
