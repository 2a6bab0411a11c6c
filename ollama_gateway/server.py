"""The gunicorn worker: uvicorn's event loop (uvloop) and HTTP parser (httptools), plus the
deadline and the size cap uvicorn lacks for request headers.

`gunicorn -c gunicorn.conf.py ollama_gateway.asgi` runs `GatewayWorker`s. Why uvicorn's worker:
measured on this machine (docs/performance.md), its httptools parser and uvloop serve the
model routes faster than gunicorn's own ASGI worker; and its flow control (a write waits while
the client's buffer is full) is what makes a stalled reader visible to CLIENT_WRITE_TIMEOUT.
"""

import os
import signal
import warnings

from django.conf import settings
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

with warnings.catch_warnings():
    # uvicorn.workers is deprecated for a separate package that we do not need: this is it.
    warnings.simplefilter("ignore", DeprecationWarning)
    from uvicorn.workers import UvicornWorker


def _plain_response(status: bytes, text: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(text)).encode() + b"\r\nconnection: close\r\n\r\n" + text
    )


_REQUEST_TIMEOUT = _plain_response(
    b"408 Request Timeout", b"Request headers did not arrive in time."
)
_HEADERS_TOO_LARGE = _plain_response(
    b"431 Request Header Fields Too Large", b"Request headers are too large."
)


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    """A connection must deliver a request's headers within REQUEST_HEADER_TIMEOUT seconds of
    opening (or of its first byte, on a kept-alive connection); else 408 and close. Idle
    connections that never send anything are closed the same way.

    A request's line and headers, and a chunked body's trailer fields, may take at most
    REQUEST_HEADER_MAX_BYTES (431 and close beyond): the parser keeps a header whole until its
    end, so without a cap one header could grow a worker's memory without bound, before any
    key is checked."""

    header_timer = None
    header_bytes = 0
    reading_headers = True
    requests_seen = 0
    body_seen = False

    def data_received(self, data: bytes) -> None:
        reading, requests_seen = self.reading_headers, self.requests_seen
        self.body_seen = False
        super().data_received(data)
        if self.transport.is_closing() or requests_seen != self.requests_seen:
            return
        if reading and self.reading_headers:
            # A read that was headers from its start to its end counts. Not one that ended a
            # request's headers (the body's first bytes may follow), nor one that ended a body
            # (the next pipelined request's first bytes may follow): at most one read each.
            self.header_bytes += len(data)
        elif not reading and not self.reading_headers:
            # In a body: reads that carry none of it in a row. A chunked body's trailer fields
            # (after its last chunk) are headers too, held whole by the parser like them.
            self.header_bytes = 0 if self.body_seen else self.header_bytes + len(data)
        if self.header_bytes > settings.REQUEST_HEADER_MAX_BYTES:
            self._disarm_header_timer()
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_HEADERS_TOO_LARGE)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.body_seen = True
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_headers, self.header_bytes = True, 0  # the next request's, if any

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self.reading_headers, self.header_bytes = False, 0
        self.requests_seen += 1
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self.header_timer = self.loop.call_later(
            settings.REQUEST_HEADER_TIMEOUT, self._headers_too_slow
        )

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


class GatewayWorker(UvicornWorker):
    """uvicorn under gunicorn, with the gateway's protocol and limits.

    - `worker_connections` caps open connections per worker (uvicorn answers 503 beyond it);
    - running requests get `graceful_timeout` minus a margin at SIGTERM, so that what is cut
      then is still recorded before gunicorn's own deadline kills the worker.
    """

    CONFIG_KWARGS = {"loop": "uvloop", "http": GatewayHttpToolsProtocol, "lifespan": "on"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.limit_concurrency = self.cfg.worker_connections
        self.config.callback_notify = self._notify_unless_orphaned
        self.config.timeout_graceful_shutdown = max(self.cfg.graceful_timeout - 5, 1)
        self.config.proxy_headers = False  # the gateway reads X-Forwarded-For itself

    async def _notify_unless_orphaned(self) -> None:
        """gunicorn's heartbeat; a worker whose master died (kill -9) shuts down gracefully
        instead of serving on, holding its port and database connections, forever."""
        if os.getppid() != self.ppid:
            self.log.warning("gunicorn master %s is gone: shutting down", self.ppid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.notify()
