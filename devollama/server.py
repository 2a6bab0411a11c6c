"""A development Ollama: a real HTTP server speaking Ollama's API, with timing and failures.

Typical use in a test::

    with FakeOllama(config=FakeConfig(tokens=3)) as fake:
        ollama.Client(host=fake.url).generate(model="llama3.2", prompt="hi")
        assert fake.requests[-1].path == "/api/generate"

Another process controls it through ``GET /_fake/state``, ``POST /_fake/config`` (a JSON object
merged into the config) and ``POST /_fake/reset``. Those control calls are not recorded.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import signal
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from .catalog import Catalog
from .routes import GENERATION_ROUTES, Call, busy_reply, dispatch
from .wire import (
    NOT_FOUND_TEXT,
    ApiError,
    Headers,
    RecordedRequest,
    Reply,
    json_reply,
    text_reply,
)

FAILURES = ("hang", "midstream", "error500", "busy")
DEFAULT_MODELS = ("llama3.2:latest", "qwen2.5:0.5b", "nomic-embed-text:latest")
MIDSTREAM_FRAMES = 2  # frames a "midstream" failure sends before dropping the connection
STATE_REQUESTS = 100  # requests listed by GET /_fake/state


@dataclass
class FakeConfig:
    """How the fake behaves. Read afresh by every request, so it may be changed at any time.

    ``ttft`` delays the first token (or the whole answer when not streaming) of generate, chat
    and completions; ``token_delay`` separates tokens. ``fail`` injects a failure: ``"hang"``
    (never answer until stop/reset), ``"midstream"`` (send 2 chunks, then drop the connection),
    ``"error500"`` or ``"busy"`` (503). ``parallel`` caps the generations running at once (0: no
    cap), the others wait first come first served, as with ``OLLAMA_NUM_PARALLEL``; beyond
    ``max_queue`` waiting ones, 503 ``server busy`` (``OLLAMA_MAX_QUEUE``).
    """

    ttft: float = 0.0
    tokens: int = 5
    token_delay: float = 0.0
    fail: str | None = None
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    version: str = "0.12.3"
    parallel: int = 0
    max_queue: int = 512

    def __post_init__(self) -> None:
        for name in ("parallel", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        if self.fail not in (None, *FAILURES):
            raise ValueError(f"fail must be None or one of {', '.join(FAILURES)}: {self.fail!r}")
        if self.ttft < 0 or self.token_delay < 0 or self.tokens < 0:
            raise ValueError("ttft, token_delay and tokens cannot be negative")
        if not isinstance(self.models, list) or not all(isinstance(m, str) for m in self.models):
            raise ValueError("models must be a list of names")


class _Slots:
    """Ollama's scheduler, as far as clients can see it: at most `limit()` generations at once
    (0: no limit), the others served first come first served; a full queue refuses."""

    def __init__(self, limit: Callable[[], int], max_queue: Callable[[], int]):
        self._limit = limit
        self._max_queue = max_queue
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()
        self.running = 0
        self.max_running = 0

    def _free(self) -> bool:
        limit = self._limit()
        return not limit or self.running < limit

    def acquire(self) -> bool:
        """Wait for a slot; False at once when the queue is full."""
        with self._changed:
            if self._queue or not self._free():
                if len(self._queue) >= self._max_queue():
                    return False
                ticket = object()
                self._queue.append(ticket)
                self._changed.wait_for(lambda: self._queue[0] is ticket and self._free())
                self._queue.popleft()
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self._changed.notify_all()  # the next in line may fit too
            return True

    def release(self) -> None:
        with self._changed:
            self.running -= 1
            self._changed.notify_all()

    def counters(self) -> dict:
        with self._changed:
            return {
                "running": self.running,
                "queued": len(self._queue),
                "max_running": self.max_running,
            }

    def reset_peak(self) -> None:
        with self._changed:
            self.max_running = self.running
            self._changed.notify_all()  # a smaller or lifted cap may free waiters


class FakeOllama:
    """The fake server. ``start()`` serves in a background thread; also a context manager.

    ``requests`` records every API request; ``disconnects`` counts streams the client closed
    before the end (see :meth:`wait_for_disconnect`).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: FakeConfig | None = None):
        self.host = host
        self.port = port
        self.config = config or FakeConfig()
        self._initial_config = copy.deepcopy(self.config)
        self.requests: list[RecordedRequest] = []
        self._catalog = Catalog()
        self._lock = threading.Lock()
        self._disconnected = threading.Condition()
        self._disconnects = 0
        self._release = threading.Event()  # set to free the requests that "hang"
        self._server: _Server | None = None
        self._slots = _Slots(lambda: self.config.parallel, lambda: self.config.max_queue)

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (the real port once started)."""
        return f"http://{self.host}:{self.port}"

    @property
    def disconnects(self) -> int:
        """How many streams the client closed before the fake finished sending."""
        with self._disconnected:
            return self._disconnects

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeOllama:
        """Listen and serve in a daemon thread; returns self."""
        self._release = threading.Event()  # a stopped fake may be started again
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how fast stop() returns
            name=f"fake-ollama:{self.port}",
            daemon=True,
        )
        thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; hung requests are released."""
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None

    def reset(self) -> None:
        """Back to the config the fake was created with; forget requests and model state."""
        self.config = copy.deepcopy(self._initial_config)
        with self._lock:
            self.requests.clear()
        with self._disconnected:
            self._disconnects = 0
        self._catalog.clear()
        self._slots.reset_peak()
        released, self._release = self._release, threading.Event()
        released.set()

    def configure(self, **changes: object) -> FakeConfig:
        """Replace some config fields (validated); returns the new config."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(FakeConfig)}
        if unknown:
            raise ValueError(f"unknown config fields: {', '.join(sorted(unknown))}")
        self.config = dataclasses.replace(self.config, **changes)
        self._slots.reset_peak()
        return self.config

    def wait_for_disconnect(self, timeout: float = 5.0, count: int = 1) -> bool:
        """Wait until at least ``count`` disconnects were seen; False on timeout."""
        with self._disconnected:
            return self._disconnected.wait_for(lambda: self._disconnects >= count, timeout)

    def state(self) -> dict:
        """What ``GET /_fake/state`` answers: config, counters and the last requests."""
        with self._lock:
            count, recent = len(self.requests), self.requests[-STATE_REQUESTS:]
        return {
            "config": dataclasses.asdict(self.config),
            "request_count": count,
            "disconnects": self.disconnects,
            # Generations running now, waiting for a slot, and the most ever run at once
            # (since the last reset or config change).
            **self._slots.counters(),
            "requests": [_describe(request) for request in recent],
        }

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _count_disconnect(self) -> None:
        with self._disconnected:
            self._disconnects += 1
            self._disconnected.notify_all()

    def _wait_for_release(self) -> None:
        self._release.wait()

    def _control(self, request: RecordedRequest, path: str) -> Reply:
        """The /_fake/* endpoints that let another process drive the fake."""
        if (request.method, path) == ("GET", "/_fake/state"):
            return json_reply(self.state())
        if (request.method, path) == ("POST", "/_fake/reset"):
            self.reset()
            return json_reply(dataclasses.asdict(self.config))
        if (request.method, path) == ("POST", "/_fake/config"):
            try:
                changes = request.json()
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                return json_reply(dataclasses.asdict(self.configure(**changes)))
            except (ValueError, TypeError) as error:
                return ApiError(400, str(error)).reply(openai=False)
        return text_reply(404, NOT_FOUND_TEXT)

    def _answer(self, request: RecordedRequest, *, busy: bool = False) -> Reply:
        path = unquote(urlsplit(request.path).path)
        if path.startswith("/_fake/"):
            return self._control(request, path)
        self._record(request)
        if busy:
            return busy_reply(path)
        # A shallow copy: a request sees one config throughout, while the models list stays
        # shared so that pull/delete edit the live one.
        call = Call(request, path, copy.copy(self.config), self._catalog, time.time())
        return dispatch(call)


def _describe(request: RecordedRequest) -> dict:
    try:
        body, encoding = request.body.decode(), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(request.body).decode(), "base64"
    return {
        "method": request.method,
        "path": request.path,
        "headers": dict(request.headers),
        "body": body,
        "body_encoding": encoding,
    }


class _Server(ThreadingHTTPServer):
    """A threading server tuned for benchmarks, which can close its open connections."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], fake: FakeOllama):
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can stall on DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, object]:
        connection, address = super().get_request()
        # Chunks are small and must leave at once, not wait for Nagle's algorithm.
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut every open connection, idle keep-alive ones included."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients vanishing is routine for this server; anything else is a bug worth a trace.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


def _shut(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Reads a request, asks the fake for a Reply, and writes it: the only socket writer."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(400, "Bad Content-Length or chunk size")
            return
        request = RecordedRequest(self.command, self.path, Headers(self.headers.items()), body)
        fake = self.server.fake
        generation = self.command == "POST" and urlsplit(self.path).path in GENERATION_ROUTES
        # A generation holds its slot until its last byte is written, as a model runner would.
        slot = fake._slots.acquire() if generation else None
        try:
            self._send(fake._answer(request, busy=slot is False))
        finally:
            if slot:
                fake._slots.release()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, format: str, *args: object) -> None:
        """Silent: at benchmark rates, access logs would cost more than the answers."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked_body()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked_body(self) -> bytes:
        parts = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # the CRLF closing the chunk
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(parts)

    def _send(self, reply: Reply) -> None:
        if reply.hang:
            self.server.fake._wait_for_release()
            self._drop()
        elif reply.streamed:
            self._send_stream(reply)
        else:
            self._send_whole(reply)

    def _send_head(self, reply: Reply, framing: tuple[str, str] | None) -> None:
        # Like send_response, minus the Server header Ollama does not send.
        self.send_response_only(reply.status)
        self.send_header("Date", self.date_time_string())
        if reply.content_type:
            self.send_header("Content-Type", reply.content_type)
        if framing:
            self.send_header(*framing)
        self.end_headers()

    def _send_whole(self, reply: Reply) -> None:
        _pause(sum(reply.delays))
        body = b"".join(reply.frames)
        try:
            self._send_head(reply, ("Content-Length", str(len(body))))
            if self.command == "HEAD":
                return
            if reply.broken:
                self.wfile.write(body[: len(body) // 2])
                self._drop()
                return
            self.wfile.write(body)
        except OSError:
            self.close_connection = True

    def _send_stream(self, reply: Reply) -> None:
        """Write frames with their delays, one flushed chunk each; a broken reply drops early.

        HTTP/1.0 has no chunked encoding: such clients (ab, for one) get a body that ends when
        the connection closes, as Go's server does.
        """
        chunked = self.request_version != "HTTP/1.0"
        self.close_connection = self.close_connection or not chunked
        try:
            self._send_head(reply, ("Transfer-Encoding", "chunked") if chunked else None)
            for index, frame in enumerate(reply.frames):
                _pause(reply.delays[index] if index < len(reply.delays) else 0)
                if reply.broken and index == MIDSTREAM_FRAMES:
                    self._drop()
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(frame), frame) if chunked else frame)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.server.fake._count_disconnect()
            self.close_connection = True

    def _drop(self) -> None:
        """End the connection abruptly: whatever the client still expects never comes."""
        self.close_connection = True
        _shut(self.connection)


def _pause(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fakeollama", description="Serve a fake Ollama for development, tests and benchmarks."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434, help="0 picks a free port")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first token")
    parser.add_argument("--tokens", type=int, default=5, help="tokens per answer")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--fail", choices=FAILURES, help="inject this failure")
    parser.add_argument("--parallel", type=int, default=0, help="generations at once (0: no limit)")
    parser.add_argument(
        "--max-queue", type=int, default=512, help="waiting generations before 503 server busy"
    )
    parser.add_argument(
        "--models", help="comma-separated model names", default=",".join(DEFAULT_MODELS)
    )
    return parser


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Run the fake from the command line until Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    config = FakeConfig(
        ttft=args.ttft,
        tokens=args.tokens,
        token_delay=args.token_delay,
        fail=args.fail,
        parallel=args.parallel,
        max_queue=args.max_queue,
        models=[name.strip() for name in args.models.split(",") if name.strip()],
    )
    fake = FakeOllama(args.host, args.port, config).start()
    print(f"fake ollama listening on {fake.url}", flush=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
