"""The one pooled HTTP client for the hop to Ollama.

One `requests.Session` per process, shared by all worker threads, keeps TCP connections to Ollama
open between requests. Timeouts are explicit: a short connect timeout (an unreachable upstream fails
fast with 502) and a long read timeout (a model that is loading may send nothing for minutes).
"""

import threading

import requests
from django.conf import settings
from django.core.signals import setting_changed
from requests.adapters import HTTPAdapter

# Hop-by-hop headers (RFC 9110 §7.6.1) and what the HTTP client recomputes: never relayed.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
    }
)


class Upstream:
    def __init__(self, *, base_url, api_key, connect_timeout, read_timeout, pool_size):
        self.base_url = base_url
        self.timeout = (connect_timeout, read_timeout)
        self.session = requests.Session()
        # Proxy variables and .netrc of the host must not redirect or decorate the hop to Ollama.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.clear()
        # Loopback or LAN: compression costs more than it saves, and would hide stream boundaries.
        self.session.headers["Accept-Encoding"] = "identity"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def request(self, method, path, *, data=None, headers=None, stream=False, timeout=None):
        """Send one request; raises requests.ConnectionError / requests.Timeout."""
        return self.session.request(
            method,
            self.base_url + path,
            data=data,
            headers=headers,
            stream=stream,
            timeout=timeout or self.timeout,
            allow_redirects=False,
        )


_lock = threading.Lock()
_upstream: Upstream | None = None


def upstream() -> Upstream:
    """The process-wide client, built from settings on first use."""
    global _upstream
    if _upstream is None:
        with _lock:
            if _upstream is None:
                _upstream = Upstream(
                    base_url=settings.OLLAMA_BASE_URL.rstrip("/"),
                    api_key=settings.OLLAMA_API_KEY,
                    connect_timeout=settings.OLLAMA_CONNECT_TIMEOUT,
                    read_timeout=settings.OLLAMA_READ_TIMEOUT,
                    pool_size=settings.OLLAMA_POOL_SIZE,
                )
    return _upstream


def _reset(*, setting, **kwargs):
    global _upstream
    if setting.startswith("OLLAMA_"):
        _upstream = None


# Tests change OLLAMA_BASE_URL and the timeouts with override_settings.
setting_changed.connect(_reset)
