"""The gunicorn worker: uvicorn's event loop (uvloop) and HTTP parser (httptools), plus the
deadline uvicorn lacks for request headers.

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

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 38\r\nconnection: close\r\n\r\nRequest headers did not arrive in time."
)


class GatewayHttpToolsProtocol(HttpToolsProtocol):
    """A connection must deliver a request's headers within REQUEST_HEADER_TIMEOUT seconds of
    opening (or of its first byte, on a kept-alive connection); else 408 and close. Idle
    connections that never send anything are closed the same way."""

    header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
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
