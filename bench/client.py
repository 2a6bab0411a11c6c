"""A keep-alive HTTP/1.1 client for one server on 127.0.0.1, timed per call.

http.client over one connection: the cheapest client the standard library has, so that the
measured time is the server's, not the client's.
"""

import http.client
import json
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
GENERATE_BODY = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": False}).encode()


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    seconds: float

    def json(self):
        return json.loads(self.body)


class Client:
    """One persistent connection to http://127.0.0.1:`port`, reopened if the server closed it."""

    def __init__(self, port: int, *, key: str | None = None, timeout: float = 30.0):
        self.port = port
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._connection: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: bytes | None = None) -> Reply:
        """Send one request and read the whole answer; `seconds` spans both."""
        try:
            return self._exchange(method, path, body)
        except (ConnectionError, http.client.HTTPException):
            # A keep-alive connection the server closed meanwhile: once more on a new one.
            self.close()
            return self._exchange(method, path, body)

    def _exchange(self, method: str, path: str, body: bytes | None) -> Reply:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        started = time.perf_counter()
        self._connection.request(method, path, body=body, headers=self.headers)
        response = self._connection.getresponse()
        content = response.read()
        elapsed = time.perf_counter() - started
        if response.will_close:
            self.close()
        return Reply(response.status, content, elapsed)

    def generate(self) -> Reply:
        """The benchmark's request: a non-streaming /api/generate."""
        return self.call("POST", "/api/generate", GENERATE_BODY)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
