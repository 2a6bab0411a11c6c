"""The pooled HTTP client for the hop to an Ollama server.

One `requests.Session` per server and process (see proxy/backends.py), shared by all worker
threads, keeps TCP connections to Ollama open between requests. Timeouts are explicit: a short
connect timeout (an unreachable server fails fast, and the next one is tried) and a long read
timeout (a model that is loading may send nothing for minutes).
"""

import requests
from requests.adapters import HTTPAdapter


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
