"""What a request body may ask of the shared Ollama server, and a migration aid.

Pure functions on a parsed JSON body (no I/O; Django only to read the settings, and only for a
user key's body that names a server-wide field): `proxy.views` calls `apply_server_policy` once
per request and re-serializes the body only when it got a different object back.

Some request fields act on the whole server, not on one answer: `keep_alive` (0 unloads the model
for everyone, a negative value pins it in memory forever), the runner options below (a value that
differs from the loaded model's forces a reload, for everyone, and can exhaust its memory) and
`shift` (a launch attribute of the runner in current releases: the same). Admin keys set them.
User keys get `keep_alive` clamped to [USER_KEEP_ALIVE_MIN, USER_KEEP_ALIVE_MAX], `num_ctx`
capped at USER_MAX_NUM_CTX (0: not settable) and the others removed, unless USER_SERVER_OPTIONS
names them. The same applies on /v1 routes: Ollama's OpenAI layer ignores these fields today, so
this only matters once a release honours them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Ollama's api.Runner options (api/types.go), current and retired: fixed when a model is loaded.
RUNNER_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "num_thread",
        "draft_num_predict",
        # Older releases' runner options, still worth keeping from user keys.
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
    }
)
# Top-level fields that act on the server. Ollama (Go's encoding/json) matches field names
# case-insensitively, with Unicode folding (U+017F long s is "s"): compared casefolded.
SERVER_FIELDS = frozenset({"keep_alive", "options", "shift"})

# The migration aid: sampling settings given at the top level (as the service this gateway
# replaces takes them) are carried into `options`, where Ollama reads them.
SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "seed", "num_predict")
MIGRATION_ROUTES = frozenset({"/api/generate", "/api/chat"})

_DROP = object()

# Go's time.ParseDuration: an optional sign, then one or more <decimal><unit>.
_DURATION = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


@dataclass(frozen=True)
class ServerPolicy:
    """Bounds on what user keys may ask of the server (admin keys have none)."""

    keep_alive_min: float = 300.0
    # Negative: no upper bound (a user key may pin a model forever).
    keep_alive_max: float = 1800.0
    # 0: user keys cannot set num_ctx; otherwise larger values are lowered to this.
    max_num_ctx: int = 0
    # Server-wide fields and options user keys may set anyway, unchanged.
    user_may_set: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls) -> ServerPolicy:
        from django.conf import settings

        return cls(
            keep_alive_min=settings.USER_KEEP_ALIVE_MIN,
            keep_alive_max=settings.USER_KEEP_ALIVE_MAX,
            max_num_ctx=settings.USER_MAX_NUM_CTX,
            user_may_set=frozenset(settings.USER_SERVER_OPTIONS),
        )

    def keep_alive(self, value):
        """The value sent on, clamped to the bounds; `_DROP` for what Ollama would not parse."""
        if value is None or "keep_alive" in self.user_may_set:
            return value  # null is Ollama's default
        seconds = duration_seconds(value)
        if seconds is None:
            return _DROP
        if seconds < 0:
            seconds = math.inf  # Ollama: negative means forever
        bounded = max(seconds, self.keep_alive_min)
        if self.keep_alive_max >= 0:
            bounded = min(bounded, self.keep_alive_max)
        if bounded == seconds:
            return value
        return int(bounded) if float(bounded).is_integer() else bounded

    def options(self, value):
        if not isinstance(value, dict):
            return value  # Ollama answers 400 itself
        kept = {}
        for name, setting in value.items():
            if name in RUNNER_OPTIONS and name not in self.user_may_set:
                setting = self.num_ctx(setting) if name == "num_ctx" else _DROP
            if setting is not _DROP:
                kept[name] = setting
        return kept

    def num_ctx(self, value):
        if not self.max_num_ctx or not _is_number(value) or value <= 0:
            return _DROP
        return value if value <= self.max_num_ctx else self.max_num_ctx

    def shift(self, value):
        return value if "shift" in self.user_may_set else _DROP


def apply_server_policy(
    payload: dict, *, is_admin: bool, route: str, policy: ServerPolicy | None = None
) -> dict:
    """The body to send Ollama for `payload` on `route` (the upstream path).

    Returns `payload` itself when there is nothing to change; a new dict when sampling settings
    were carried or a user key's body names a server-wide field (`payload` is never modified).
    `policy` defaults to the settings.
    """
    result = carry_sampling_fields(payload) if route in MIGRATION_ROUTES else payload
    if is_admin or not any(key.casefold() in SERVER_FIELDS for key in result):
        return result
    return limit_server_fields(result, policy or ServerPolicy.from_settings())


def limit_server_fields(payload: dict, policy: ServerPolicy) -> dict:
    """A user key's body with the server-wide fields bounded (see the module docstring).

    A body that names one is always rebuilt, even when every value is within bounds: Go merges
    repeated `"options"` objects where Python keeps the last one, so only a body written from
    what was checked is sure to mean the same thing to Ollama.
    """
    if not any(key.casefold() in SERVER_FIELDS for key in payload):
        return payload
    limited = {}
    for key, value in payload.items():
        field = key.casefold()
        if field in SERVER_FIELDS:
            value = getattr(policy, field)(value)
        if value is not _DROP:
            limited[key] = value
    return limited


def carry_sampling_fields(payload: dict) -> dict:
    """Top-level sampling settings (numbers only) moved into `options`, which wins if it sets
    them too. Ollama ignores them at the top level; a body without them is returned as is."""
    carried = [name for name in SAMPLING_FIELDS if _is_number(payload.get(name))]
    options = payload.get("options")
    if not carried or not isinstance(options, dict | None):
        return payload
    options = dict(options or {})
    for name in carried:
        if options.get(name) is None:
            options[name] = payload[name]
    result = {key: value for key, value in payload.items() if key not in carried}
    result["options"] = options
    return result


def duration_seconds(value) -> float | None:
    """`keep_alive` in seconds as Ollama reads it: a number of seconds, or a Go duration string
    ("5m", "1h30m", "-1s"); None for anything Ollama would refuse."""
    if _is_number(value):
        return float(value)
    if not isinstance(value, str):
        return None
    if value in ("0", "+0", "-0"):
        return 0.0
    if not _DURATION.fullmatch(value):
        return None
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(value))
    return -seconds if value.startswith("-") else seconds


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
