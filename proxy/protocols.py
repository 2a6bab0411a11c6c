"""The protocols Ollama speaks besides its own, as the gateway needs them: Anthropic Messages
(`/v1/messages`, Claude Code), OpenAI Responses (`/v1/responses`, Codex) and audio transcriptions.

Pure functions and small classes, no Django and no I/O: the sync views of today and the async
core of tomorrow call the same code. Every limit is a parameter (callers pass their settings).

- errors: Anthropic's error body and the in-band failure events that end a stream;
- usage: token counts read from Anthropic and Responses events and bodies;
- request bodies: `Content-Encoding: zstd` / `gzip` decoded with a bounded output, and the `model`
  field of a multipart form read without copying the upload.
"""

import io
import json
import re
import zlib

import zstandard

# Error surfaces beside ollama_gateway.errors' DRF, OLLAMA and OPENAI (which re-exports these).
ANTHROPIC = "anthropic"
# OpenAI's error shape; streams end with `response.failed` rather than a chat chunk.
RESPONSES = "responses"

# The error type the `anthropic` SDK and Claude Code expect for each status.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# Ollama's own cap for an upload to /v1/audio/transcriptions (OpenAI's too).
TRANSCRIPTION_MAX_BYTES = 25 * 1024 * 1024
# How much of one unfinished SSE line a relay keeps while looking for token counters: a
# `response.completed` event repeats the whole output, and its usage comes last.
MAX_EVENT_BYTES = 8 * 1024 * 1024
# Decompressed bytes produced per step: memory stays flat whatever the compression ratio.
_DECODE_STEP = 64 * 1024


class ProtocolError(Exception):
    """A request the gateway refuses before Ollama sees it: `status` and a message to show."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- Errors -----------------------------------------------------------------------------------


def anthropic_error_body(status: int, message: str) -> dict:
    """`{"type": "error", "error": {"type", "message"}}`, typed for the SDK's exception classes."""
    fallback = "api_error" if status >= 500 else "invalid_request_error"
    error_type = _ANTHROPIC_TYPES.get(status, fallback)
    return {"type": "error", "error": {"type": error_type, "message": message}}


def sse_event(name: str, payload: dict) -> bytes:
    """One named Server-Sent Event, framed as Ollama frames them."""
    return f"event: {name}\ndata: ".encode() + json.dumps(payload).encode() + b"\n\n"


def stream_error_event(surface: str, status: int, message: str) -> bytes | None:
    """The event that ends a stream of `surface` which failed after it began, or None when the
    surface has no named one (native and chat-completions streams keep their own shapes).

    Anthropic: `event: error` (the SDK raises on it). Responses: `event: response.failed` with
    the response object failed, as OpenAI ends a failed response.
    """
    if surface == ANTHROPIC:
        return sse_event("error", anthropic_error_body(status, message))
    if surface == RESPONSES:
        response = {
            "id": "",
            "object": "response",
            "status": "failed",
            "error": {"code": "server_error", "message": message},
            "output": [],
            "usage": None,
        }
        return sse_event("response.failed", {"type": "response.failed", "response": response})
    return None


def is_failure_event(payload: dict) -> bool:
    """Whether an event (already parsed) reports a failure after the stream began."""
    return "error" in payload or payload.get("type") in ("error", "response.failed")


# --- Usage ------------------------------------------------------------------------------------


def usage_from_event(payload: dict) -> tuple[int | None, int | None] | None:
    """(input tokens, output tokens) from an Anthropic or Responses event or whole answer; None
    when `payload` is neither. Either count may be None: Anthropic streams give the input with
    `message_start` and the output with `message_delta`."""
    kind = payload.get("type")
    if kind == "message_start":
        usage = (payload.get("message") or {}).get("usage")
    elif kind in ("response.completed", "response.incomplete", "response.failed"):
        usage = (payload.get("response") or {}).get("usage")
    elif kind == "message_delta" or kind == "message" or payload.get("object") == "response":
        usage = payload.get("usage")
    else:
        return None
    if not isinstance(usage, dict):
        return None, None
    if kind == "message_start":
        # Its output count is the 0 of a message just begun, not a final count.
        return _count(usage.get("input_tokens")), None
    return _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- Request bodies ---------------------------------------------------------------------------


def decode_body(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its `Content-Encoding` undone, refused with 413 as soon as it decodes to more
    than `limit` bytes: a small zstd bomb costs a few steps of `_DECODE_STEP`, never its size.

    The result goes to Ollama without a Content-Encoding: Ollama accepts zstd only on some
    routes and gzip on none, and the gateway has read it anyway.
    """
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return body
    if name == "zstd":
        return _bounded_zstd(body, limit)
    if name in ("gzip", "x-gzip"):
        return _bounded_gzip(body, limit)
    raise ProtocolError(415, f"Unsupported Content-Encoding {encoding!r}: send zstd, gzip or none.")


def too_large(limit: int, *, decompressed: bool = False) -> ProtocolError:
    """The one 413 of a body over `limit` bytes, whoever finds it (see also handlers.py)."""
    once = " once decompressed" if decompressed else ""
    return ProtocolError(413, f"Request body is larger than {limit} bytes{once}.")


def _bounded_zstd(body: bytes, limit: int) -> bytes:
    out = bytearray()
    try:
        # A frame that declares its size (one-shot compressors write it) is judged unread.
        if zstandard.frame_content_size(body) > limit:
            raise too_large(limit, decompressed=True)
        # A stream reader hands out at most what is asked of it, frame after frame.
        with zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(body), read_across_frames=True
        ) as reader:
            while block := reader.read(_DECODE_STEP):
                out += block
                if len(out) > limit:
                    raise too_large(limit, decompressed=True)
    except zstandard.ZstdError:
        raise ProtocolError(400, "Request body is not valid zstd.") from None
    return bytes(out)


def _bounded_gzip(body: bytes, limit: int) -> bytes:
    out = bytearray()
    data = body
    try:
        while data:
            decoder = zlib.decompressobj(wbits=31)
            while data:
                out += decoder.decompress(data, _DECODE_STEP)
                if len(out) > limit:
                    raise too_large(limit, decompressed=True)
                data = decoder.unconsumed_tail
            if not decoder.eof:
                raise ProtocolError(400, "Request body is truncated gzip.")
            # Several gzip members follow one another (RFC 1952).
            data = decoder.unused_data
    except zlib.error:
        raise ProtocolError(400, "Request body is not valid gzip.") from None
    return bytes(out)


# One `key=value` parameter of a header such as Content-Type or Content-Disposition: a token,
# or a quoted string with backslash escapes (RFC 9110).
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAMETER = re.compile(rf'\s*({_TCHARS})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TCHARS}))\s*')


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """`type; key=value; key="quoted"` read as Go's mime.ParseMediaType reads it (keys
    lower-cased, quoted values unescaped). What Go might read otherwise is refused: duplicate
    keys, RFC 2231 extended and continued parameters (`key*=`, `key*0=`, `key*1*=`, which Go
    joins into `key`), anything malformed."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    while rest.strip():
        match = _PARAMETER.match(rest)
        if not match:
            raise ProtocolError(400, f"Malformed header parameters: {value[:200]!r}")
        key = match.group(1).lower()
        if "*" in key or key in params:
            raise ProtocolError(400, f"Unsupported header parameter {key!r}.")
        quoted = match.group(2)
        params[key] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group(3)
        rest = rest[match.end() :]
        if rest and not rest.startswith(";"):
            raise ProtocolError(400, f"Malformed header parameters: {value[:200]!r}")
        rest = rest[1:]
    return kind.strip().lower(), params


def _ends_delimiter_line(body: bytes, position: int) -> bool:
    """Whether a boundary ending at `position` is followed by optional blanks and CRLF."""
    end = body.find(b"\n", position)
    return end != -1 and body[position:end].lstrip(b" \t") == b"\r"


def _part_headers(body: bytes, position: int) -> tuple[list[bytes], int]:
    """The header lines of the part starting at `position` (folded lines joined; lines may end
    with LF alone, as Go's textproto allows) and where its content starts."""
    lines: list[bytes] = []
    while True:
        end = body.find(b"\n", position)
        if end == -1:
            raise ProtocolError(400, "Truncated multipart/form-data body.")
        line = body[position:end].removesuffix(b"\r")
        position = end + 1
        if not line:
            return lines, position
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] += b" " + line.strip()
        else:
            lines.append(line)


def multipart_field(body: bytes, content_type: str, name: str) -> str | None:
    """The value of the text field `name` of a multipart/form-data body, or None if absent.

    Walks the parts with `bytes.find` (no copy of the uploaded file, which may be 25 MB); only
    the field's own value is copied. It must read the field exactly as Ollama (Go's
    `Request.FormValue`) will, or a key could name one model to the allowlist and another to
    Ollama; so whatever Go might read differently is refused with 400: the field sent twice, a
    transfer encoding, bare-LF delimiters, malformed headers. (Go would also read `model` from
    the query string first: the gateway never forwards it.)
    """
    kind, params = _media_type(content_type)
    boundary = params.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise ProtocolError(400, "Request body must be multipart/form-data with a boundary.")
    dash = b"--" + boundary.encode()
    position = 0 if body.startswith(dash) else body.find(b"\r\n" + dash) + 2
    if position == 1 or not _ends_delimiter_line(body, position + len(dash)):
        raise ProtocolError(400, "multipart/form-data body without a CRLF-ended first boundary.")
    value = None
    while not body.startswith(b"--", position + len(dash)):
        headers, start = _part_headers(body, body.find(b"\n", position) + 1)
        # The part ends at the next CRLF + boundary that ends its line (or closes the body).
        search = start
        while True:
            following = body.find(b"\r\n" + dash, search)
            if following == -1:
                raise ProtocolError(400, "Truncated multipart/form-data body.")
            after = following + 2 + len(dash)
            if body.startswith(b"--", after) or _ends_delimiter_line(body, after):
                break
            search = following + 1
        disposition, encoded = None, False
        for line in headers:
            key, colon, header_value = line.partition(b":")
            if not colon:
                raise ProtocolError(400, "Malformed multipart/form-data part header.")
            key = key.strip().lower()
            if key == b"content-disposition" and disposition is None:
                disposition = header_value.strip().decode("latin-1")
            encoded = encoded or key == b"content-transfer-encoding"
        if disposition is not None and _media_type(disposition)[1].get("name") == name:
            if value is not None or encoded or "filename" in _media_type(disposition)[1]:
                raise ProtocolError(400, f"Field {name!r} must be sent once, as plain text.")
            try:
                value = body[start:following].decode()
            except UnicodeDecodeError:
                raise ProtocolError(400, f"Field {name!r} is not UTF-8 text.") from None
        position = following + 2
    return value
