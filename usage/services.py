"""Usage: how much each key consumed. Records are written by `usage_record` only."""

import logging
import time
from dataclasses import dataclass, field

from django.utils import timezone

from usage.models import UsageRecord

logger = logging.getLogger("usage")

Outcome = UsageRecord.Outcome


def outcome_for_status(status: int) -> str:
    if status < 400:
        return Outcome.OK
    if status in (401, 403):
        return Outcome.DENIED
    if status == 429:
        return Outcome.RATE_LIMITED
    if status == 504:
        return Outcome.TIMEOUT
    if status < 500:
        return Outcome.BAD_REQUEST
    return Outcome.UPSTREAM_ERROR


@dataclass
class Exchange:
    """What one API request did, filled in as it goes and written once when it ends."""

    method: str
    route: str
    request_id: str
    client_addr: str | None
    started: float = field(default_factory=time.monotonic)
    started_at: object = field(default_factory=timezone.now)
    key: object = None
    model: str = ""
    status: int = 0
    outcome: str = ""
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # A streamed answer is recorded by its relay when it ends, not when the view returns.
    deferred: bool = False
    recorded: bool = False


def usage_record(exchange: Exchange) -> None:
    """Write the record of a finished request (once; a second call is a no-op). One INSERT."""
    if exchange.recorded:
        return
    exchange.recorded = True
    latency_ms = (time.monotonic() - exchange.started) * 1000
    UsageRecord.objects.create(
        key=exchange.key,
        started_at=exchange.started_at,
        method=exchange.method,
        route=exchange.route,
        model=exchange.model[:200],
        status=exchange.status,
        outcome=exchange.outcome or outcome_for_status(exchange.status),
        latency_ms=latency_ms,
        ttft_ms=exchange.ttft_ms,
        prompt_tokens=exchange.prompt_tokens,
        completion_tokens=exchange.completion_tokens,
        request_id=exchange.request_id,
        client_addr=exchange.client_addr,
    )
    logger.info(
        "%s %s %s %s %.1fms",
        exchange.method,
        exchange.route,
        exchange.status,
        exchange.outcome or outcome_for_status(exchange.status),
        latency_ms,
        extra={
            "request_id": exchange.request_id,
            "key_preview": getattr(exchange.key, "preview", None),
            "model": exchange.model,
            "client_addr": exchange.client_addr,
        },
    )
