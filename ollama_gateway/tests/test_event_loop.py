"""The event-loop core: what a waiting request costs, slow and stalled clients, big bodies,
and records that survive a killed database connection or a SIGTERM."""

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests
from django.db import connection

from ollama_gateway import db, runtime
from testsupport import bearer, free_port, start_gunicorn, wait_for_records
from usage.models import UsageRecord

postgresql_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="the async pool serves PostgreSQL only"
)


def raw_request(port: int, data: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send `data` on a fresh connection; everything the server answered until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class LoopHops:
    """Counts work the serving loop hands to a thread (sync_to_async, to_thread, executors)."""

    def __init__(self, monkeypatch):
        self.count = 0
        loop = runtime._serving_loop
        original = loop.run_in_executor

        def counted(executor, func, *args):
            self.count += 1
            return original(executor, func, *args)

        monkeypatch.setattr(loop, "run_in_executor", counted)


@postgresql_only
@pytest.mark.parametrize("stream", [False, True])
def test_a_request_costs_two_pooled_statements_and_no_thread(
    gateway, user_key, fake_ollama, monkeypatch, stream
):
    auth = bearer(user_key[1])
    body = {"model": "llama3.2", "prompt": "hi", "stream": stream}
    # Warm up: the process's backend list and the key's "last used" are read/written once.
    assert requests.post(f"{gateway}/api/generate", json=body, headers=auth, timeout=10).ok
    wait_for_records(1)
    hops = LoopHops(monkeypatch)
    before = db.statements_sent
    answer = requests.post(f"{gateway}/api/generate", json=body, headers=auth, timeout=10)
    assert answer.status_code == 200 and answer.content
    wait_for_records(2)
    # The key lookup with its rate-limit count; the record with its rollups.
    assert db.statements_sent - before == 2
    # Refusals and unknown paths stay on the loop too.
    assert requests.post(f"{gateway}/api/generate", json=body, timeout=10).status_code == 401
    assert requests.get(f"{gateway}/api/nowhere", headers=auth, timeout=10).status_code == 404
    assert hops.count == 0


def test_slow_headers_are_cut_and_cost_others_nothing(gateway, user_key, settings):
    settings.REQUEST_HEADER_TIMEOUT = 1.0
    port = port_of(gateway)
    trickling = []
    for _ in range(100):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        trickling.append(sock)
    try:
        started = time.monotonic()
        answer = requests.get(f"{gateway}/api/version", headers=bearer(user_key[1]), timeout=5)
        assert answer.status_code == 200
        assert time.monotonic() - started < 1.0
        trickling[0].settimeout(5)
        answered = trickling[0].recv(1024)
        assert answered.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 3.0
    finally:
        for sock in trickling:
            sock.close()


def test_an_idle_connection_is_closed_after_the_header_deadline(gateway, settings):
    settings.REQUEST_HEADER_TIMEOUT = 0.5
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=5) as sock:
        # Told so (408) and closed by the server.
        assert sock.recv(1024).startswith(b"HTTP/1.1 408")
        assert sock.recv(1024) == b""
    assert time.monotonic() - started < 2.5


def test_oversized_headers_get_431_before_they_are_read_whole(gateway, user_key, settings):
    """One endless header, without a key: refused once it passes the cap, not buffered."""
    settings.REQUEST_HEADER_MAX_BYTES = 32 * 1024
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=5) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
        with contextlib.suppress(OSError):  # the server may close while we still send
            for _ in range(64):
                sock.sendall(b"a" * 16 * 1024)
        assert sock.recv(1024).startswith(b"HTTP/1.1 431")
    # Many small headers count alike; a request under the cap, body included, is served.
    many = "".join(f"X-H{i}: {'v' * 20}\r\n" for i in range(2000)).encode()
    head = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n"
    answer = raw_request(port_of(gateway), head + many)
    assert answer.startswith(b"HTTP/1.1 431")
    body = json.dumps({"model": "llama3.2", "prompt": "x" * 100_000, "stream": False}).encode()
    answer = requests.post(
        f"{gateway}/api/generate",
        data=body,
        headers={**bearer(user_key[1]), "X-Pad": "p" * 20_000},
        timeout=10,
    )
    assert answer.status_code == 200
    # A chunked body's trailer fields are headers too: an endless one is cut the same way.
    with socket.create_connection(("127.0.0.1", port_of(gateway)), timeout=5) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\n{\r\n0\r\nX-Trailer: "
        )
        with contextlib.suppress(OSError):
            for _ in range(256):
                sock.sendall(b"a" * 16 * 1024)
        try:
            closed = sock.recv(1024) == b""
        except ConnectionResetError:
            closed = True
        assert closed


def test_a_trickled_body_gets_408_in_the_route_shape(gateway, user_key, settings):
    settings.REQUEST_BODY_TIMEOUT = 1.0
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {user_key[1]}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    ).encode()
    started = time.monotonic()
    answer = raw_request(port_of(gateway), head)
    assert answer.startswith(b"HTTP/1.1 408")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["type"] == "api_error" and body["error"]["message"]  # OpenAI's shape
    assert time.monotonic() - started < 3.0


def test_chunked_bodies_are_read_and_capped(gateway, user_key, fake_ollama, settings):
    auth = bearer(user_key[1])
    body = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": False}).encode()

    def chunks(data, size=7):
        for i in range(0, len(data), size):
            yield data[i : i + size]

    answer = requests.post(f"{gateway}/api/generate", data=chunks(body), headers=auth, timeout=10)
    assert answer.status_code == 200, answer.text
    assert fake_ollama.requests[-1].body == body
    settings.MAX_REQUEST_BODY_BYTES = 1000
    big = json.dumps({"model": "llama3.2", "prompt": "x" * 5000}).encode()
    refused = requests.post(
        f"{gateway}/api/generate", data=chunks(big, 500), headers=auth, timeout=10
    )
    assert refused.status_code == 413
    assert "larger than 1000 bytes" in refused.json()["error"]
    declared = requests.post(f"{gateway}/api/generate", data=big, headers=auth, timeout=10)
    assert declared.status_code == 413


def test_a_client_that_stops_reading_is_cut_and_recorded(gateway, user_key, fake_ollama, settings):
    settings.CLIENT_WRITE_TIMEOUT = 1.0
    # About 60 MB of stream: more than the socket buffers on both sides can hold.
    fake_ollama.configure(tokens=400_000)
    body = json.dumps({"model": "llama3.2", "prompt": "hi"}).encode()
    head = (
        f"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {user_key[1]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port_of(gateway)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(head + body)
    try:
        (record,) = wait_for_records(1, timeout=20)
        assert record.outcome == "client_closed"
        assert record.completion_tokens and record.completion_tokens < 400_000
        assert fake_ollama.wait_for_disconnect(timeout=10)
    finally:
        sock.close()


def test_a_client_gone_while_the_model_loads_cancels_at_once(gateway, user_key, fake_ollama):
    fake_ollama.configure(ttft=4.0, tokens=50, token_delay=0.05)
    body = json.dumps({"model": "llama3.2", "prompt": "hi"}).encode()
    head = (
        f"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {user_key[1]}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port_of(gateway))) as sock:
        sock.sendall(head + body)
        time.sleep(0.5)
    gone = time.monotonic()
    (record,) = wait_for_records(1, timeout=3)
    # Recorded long before the model would have answered: the wait was cancelled.
    assert time.monotonic() - gone < 2.0
    assert record.outcome == "client_closed"
    # Ollama's connection was closed too: its stream, once the model is loaded, meets a closed
    # socket.
    assert fake_ollama.wait_for_disconnect(timeout=8)


@postgresql_only
def test_a_record_survives_a_killed_database_connection(gateway, user_key, fake_ollama):
    auth = bearer(user_key[1])
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    assert requests.post(f"{gateway}/api/generate", json=body, headers=auth, timeout=10).ok
    wait_for_records(1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchone()[0] >= 1
    answers = [
        requests.post(f"{gateway}/api/generate", json=body, headers=auth, timeout=10)
        for _ in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(wait_for_records(4)) == 4


@postgresql_only
def test_waiting_on_a_slow_model_holds_no_database_connection(
    transactional_db, fake_ollama_server, make_key
):
    """60 non-streamed requests wait on a model that answers after 3 s, with a pool of two
    connections per worker: nobody gets 503, and the admin API answers meanwhile."""
    _, user = make_key("user", rate_limit=1000)
    _, admin = make_key("admin")
    fake_ollama_server.reset()
    fake_ollama_server.configure(ttft=3.0)
    port = free_port()
    process = start_gunicorn(port, OLLAMA_BASE_URL=fake_ollama_server.url, DB_POOL_MAX_SIZE="2")
    url = f"http://127.0.0.1:{port}"
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    try:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            waiting = [
                pool.submit(
                    requests.post,
                    f"{url}/api/generate",
                    json=body,
                    headers=bearer(user),
                    timeout=30,
                )
                for _ in range(60)
            ]
            time.sleep(1.0)
            started = time.monotonic()
            assert requests.get(f"{url}/api/keys", headers=bearer(admin), timeout=5).ok
            assert requests.get(f"{url}/health", timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
            statuses = [f.result().status_code for f in waiting]
        assert statuses == [200] * 60
    finally:
        fake_ollama_server.reset()
        process.terminate()
        process.wait(timeout=30)


def test_sigterm_records_the_streams_it_has_to_cut(transactional_db, fake_ollama_server, make_key):
    """Streams that outlive the graceful timeout are cut, and still recorded."""
    _, user = make_key("user")
    fake_ollama_server.reset()
    fake_ollama_server.configure(tokens=200, token_delay=0.1)  # 20 s each
    port = free_port()
    process = start_gunicorn(
        port, OLLAMA_BASE_URL=fake_ollama_server.url, GUNICORN_GRACEFUL_TIMEOUT="7"
    )
    url = f"http://127.0.0.1:{port}"
    body = {"model": "llama3.2", "prompt": "hi"}
    streams = [
        requests.post(
            f"{url}/api/generate", json=body, headers=bearer(user), stream=True, timeout=30
        )
        for _ in range(10)
    ]
    for stream in streams:
        next(stream.iter_lines())
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
        records = wait_for_records(10, timeout=5)
        assert len(records) == 10
        assert all(r.completion_tokens and r.completion_tokens < 200 for r in records)
    finally:
        fake_ollama_server.reset()
        for stream in streams:
            stream.close()


@postgresql_only
def test_sigterm_gives_back_the_slot_of_a_stream_it_cuts(transactional_db, make_key):
    """A stream holding the queue's only slot, cut at SIGTERM: recorded, and its slot given
    back before the worker exits (not left to its lease), so the next replica's queue moves."""
    from usage.models import Slot

    _, user = make_key("user")
    ollama_port, port = free_port(), free_port()
    timing = ["--port", str(ollama_port), "--tokens", "200", "--token-delay", "0.1"]
    ollama = subprocess.Popen([sys.executable, "-m", "devollama", *timing])
    process = None
    try:
        process = start_gunicorn(
            port,
            OLLAMA_BASE_URL=f"http://127.0.0.1:{ollama_port}",
            OLLAMA_NUM_PARALLEL="1",
            GUNICORN_GRACEFUL_TIMEOUT="7",
        )
        body = {
            "model": "llama3.2",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
        with requests.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json=body,
            headers=bearer(user),
            stream=True,
            timeout=30,
        ) as stream:
            lines = stream.iter_lines()
            next(lines)
            assert Slot.objects.count() == 1
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(requests.RequestException):
                for _ in lines:
                    pass
        process.wait(timeout=30)
        assert not Slot.objects.exists()
        (record,) = UsageRecord.objects.all()
        assert 0 < record.completion_tokens < 200
    finally:
        for child in (process, ollama):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait()


def test_workers_of_a_killed_master_shut_down(transactional_db, fake_ollama_server):
    """kill -9 of gunicorn's master: its workers notice and leave (port and connections
    freed) instead of serving on as orphans."""
    port = free_port()
    process = start_gunicorn(port, OLLAMA_BASE_URL=fake_ollama_server.url, GUNICORN_TIMEOUT="4")
    children = subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True
    ).stdout.split()
    assert children
    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{c}") for c in children):
        time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{c}") for c in children)
