"""Write paths for API keys. The REST API, the admin and the commands all call these."""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from keys import crypto
from keys.models import ApiKey

logger = logging.getLogger(__name__)

ROLES = ", ".join(ApiKey.Role.values)
PRIORITIES = ", ".join(ApiKey.Priority.values)
# The columns' ranges (PositiveIntegerField, PositiveBigIntegerField).
MAX_RATE_LIMIT = 2**31 - 1
MAX_TOKEN_QUOTA = 2**63 - 1
MAX_CONCURRENT = 2**31 - 1


def default_rate_limit(role: str) -> int:
    if role == ApiKey.Role.ADMIN:
        return settings.DEFAULT_RATE_LIMIT_ADMIN
    return settings.DEFAULT_RATE_LIMIT_USER


def api_key_validate(
    *,
    name: str,
    role: str,
    rate_limit: int | None,
    expires_at: datetime | None,
    allowed_models: list[str],
    token_quota: int | None = None,
    max_concurrent: int | None = None,
    priority: str = ApiKey.Priority.INTERACTIVE,
    tokens_per_minute: int | None = None,
) -> None:
    """Raise ValidationError naming each bad field and what it accepts."""
    errors = {}
    if not name or not name.strip():
        errors["name"] = "This field is required."
    elif len(name) > 100:
        errors["name"] = "Ensure this field has no more than 100 characters."
    if role not in ApiKey.Role.values:
        errors["role"] = f'"{role}" is not a valid role; allowed values: {ROLES}.'
    if rate_limit is not None and (
        isinstance(rate_limit, bool) or not 0 < rate_limit <= MAX_RATE_LIMIT
    ):
        errors["rate_limit"] = f"Must be a number of requests per hour from 1 to {MAX_RATE_LIMIT}."
    if token_quota is not None and (
        isinstance(token_quota, bool) or not 0 < token_quota <= MAX_TOKEN_QUOTA
    ):
        errors["token_quota"] = "Must be a positive number of tokens per day, or empty."  # noqa: S105
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not 0 < max_concurrent <= MAX_CONCURRENT
    ):
        errors["max_concurrent"] = "Must be a positive number of generations, or empty."
    if priority not in ApiKey.Priority.values:
        errors["priority"] = f'"{priority}" is not a valid priority; allowed values: {PRIORITIES}.'
    if tokens_per_minute is not None and (
        isinstance(tokens_per_minute, bool) or not 0 < tokens_per_minute <= MAX_TOKEN_QUOTA
    ):
        errors["tokens_per_minute"] = "Must be a positive number of tokens per minute, or empty."
    if expires_at is not None:
        if timezone.is_naive(expires_at):
            errors["expires_at"] = "Must include a time zone."
        elif expires_at <= timezone.now():
            errors["expires_at"] = "Must be in the future."
    if not isinstance(allowed_models, list) or not all(
        isinstance(m, str) and m.strip() for m in allowed_models
    ):
        errors["allowed_models"] = "Must be a list of model names."
    if errors:
        raise ValidationError(errors)


def api_key_create(
    *,
    name: str,
    role: str = ApiKey.Role.USER,
    rate_limit: int | None = None,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    token_quota: int | None = None,
    max_concurrent: int | None = None,
    priority: str = ApiKey.Priority.INTERACTIVE,
    tokens_per_minute: int | None = None,
    created_by: str = "",
) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which exists nowhere else afterwards."""
    allowed_models = [m.strip() for m in allowed_models or []]
    api_key_validate(
        name=name,
        role=role,
        rate_limit=rate_limit,
        expires_at=expires_at,
        allowed_models=allowed_models,
        token_quota=token_quota,
        max_concurrent=max_concurrent,
        priority=priority,
        tokens_per_minute=tokens_per_minute,
    )
    for _attempt in range(3):
        raw = crypto.generate_key()
        key = ApiKey(
            name=name.strip(),
            role=role,
            rate_limit=rate_limit or default_rate_limit(role),
            expires_at=expires_at,
            allowed_models=allowed_models,
            token_quota=token_quota,
            max_concurrent=max_concurrent,
            priority=priority,
            tokens_per_minute=tokens_per_minute,
            created_by=created_by,
            preview=crypto.key_preview(raw),
            key_hash=crypto.hash_key(raw),
        )
        try:
            with transaction.atomic():
                key.save()
        except IntegrityError:
            # Two keys sharing their first 8 characters: vanishingly rare, draw again.
            continue
        logger.info("api key created", extra={"key_preview": key.preview, "role": role})
        return key, raw
    raise RuntimeError("could not generate a unique API key")


def api_key_revoke(*, preview: str = "", raw_key: str = "") -> ApiKey:
    """Revoke for good the key with this preview, or this whole key (found by its digest).

    Raises ApiKey.DoesNotExist. Revoking twice is harmless.
    """
    if raw_key:
        key = ApiKey.objects.get(key_hash=crypto.hash_key(raw_key))
    else:
        key = ApiKey.objects.get(preview=preview)
    if key.is_active:
        key.is_active = False
        key.revoked_at = timezone.now()
        key.save(update_fields=["is_active", "revoked_at"])
        logger.info("api key revoked", extra={"key_preview": key.preview})
    return key


def api_key_authenticate(raw_key: str) -> ApiKey | None:
    """The key a raw value belongs to, whatever its state; None if unknown. One indexed query."""
    if not crypto.looks_like_key(raw_key):
        return None
    # Sliced, not .first(): that would add an ORDER BY to a unique-index lookup.
    found = list(ApiKey.objects.filter(key_hash=crypto.hash_key(raw_key)).order_by()[:1])
    return found[0] if found else None


def _touch_due(key: ApiKey, now) -> bool:
    resolution = timedelta(seconds=settings.API_KEY_LAST_USED_RESOLUTION)
    return key.last_used_at is None or now - key.last_used_at >= resolution


def api_key_touch(key: ApiKey) -> None:
    """Record use, at most once per resolution window, so most requests pay no write."""
    now = timezone.now()
    if _touch_due(key, now):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


_TOUCH = f"UPDATE {ApiKey._meta.db_table} SET last_used_at = %s WHERE id = %s"


async def aapi_key_touch(key: ApiKey) -> None:
    """`api_key_touch` from the event loop, written after the answer (it decides nothing)."""
    from ollama_gateway import db, runtime

    now = timezone.now()
    if not _touch_due(key, now):
        return
    key.last_used_at = now
    if db.pooled():
        write = db.fetchone(_TOUCH, [now, key.pk])
    else:
        write = db.in_thread(ApiKey.objects.filter(pk=key.pk).update)(last_used_at=now)
    await runtime.after_response(_logged(write))


async def _logged(write) -> None:
    try:
        await write
    except DatabaseError:
        logger.warning("could not record a key's last use", exc_info=True)


def demo_keys_ensure() -> None:
    """Insert DEMO_ADMIN_KEY / DEMO_USER_KEY from the environment; idempotent, run at start."""
    for raw, role in (
        (settings.DEMO_ADMIN_KEY, ApiKey.Role.ADMIN),
        (settings.DEMO_USER_KEY, ApiKey.Role.USER),
    ):
        if not raw:
            continue
        if not crypto.looks_like_key(raw) or len(raw) < len(crypto.KEY_PREFIX) + 32:
            raise ValidationError(
                f"DEMO_{role.upper()}_KEY must start with {crypto.KEY_PREFIX!r} and carry at "
                "least 32 random characters."
            )
        ApiKey.objects.get_or_create(
            key_hash=crypto.hash_key(raw),
            defaults={
                "name": f"demo-{role}",
                "role": role,
                "rate_limit": default_rate_limit(role),
                "preview": crypto.key_preview(raw),
                "created_by": "environment",
            },
        )
