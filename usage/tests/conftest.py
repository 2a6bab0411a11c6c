"""Usage written through the real write path, and a logged-in admin."""

import time
import uuid
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from usage.services import Exchange, usage_record


@pytest.fixture
def superuser(django_user_model):
    # No password: force_login needs none, and hashing one costs a second per test.
    return django_user_model.objects.create_superuser("root", "root@example.com", None)


@pytest.fixture
def staff_client(client, superuser):
    client.force_login(superuser)
    return client


@pytest.fixture
def record_usage(db, make_key):
    """Record one finished request as the gateway does: `usage_record` fills the rollups too.
    By a key of its own unless `key` is given (`key=None`: refused without a key, which
    counts in the rollups but writes no raw record)."""
    default_key = []

    def record(
        *,
        key="default",
        model="llama3.2",
        status=200,
        latency_ms=100.0,
        ago: timedelta = timedelta(minutes=5),
        started_at: datetime | None = None,
        route="/api/chat",
        **fields,
    ) -> Exchange:
        if key == "default":
            default_key[:] = default_key or [make_key(name="recorder")[0]]
            key = default_key[0]
        exchange = Exchange(
            method="POST",
            route=route,
            request_id=fields.pop("request_id", None) or uuid.uuid4().hex,
            client_addr="127.0.0.1",
            # Latency is measured from `started` (monotonic) to the moment it is written.
            started=time.monotonic() - latency_ms / 1000,
            started_at=started_at or timezone.now() - ago,
            key=key,
            model=model,
            status=status,
            **fields,
        )
        usage_record(exchange)
        return exchange

    return record
