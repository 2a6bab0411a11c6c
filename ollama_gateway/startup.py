"""What every start does before serving: the table set, the demo keys, the Ollama servers."""

import contextlib

from django.core.management import call_command
from django.db import connection

# Replicas starting together take turns: one migrates, the others then find nothing to do.
_STARTUP_LOCK = 0x0117A3A


@contextlib.contextmanager
def _one_replica_at_a_time():
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [_STARTUP_LOCK])
        try:
            yield
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_STARTUP_LOCK])


def prepare() -> None:
    from keys.services import demo_keys_ensure
    from proxy.services import backends_bootstrap

    with _one_replica_at_a_time():
        call_command("migrate", interactive=False, verbosity=0)
        demo_keys_ensure()
        backends_bootstrap()
