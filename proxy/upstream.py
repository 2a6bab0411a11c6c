"""The HTTP clients for the hop to an Ollama server.

Requests run on the event loop through one `aiohttp.ClientSession` per server and worker, which
keeps TCP connections to Ollama open between requests (`send`). The background health checks
run in a thread of their own with a blocking `requests.Session` (`Upstream`). Timeouts are
explicit: a short connect timeout (an unreachable server fails fast, and the next one is tried)
and a long read timeout between bytes (a model that is loading may send nothing for minutes).
"""

import asyncio

import aiohttp
import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

from ollama_gateway import runtime

# What a client is told when no Ollama server could be reached (502).
UNREACHABLE = "Could not reach Ollama."


class UpstreamUnreachable(Exception):
    """No answer could be had: connection refused or dropped. Another server may be tried."""


class UpstreamTimeout(Exception):
    """The server stopped sending for OLLAMA_READ_TIMEOUT seconds (it may still be working)."""


def _headers(api_key: str) -> dict:
    # Loopback or LAN: compression costs more than it saves, and would hide stream boundaries.
    headers = {"Accept-Encoding": "identity"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


class Upstream:
    """A blocking client for one server (background health checks)."""

    def __init__(self, *, base_url, api_key, connect_timeout, read_timeout):
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        # Proxy variables and .netrc of the host must not redirect or decorate the hop to Ollama.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.clear()
        self.session.headers.update(_headers(api_key))

    def request(self, method, path, *, timeout=None):
        """Send one request; raises requests.ConnectionError / requests.Timeout."""
        return self.session.request(
            method, self.base_url + path, timeout=timeout or self.timeout, allow_redirects=False
        )


_sessions: dict[asyncio.AbstractEventLoop, dict[tuple, aiohttp.ClientSession]] = {}


def _timeout(read_timeout: float | None) -> aiohttp.ClientTimeout:
    connect = settings.OLLAMA_CONNECT_TIMEOUT
    return aiohttp.ClientTimeout(
        total=None,
        connect=connect,
        sock_connect=connect,
        sock_read=read_timeout or settings.OLLAMA_READ_TIMEOUT,
    )


def _new_session(api_key: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.OLLAMA_POOL_SIZE, enable_cleanup_closed=True),
        headers=_headers(api_key),
        skip_auto_headers=("User-Agent",),
        auto_decompress=False,
        trust_env=False,
    )


class Reply:
    """Ollama's answer: status and headers at once, the body whole (`read`) or as it comes
    (`chunks`). `aclose` gives the connection back (or drops it, mid-stream: Ollama stops)."""

    def __init__(self, response: aiohttp.ClientResponse, session: aiohttp.ClientSession | None):
        self._response = response
        self._session = session  # a per-request session to close with the answer
        self.status = response.status
        self.headers = response.headers
        self.content: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.status < 400

    async def read(self) -> bytes:
        if self.content is None:
            try:
                self.content = await self._response.read()
            except Exception as exc:
                raise _translated(exc) from exc
        return self.content

    async def chunks(self):
        """The body's bytes as they arrive."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except Exception as exc:
            raise _translated(exc) from exc

    async def aclose(self) -> None:
        self._response.close()
        if self._session is not None:
            await self._session.close()


def _translated(exc: Exception) -> Exception:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachable(type(exc).__name__)
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout(type(exc).__name__)
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return UpstreamUnreachable(type(exc).__name__)
    return exc


async def send(
    base_url: str,
    api_key: str,
    method: str,
    path: str,
    *,
    data=None,
    headers=None,
    read_timeout: float | None = None,
) -> Reply:
    """Send one request to the server at `base_url`; returns once its headers are in.

    Raises UpstreamUnreachable or UpstreamTimeout. The session is the worker's pooled one for
    that server under the ASGI server, a per-request one elsewhere (closed with the Reply).
    """
    if runtime.serving():
        per_loop = _sessions.setdefault(asyncio.get_running_loop(), {})
        session = per_loop.get((base_url, api_key))
        if session is None or session.closed:
            session = per_loop[(base_url, api_key)] = _new_session(api_key)
        owned = None
    else:
        session = owned = _new_session(api_key)
    try:
        response = await session.request(
            method,
            base_url + path,
            data=data,
            headers=headers,
            allow_redirects=False,
            timeout=_timeout(read_timeout),
        )
    except BaseException as exc:
        if owned is not None:
            await owned.close()
        raise _translated(exc) from exc
    return Reply(response, owned)


async def close_sessions() -> None:
    for session in _sessions.pop(asyncio.get_running_loop(), {}).values():
        await session.close()
