"""The fake's models: which exist, which are loaded, which blobs were uploaded, and their shapes.

The list of existing models is ``FakeConfig.models`` itself (pull, create, copy and delete edit
it), so a test can both set it and see what the API did to it. Everything Ollama reports about a
model (digest, size, family...) is derived from its name, so answers are stable across runs.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from datetime import UTC, datetime

from .wire import ApiError

DEFAULT_KEEP_ALIVE = 300.0  # Ollama keeps a model loaded 5 minutes after its last use.
# Ollama reports a model kept alive "forever" (negative keep_alive) with an expiry centuries away.
KEEP_FOREVER = 1e10
CONTEXT_LENGTH = 4096
MODIFIED_AT = datetime(2025, 1, 1, tzinfo=UTC)
TEMPLATE = "{{ if .System }}{{ .System }}\n{{ end }}{{ .Prompt }}"

_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_IN_TAG = re.compile(r"(\d+(?:\.\d+)?)([bm])\b")


def rfc3339(epoch: float) -> str:
    """A UTC timestamp the way Ollama writes them (Go's RFC 3339 with fractional seconds)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def with_tag(name: str) -> str:
    """``name`` with Ollama's default tag when it has none: ``llama3.2`` -> ``llama3.2:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def canonical(name: str) -> str:
    """The form two names are compared in: Ollama matches names case-insensitively."""
    return with_tag(name.strip()).lower()


def is_embedding(name: str) -> bool:
    """Whether the fake treats ``name`` as an embedding-only model."""
    return "embed" in name.lower()


def digest(name: str) -> str:
    """A stable 64-hex digest per model name."""
    return hashlib.sha256(canonical(name).encode()).hexdigest()


def keep_alive_seconds(value: object) -> float:
    """Parse ``keep_alive`` like Ollama: seconds as a number, or a Go duration such as ``"5m"``.

    ``None`` means the default; a negative value means forever.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _go_duration(value)
    else:
        raise ApiError(400, f"json: cannot unmarshal {type(value).__name__} into keep_alive")
    return KEEP_FOREVER if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    body = text[1:] if text.startswith(("+", "-")) else text
    if body == "0":
        return 0.0
    parts = _DURATION_PART.findall(body)
    if not parts or "".join(number + unit for number, unit in parts) != body:
        raise ApiError(400, f'time: invalid duration "{text}"')
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    return -seconds if text.startswith("-") else seconds


def _base(name: str) -> str:
    return name.rsplit("/", 1)[-1].split(":", 1)[0].lower()


def _family(name: str) -> str:
    if is_embedding(name):
        return "nomic-bert" if "nomic" in name.lower() else "bert"
    match = re.match(r"[a-z]+", _base(name))
    return match.group() if match else "llama"


def _parameters(name: str) -> tuple[str, int]:
    """The parameter size label and count: from a tag such as ``0.5b``, else a typical size."""
    match = _SIZE_IN_TAG.search(with_tag(name).rsplit(":", 1)[-1].lower())
    if match:
        number, unit = float(match.group(1)), match.group(2)
    else:
        number, unit = (137.0, "m") if is_embedding(name) else (3.2, "b")
    count = int(number * (1e9 if unit == "b" else 1e6))
    return f"{number:g}{unit.upper()}", count


def _size(name: str) -> int:
    return 100_000_000 + int(digest(name)[:8], 16) % 4_000_000_000


def _details(name: str) -> dict:
    family = _family(name)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": _parameters(name)[0],
        "quantization_level": "F16" if is_embedding(name) else "Q4_K_M",
    }


def _summary(name: str) -> dict:
    return {
        "name": name,
        "model": name,
        "size": _size(name),
        "digest": digest(name),
        "details": _details(name),
    }


def tag_entry(name: str) -> dict:
    """One model of ``GET /api/tags``."""
    entry = _summary(name)
    entry["modified_at"] = rfc3339(MODIFIED_AT.timestamp())
    return entry


def running_entry(name: str, expires_at: float) -> dict:
    """One model of ``GET /api/ps``."""
    entry = _summary(name)
    entry.update(
        expires_at=rfc3339(expires_at), size_vram=entry["size"], context_length=CONTEXT_LENGTH
    )
    return entry


def show_body(name: str) -> dict:
    """The answer of ``POST /api/show``."""
    family = _family(name)
    capabilities = ["embedding"] if is_embedding(name) else ["completion", "tools"]
    return {
        "license": "",
        "modelfile": f'# Modelfile generated by "ollama show"\nFROM {name}\n'
        f'TEMPLATE """{TEMPLATE}"""\n',
        "parameters": "",
        "template": TEMPLATE,
        "details": _details(name),
        "model_info": {
            "general.architecture": family,
            "general.parameter_count": _parameters(name)[1],
            f"{family}.context_length": CONTEXT_LENGTH,
        },
        "capabilities": capabilities,
        "modified_at": rfc3339(MODIFIED_AT.timestamp()),
    }


def openai_model(name: str) -> dict:
    """One model of ``GET /v1/models``; the owner is the name's namespace, as in Ollama."""
    parts = name.split("/")
    return {
        "id": name,
        "object": "model",
        "created": int(MODIFIED_AT.timestamp()),
        "owned_by": parts[-2] if len(parts) > 1 else "library",
    }


class Catalog:
    """Thread-safe model state shared by all requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[str, float] = {}  # model name -> expiry (epoch seconds)
        self._blobs: set[str] = set()

    def clear(self) -> None:
        """Forget loaded models and uploaded blobs."""
        with self._lock:
            self._loaded.clear()
            self._blobs.clear()

    def find(self, models: list[str], name: str) -> str | None:
        """The entry of ``models`` that ``name`` designates, or None."""
        wanted = canonical(name)
        with self._lock:
            return next((model for model in models if canonical(model) == wanted), None)

    def add(self, models: list[str], name: str) -> None:
        """Make ``name`` exist (pull, create, copy); existing names are left alone."""
        with self._lock:
            if all(canonical(model) != canonical(name) for model in models):
                models.append(with_tag(name))

    def remove(self, models: list[str], name: str) -> None:
        """Delete the model ``name`` designates, unloading it."""
        with self._lock:
            gone = [model for model in models if canonical(model) == canonical(name)]
            models[:] = [model for model in models if model not in gone]
            for model in gone:
                self._loaded.pop(model, None)

    def load(self, name: str, keep_alive: float) -> None:
        """Mark ``name`` as loaded for ``keep_alive`` seconds (0 unloads it)."""
        with self._lock:
            if keep_alive > 0:
                self._loaded[name] = time.time() + keep_alive
            else:
                self._loaded.pop(name, None)

    def running(self) -> list[tuple[str, float]]:
        """Loaded models and their expiry, dropping those that expired."""
        now = time.time()
        with self._lock:
            for name in [name for name, expiry in self._loaded.items() if expiry <= now]:
                del self._loaded[name]
            return sorted(self._loaded.items())

    def has_blob(self, blob_digest: str) -> bool:
        """Whether a blob was uploaded under ``blob_digest`` (``sha256:<hex>``)."""
        with self._lock:
            return blob_digest in self._blobs

    def add_blob(self, blob_digest: str) -> None:
        """Remember an uploaded blob."""
        with self._lock:
            self._blobs.add(blob_digest)
