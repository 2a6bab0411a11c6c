"""One headless chromium tab, driven over the DevTools protocol (the browser tests)."""

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
    "about:blank",
]


# --- Headless chromium over the DevTools protocol --------------------------------------------


class Chromium:
    """One headless chromium tab, driven through `--remote-debugging-pipe`.

    The protocol's messages are JSON, NUL-terminated, read by the browser on fd 3 and written
    on fd 4: a few lines of stdlib instead of a websocket client or a browser-automation
    package. The session cookie is set through the protocol, so the product needs no test hook.
    """

    def __init__(self, profile: Path, timeout: float = 20):
        self.timeout = timeout
        to_browser, self._send = os.pipe()
        self._receive, from_browser = os.pipe()
        # Moved above fd 4, so that placing them on 3 and 4 cannot overwrite one another.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        # Protocol events (Network.requestWillBeSent...), in order, once a domain is enabled.
        self.events: list[dict] = []
        # posix_spawn places the pipe ends on fds 3 and 4 in the browser; unlike Popen's
        # preexec_fn, it is safe while the live server's threads run.
        self.pid = os.posix_spawn(
            CHROMIUM,
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, ends[0], 3),
                (os.POSIX_SPAWN_DUP2, ends[1], 4),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
        for fd in ends:
            os.close(fd)
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        except (RuntimeError, OSError):
            self.close()
            raise
        self.session = attached["sessionId"]

    def call(self, method: str, *, session: str | None = None, **params) -> dict:
        """Send one command and wait for its answer (events in between go to `events`)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._receive], [], [], deadline - time.monotonic())
                chunk = os.read(self._receive, 1 << 20) if ready else b""
                if not chunk:
                    raise RuntimeError(f"chromium did not answer {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if "method" in answer:
                self.events.append(answer)
            elif answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def open(self, url: str, *, cookies: dict | None = None, width=1280, height=1800) -> None:
        """Load `url` with `cookies` set for its site, and wait until it has loaded."""
        for name, value in (cookies or {}).items():
            self.page("Network.setCookie", name=name, value=value, url=url)
        self.page(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        # Screenshots of the whole page keep the full width.
        self.page("Emulation.setScrollbarsHidden", hidden=True)
        navigation = self.page("Page.navigate", url=url)
        assert not navigation.get("errorText"), navigation
        deadline = time.monotonic() + self.timeout
        while self.evaluate("document.readyState") != "complete":
            assert time.monotonic() < deadline, f"{url} did not finish loading"
            time.sleep(0.05)

    def evaluate(self, expression: str):
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0):
        """Poll `expression` until it is truthy (pages that render after fetching data)."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)
        return value

    def screenshot(self, path: Path) -> tuple[int, int]:
        """Save the whole page as PNG; returns its (width, height) read from the PNG header."""
        data = base64.b64decode(
            self.page("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        )
        path.write_bytes(data)
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        return struct.unpack(">II", data[16:24])

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):  # Already gone: nothing to close.
            self.call("Browser.close")
        deadline = time.monotonic() + 10
        while not os.waitpid(self.pid, os.WNOHANG)[0]:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._send)
        os.close(self._receive)
