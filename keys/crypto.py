"""API key material: generation, the stored digest and the visible preview.

A key is `ollama-` followed by 43 URL-safe characters (32 random bytes). The database keeps only
its SHA-256 digest and a short preview. A salted slow hash (bcrypt, argon2) protects low-entropy
passwords against guessing; a 256-bit random key cannot be guessed, so one fast digest is as safe
and keeps authentication to a single indexed lookup on every proxied request.
"""

import hashlib
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
