"""proxy/protocols.py: the pure protocol logic, without a server."""

import asyncio
import gzip
import json
import time
import tracemalloc

import pytest
import zstandard

from proxy import protocols
from proxy.protocols import ANTHROPIC, RESPONSES, ProtocolError


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "overloaded_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_anthropic_error_types(status, kind):
    assert protocols.anthropic_error_body(status, "m") == {
        "type": "error",
        "error": {"type": kind, "message": "m"},
    }


def _parse_event(raw: bytes) -> tuple[str, dict]:
    assert raw.endswith(b"\n\n")
    name_line, data_line = raw.strip().split(b"\n")
    assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
    return name_line[7:].decode(), json.loads(data_line[6:])


def test_stream_error_events_by_surface():
    name, data = _parse_event(protocols.stream_error_event(ANTHROPIC, 502, "gone"))
    assert name == "error"
    assert data == {"type": "error", "error": {"type": "api_error", "message": "gone"}}
    name, data = _parse_event(protocols.stream_error_event(RESPONSES, 502, "gone"))
    assert name == "response.failed" and data["type"] == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"]["message"] == "gone"
    assert protocols.stream_error_event("openai", 502, "gone") is None


@pytest.mark.parametrize(
    ("payload", "counted"),
    [
        ({"type": "message_start", "message": {"usage": {"input_tokens": 7}}}, (7, None)),
        ({"type": "message_delta", "usage": {"output_tokens": 5}}, (None, 5)),
        ({"type": "message_delta", "usage": {"input_tokens": 7, "output_tokens": 5}}, (7, 5)),
        (
            {
                "type": "response.completed",
                "response": {"usage": {"input_tokens": 3, "output_tokens": 4}},
            },
            (3, 4),
        ),
        ({"type": "message", "usage": {"input_tokens": 2, "output_tokens": 9}}, (2, 9)),
        ({"object": "response", "usage": {"input_tokens": 2, "output_tokens": 9}}, (2, 9)),
        ({"type": "content_block_delta", "delta": {"text": "usage"}}, None),
        ({"done": True, "eval_count": 3}, None),
    ],
)
def test_usage_from_event(payload, counted):
    assert protocols.usage_from_event(payload) == counted


@pytest.mark.parametrize(
    "payload",
    [{"error": "x"}, {"type": "error", "error": {}}, {"type": "response.failed", "response": {}}],
)
def test_failure_events(payload):
    assert protocols.is_failure_event(payload)


def test_failure_events_ignore_ordinary_ones():
    assert not protocols.is_failure_event({"type": "response.output_text.delta", "delta": "x"})


def test_decode_body_passes_plain_bodies():
    assert protocols.decode_body(b"{}", None, 10) == b"{}"
    assert protocols.decode_body(b"{}", "identity", 10) == b"{}"


def test_decode_body_zstd_and_gzip():
    body = json.dumps({"model": "llama3.2", "input": "x" * 1000}).encode()
    assert protocols.decode_body(zstandard.ZstdCompressor().compress(body), "zstd", 10_000) == body
    assert protocols.decode_body(gzip.compress(body), "gzip", 10_000) == body
    # Two gzip members, as `cat a.gz b.gz` makes.
    assert protocols.decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"


def test_decode_body_zstd_across_frames():
    compressor = zstandard.ZstdCompressor()
    two = compressor.compress(b"ab") + compressor.compress(b"cd")
    assert protocols.decode_body(two, "zstd", 10) == b"abcd"


@pytest.mark.parametrize("encoding", ["zstd", "gzip"])
def test_decode_body_bomb_is_refused_fast_with_flat_memory(encoding):
    zeros = b"\0" * (1 << 20)
    if encoding == "zstd":
        writer = zstandard.ZstdCompressor(level=3).compressobj()
        bomb = b"".join(writer.compress(zeros) for _ in range(1024)) + writer.flush()
    else:
        bomb = gzip.compress(zeros * 64, compresslevel=9)  # 64 MiB
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(ProtocolError) as raised:
        protocols.decode_body(bomb, encoding, 1 << 20)
    elapsed = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert raised.value.status == 413
    assert elapsed < 1.0
    assert peak < 4 << 20  # a 1 MiB limit costs a few MiB, not the bomb's size


def test_decode_body_refuses_a_declared_size_unread():
    declared = zstandard.ZstdCompressor().compress(b"\0" * (8 << 20))  # the header says 8 MiB
    tracemalloc.start()
    with pytest.raises(ProtocolError) as raised:
        protocols.decode_body(declared, "zstd", 1 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert raised.value.status == 413 and peak < 64 * 1024


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"not zstd", "zstd", 400),
        (b"not gzip", "gzip", 400),
        (gzip.compress(b"abcdef")[:-12], "gzip", 400),
        (b"{}", "br", 415),
        (b"{}", "deflate", 415),
    ],
)
def test_decode_body_refuses_bad_encodings(body, encoding, status):
    with pytest.raises(ProtocolError) as raised:
        protocols.decode_body(body, encoding, 1000)
    assert raised.value.status == status


def _form(boundary: str, fields: list[tuple[str, bytes, str | None]]) -> bytes:
    parts = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value)
    return b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode()


def test_multipart_field_reads_the_model():
    audio = b"RIFF" + b"\0model\r\n" * 1000
    body = _form(
        "xyz",
        [("file", audio, "a.wav"), ("model", b"whisper:small", None), ("language", b"en", None)],
    )
    content_type = "multipart/form-data; boundary=xyz"
    assert protocols.multipart_field(body, content_type, "model") == "whisper:small"
    assert protocols.multipart_field(body, content_type, "prompt") is None
    # A filename named like the field does not count, nor does a quoted boundary confuse it.
    body = _form("b b", [("file", b"x", "model"), ("model", b"m", None)])
    assert protocols.multipart_field(body, 'multipart/form-data; boundary="b b"', "model") == "m"


MODEL_PART = b'Content-Disposition: form-data; name="model"'


@pytest.mark.parametrize(
    ("body", "content_type", "model"),
    [
        # Unquoted, escaped and upper-case parameter names, as Go reads them.
        (b"--x\r\nContent-Disposition: form-data; name=model\r\n\r\nA\r\n--x--\r\n", "", "A"),
        (b'--x\r\nContent-Disposition: form-data; NAME="mod\\el"\r\n\r\nA\r\n--x--', "", "A"),
        # A CRLF + boundary that does not end its line is content, not a delimiter.
        (b"--x\r\n" + MODEL_PART + b"\r\n\r\nA\r\n--xy\r\n--x--\r\n", "", "A\r\n--xy"),
        # Header lines ending with LF alone, folded header lines.
        (b'--x\r\nContent-Disposition: form-data;\n name="model"\n\nA\r\n--x--', "", "A"),
        # A preamble before the first boundary.
        (b"preamble\r\n--x\r\n" + MODEL_PART + b"\r\n\r\nA\r\n--x--", "", "A"),
        # The boundary is the `boundary` parameter, not one that ends like it.
        (
            b"--x\r\n" + MODEL_PART + b"\r\n\r\nA\r\n--x--",
            'multipart/form-data; x-boundary="y"; boundary=x',
            "A",
        ),
    ],
)
def test_multipart_field_reads_what_go_reads(body, content_type, model):
    content_type = content_type or "multipart/form-data; boundary=x"
    assert protocols.multipart_field(body, content_type, "model") == model


@pytest.mark.parametrize(
    "body",
    [
        # Go ends the first part's headers at the LF-only blank line and reads model B there;
        # a CRLF-only reader would skip to the second part and read A. Both are seen: refused.
        b"--x\r\n" + MODEL_PART + b"\n\nB\r\n--x\r\n" + MODEL_PART + b"\r\n\r\nA\r\n--x--",
        # Decoded by Go's multipart reader, not by us.
        b"--x\r\n" + MODEL_PART + b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"=41\r\n--x--",
        # RFC 2231 names, which Go decodes.
        b"--x\r\nContent-Disposition: form-data; name*=UTF-8''model\r\n\r\nA\r\n--x--",
        # RFC 2231 continuations, which Go joins into `name="model"` (before a real field).
        b"--x\r\nContent-Disposition: form-data; name*0=mo; name*1=del\r\n\r\nB\r\n--x\r\n"
        + MODEL_PART
        + b"\r\n\r\nA\r\n--x--",
        b"--x\r\nContent-Disposition: form-data; name*0*=UTF-8''mo; name*1=del\r\n\r\nB\r\n--x--",
        # A file named like the field.
        b'--x\r\nContent-Disposition: form-data; name="model"; filename="m"\r\n\r\nA\r\n--x--',
        # Bare-LF delimiters (Go then switches to LF mode).
        b"--x\n" + MODEL_PART + b"\n\nA\n--x--\n",
        # Malformed part headers.
        b"--x\r\nno colon here\r\n\r\nA\r\n--x--",
    ],
)
def test_multipart_field_refuses_what_go_might_read_otherwise(body):
    with pytest.raises(ProtocolError) as raised:
        protocols.multipart_field(body, "multipart/form-data; boundary=x", "model")
    assert raised.value.status == 400


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{}", "application/json"),
        (b"--x\r\n", "multipart/form-data"),
        (
            _form("x", [("model", b"a", None), ("model", b"b", None)]),
            "multipart/form-data; boundary=x",
        ),
        (
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nabc',
            "multipart/form-data; boundary=x",
        ),
    ],
)
def test_multipart_field_refuses_bad_forms(body, content_type):
    with pytest.raises(ProtocolError) as raised:
        protocols.multipart_field(body, content_type, "model")
    assert raised.value.status == 400


class _Reply:
    """Just what StreamRelay reads of Ollama's reply."""

    def __init__(self, chunks):
        self._chunks = chunks

    async def chunks(self):
        for chunk in self._chunks:
            yield chunk

    async def aclose(self):
        pass


class _Lease:
    def release(self):
        pass


def _relay(chunks, surface):
    """Relay `chunks`; (what went out, (outcome, ttft, prompt tokens, completion tokens))."""
    from proxy.streaming import StreamRelay
    from usage.services import Exchange

    exchange = Exchange(method="POST", route="/v1/test", request_id="t", client_addr=None)
    exchange.recorded = True  # read here, not written to a database
    relay = StreamRelay(_Reply(chunks), _Lease(), surface=surface, exchange=exchange)

    async def drain():
        return b"".join([chunk async for chunk in relay])

    relayed = asyncio.run(drain())
    return relayed, (
        exchange.outcome,
        exchange.ttft_ms,
        exchange.prompt_tokens,
        exchange.completion_tokens,
    )


def test_relay_reads_anthropic_usage_from_two_events_and_changes_nothing():
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 12, "output_tokens": 0}},
    }
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 7},
    }
    stream = (
        protocols.sse_event("message_start", start)
        + protocols.sse_event("content_block_delta", {"type": "content_block_delta", "usage": 1})
        + protocols.sse_event("message_delta", delta)
    )
    chunks = [stream[i : i + 7] for i in range(0, len(stream), 7)]  # split anywhere
    relayed, (outcome, _, prompt, completion) = _relay(chunks, ANTHROPIC)
    assert relayed == stream
    assert (outcome, prompt, completion) == ("ok", 12, 7)


def test_relay_reads_usage_after_a_long_responses_output():
    output = [{"type": "message", "content": [{"type": "output_text", "text": "x" * 300_000}]}]
    response = {"output": output, "usage": {"input_tokens": 40, "output_tokens": 90}}
    completed = protocols.sse_event(
        "response.completed", {"response": response, "type": "response.completed"}
    )
    chunks = [completed[i : i + 16384] for i in range(0, len(completed), 16384)]
    relayed, (outcome, _, prompt, completion) = _relay(chunks, RESPONSES)
    assert relayed == completed
    assert (outcome, prompt, completion) == ("ok", 40, 90)


def test_relay_marks_a_responses_failure_event():
    failed = protocols.stream_error_event(RESPONSES, 500, "boom")
    _, (outcome, *_) = _relay([failed], RESPONSES)
    assert outcome == "upstream_error"
