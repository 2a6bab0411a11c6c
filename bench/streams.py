"""Many concurrent streams, timed chunk by chunk by a minimal asyncio client.

Raw sockets (asyncio.open_connection), HTTP/1.1, the chunked NDJSON body parsed here: every
token line's arrival time is the time of the read that completed it. A stream's time to first
token counts from before its connection is opened, so queueing at accept is included.

A chunk is *bunched* when it arrives less than `BUNCHED_FRACTION` of the upstream's token spacing
after the previous token chunk of its stream: the spacing was lost on the way (batched or stalled
and then flushed together).
"""

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

from bench.quantiles import summarize

BUNCHED_FRACTION = 0.25
_HEAD_END = b"\r\n\r\n"


@dataclass
class Stream:
    """What one client saw of its stream (monotonic seconds)."""

    started: float = 0.0
    connected: float | None = None
    status: int | None = None
    tokens: list[float] = field(default_factory=list)  # arrival of each token line
    done: float | None = None  # arrival of the final `"done":true` line
    ended: float | None = None  # the terminal chunk, or the failure
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.error is None and self.done is not None


class ChunkedLines:
    """Incremental parser: HTTP/1.1 chunked body in, complete NDJSON lines out."""

    def __init__(self) -> None:
        self._raw = b""
        self._text = b""
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        self._raw += data
        while not self.finished:
            end = self._raw.find(b"\r\n")
            if end < 0:
                break
            size = int(self._raw[:end].split(b";")[0], 16)
            if size == 0:
                self.finished = True  # trailers, if any, are not read
                break
            if len(self._raw) < end + 2 + size + 2:
                break
            self._text += self._raw[end + 2 : end + 2 + size]
            self._raw = self._raw[end + 2 + size + 2 :]
        *lines, self._text = self._text.split(b"\n")
        return [line for line in lines if line]


def request_bytes(port: int, *, key: str | None) -> bytes:
    """A streaming POST /api/generate, closing the connection after the answer."""
    body = json.dumps({"model": "llama3.2", "prompt": "hi", "stream": True}).encode()
    head = [
        "POST /api/generate HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _stream(port: int, request: bytes, start_at: float, timeout: float) -> Stream:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start_at - loop.time()))
    stream = Stream(started=time.monotonic())
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            stream.connected = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(_HEAD_END)
            stream.status = int(head.split(b" ", 2)[1])
            if stream.status != 200 or b"chunked" not in head.lower():
                stream.error = f"HTTP {stream.status}"
                return stream
            await _read_body(reader, stream)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        stream.error = type(exc).__name__
    except TimeoutError:
        stream.error = "timeout"
    finally:
        stream.ended = time.monotonic()
        if writer is not None:
            writer.close()
    return stream


async def _read_body(reader: asyncio.StreamReader, stream: Stream) -> None:
    parser = ChunkedLines()
    while not parser.finished:
        data = await reader.read(65536)
        if not data:
            stream.error = "closed early"
            return
        now = time.monotonic()
        for line in parser.feed(data):
            if b'"done":false' in line:
                stream.tokens.append(now)
            elif b'"done":true' in line:
                stream.done = now
            else:
                stream.error = "unexpected line"


async def _run(port: int, request: bytes, count: int, ramp: float, timeout: float) -> list[Stream]:
    loop = asyncio.get_running_loop()
    first = loop.time() + 0.05
    tasks = [
        asyncio.ensure_future(_stream(port, request, first + ramp * i / count, timeout))
        for i in range(count)
    ]
    # Bounded twice over: each stream has its own timeout, and so has the whole run.
    done, pending = await asyncio.wait(tasks, timeout=ramp + timeout + 10)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return [task.result() for task in done]


def run_streams(
    port: int, *, key: str | None, count: int, ramp: float, timeout: float, spacing: float
) -> dict:
    """Open `count` streams over `ramp` seconds and summarize what they saw (see `analyze`)."""
    request = request_bytes(port, key=key)
    cpu_before, wall_before = os.times(), time.monotonic()
    streams = asyncio.run(_run(port, request, count, ramp, timeout))
    cpu_after, wall = os.times(), time.monotonic() - wall_before
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    return {
        **analyze(streams, count=count, spacing=spacing),
        "ramp_s": ramp,
        "wall_s": round(wall, 2),
        "client_cpu_s": round(cpu, 2),
        "client_cpu_percent": round(100 * cpu / wall, 1),
    }


def analyze(streams: list[Stream], *, count: int, spacing: float) -> dict:
    """Time to first token, inter-chunk gaps, bunching, completion and reached concurrency."""
    ttft = [(s.tokens[0] - s.started) * 1000 for s in streams if s.tokens]
    gaps = [
        (later - earlier) * 1000
        for s in streams
        for earlier, later in zip(s.tokens, s.tokens[1:], strict=False)
    ]
    bunched_below = spacing * BUNCHED_FRACTION * 1000
    errors: dict[str, int] = {}
    for s in streams:
        if not s.completed:
            errors[s.error or "no final line"] = errors.get(s.error or "no final line", 0) + 1
    starts = sorted(s.started for s in streams)
    return {
        "streams": count,
        "completed": sum(s.completed for s in streams),
        "errors": errors,
        "ramp_observed_s": round(starts[-1] - starts[0], 3) if starts else None,
        "peak_concurrent": _peak_concurrency(streams),
        "connect_ms": summarize(
            (s.connected - s.started) * 1000 for s in streams if s.connected is not None
        ),
        "ttft_ms": summarize(ttft),
        "gap_ms": summarize(gaps, qs=(0.05, 0.5, 0.95, 0.99)),
        "token_chunks": sum(len(s.tokens) for s in streams),
        "bunched_below_ms": bunched_below,
        "bunched": sum(gap < bunched_below for gap in gaps),
        "bunched_share": round(sum(gap < bunched_below for gap in gaps) / len(gaps), 4)
        if gaps
        else None,
    }


def _peak_concurrency(streams: list[Stream]) -> int:
    """The most streams open at one moment (from connect attempt to end)."""
    events = sorted(
        [(s.started, 1) for s in streams] + [(s.ended, -1) for s in streams if s.ended],
        key=lambda event: (event[0], event[1]),
    )
    open_now = peak = 0
    for _, change in events:
        open_now += change
        peak = max(peak, open_now)
    return peak
