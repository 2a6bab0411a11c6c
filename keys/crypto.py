"""API key material: generation, the stored digest and the visible preview.

A key is `ollama-` followed by 43 URL-safe characters (32 random bytes). The database keeps only
its SHA-256 digest and a short preview. A salted slow hash (bcrypt, argon2) protects low-entropy
passwords against guessing; a 256-bit random key cannot be guessed, so one fast digest is as safe
and keeps authentication to a single indexed lookup on every proxied request.
"""

import hashlib
import re
import secrets

KEY_PREFIX = "ollama-"
SECRET_BYTES = 32
# "ollama-" + 8 characters of the secret: enough to tell keys apart in lists, useless to an attacker
# (48 of 256 bits).
PREVIEW_LENGTH = len(KEY_PREFIX) + 8


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def key_preview(raw_key: str) -> str:
    return raw_key[:PREVIEW_LENGTH]


def looks_like_key(raw_key: str) -> bool:
    """Cheap shape check, so that garbage never costs a database query."""
    return raw_key.startswith(KEY_PREFIX) and len(raw_key) <= 256


# Anything in a text that could be a whole key: the prefix and more characters than a preview.
_RAW_KEY = re.compile(
    re.escape(KEY_PREFIX) + rf"([A-Za-z0-9_-]{{{PREVIEW_LENGTH - len(KEY_PREFIX)}}})[A-Za-z0-9_-]+"
)


def is_raw_key(value: str) -> bool:
    """Whether `value` is a whole key (longer than a preview), not a preview."""
    return looks_like_key(value) and len(value) > PREVIEW_LENGTH


def redact_keys(text: str) -> str:
    """`text` with every raw key in it cut to its preview and an ellipsis: safe to store or log."""
    return _RAW_KEY.sub(lambda m: f"{KEY_PREFIX}{m.group(1)}…", text)
