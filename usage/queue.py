"""Sharing the GPU: a slot per running generation, and a fair queue for the rest.

A generation route (`ProxyView.generation`) takes a slot on the server it goes to before
contacting it, when that server has a `parallel` limit or the key a `max_concurrent` cap; it
gives the slot back with the request's backend lease (`proxy.backends.Lease`), whichever way the
request ends. When no slot is free the request waits, holding a socket and a future: no thread,
no database connection. When a slot frees, the waiting request of the key with the fewest
generations running goes next, then interactive before batch, then first come; a batch request
waits while an interactive one waits for the same server. Among keys still tied, the one served
least recently goes first, so saturating keys take turns.

PostgreSQL (the ASGI server's pool): the state is the `usage_slot` table, shared by every
process and replica, and every decision is one call of a function of migration
usage/0007_queue_functions (one round trip, one transaction under one advisory lock). A grant
sends `NOTIFY gateway_queue, '<slot id>'`; each process LISTENs on one connection of its own
and wakes the request it belongs to. Rows are leases: their process renews them every
QUEUE_LEASE_SECONDS / 3 seconds, so the slots of a killed process expire within
QUEUE_LEASE_SECONDS and the next decision reaps them. A waiting request re-checks every
QUEUE_RECHECK_SECONDS in case a notification was lost.

Elsewhere (SQLite, Django's test client) the queue lives in this process's memory, with the
same order: exact for one process, which is all SQLite serves.
"""

import asyncio
import contextlib
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field

import psycopg
from django.conf import settings
from django.db import DatabaseError, connection
from rest_framework.exceptions import APIException

from ollama_gateway import db, runtime
from usage import metrics
from usage.limits import RateLimited

logger = logging.getLogger("usage.queue")

CHANNEL = "gateway_queue"
DEGRADED_RECHECK_SECONDS = 0.5
INTERACTIVE = "interactive"


class ServersBusy(APIException):
    """QUEUE_TIMEOUT passed while the servers were busy: 503 with Retry-After."""

    status_code = 503
    default_detail = "The Ollama servers are busy; try again later."
    default_code = "servers_busy"

    def __init__(self, wait: int):
        super().__init__()
        self.wait = wait


def _retry_after() -> int:
    return max(1, math.ceil(min(settings.QUEUE_TIMEOUT, 30)))


def queue_applies(key, state) -> bool:
    """Whether a generation of `key` on `state` goes through the queue (else: nothing to pay)."""
    return state.parallel is not None or key.max_concurrent is not None


@dataclass(eq=False)
class Slot:
    """A request's place on a server: given back once (`release`), with its backend lease."""

    id: int
    scheduler: object
    waited: float = 0.0
    _held: bool = field(default=True, repr=False)

    def release(self) -> None:
        if self._held:
            self._held = False
            self.scheduler.release(self.id)


async def slot_acquire(*, key, state, exchange=None) -> Slot | None:
    """Wait for a slot on `state` for a generation of `key`; None when no queue applies.

    Raises `RateLimited` (429: the key's own cap held it back) or `ServersBusy` (503) after
    QUEUE_TIMEOUT seconds. Cancelled (the client went away), it leaves the queue at once.
    """
    if not queue_applies(key, state):
        return None
    scheduler = _scheduler()
    started = time.monotonic()
    # Counted in the server's load from now on (routing of the next requests), until the
    # request's backend lease counts it in flight.
    state.waiting += 1
    try:
        slot_id, queued = await scheduler.acquire(key, state)
    except ServersBusy:
        if exchange is not None:
            exchange.outcome = "busy"
        raise
    finally:
        state.waiting -= 1
        # Recorded however the wait ended (a queue timeout included).
        waited = time.monotonic() - started
        metrics.QUEUE_WAIT.labels(state.name).observe(waited)
        if exchange is not None:
            exchange.queue_wait_ms = waited * 1000
    slot = Slot(slot_id, scheduler, waited=waited)
    if queued:
        # It waited: its key may have been revoked meanwhile, or its tokens spent by the
        # requests that ran before it. Checked again before it runs (queued requests only).
        try:
            from keys.authentication import areadmit

            await areadmit(key, exchange)
        except BaseException:
            slot.release()
            raise
    return slot


class _Scheduler:
    """The waiting, common to both stores; subclasses make the decisions."""

    def __init__(self):
        self.waiting: dict[int, asyncio.Future] = {}

    async def acquire(self, key, state) -> tuple[int, bool]:
        """The slot's id, and whether it waited in the queue for it."""
        slot_id = secrets.randbits(62) or 1
        loop = asyncio.get_running_loop()
        woken = self.waiting[slot_id] = loop.create_future()
        queued = False
        in_queue = True  # until it runs or has left: then the slot's owner releases it
        try:
            await self.started()
            if await self.enter(slot_id, key, state):
                in_queue = False
                return slot_id, False
            queued = True
            metrics.QUEUE_DEPTH.labels(state.name).inc()
            deadline = time.monotonic() + settings.QUEUE_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    running = await self.leave(slot_id, key.pk)
                    in_queue = False
                    if running < 0:
                        return slot_id, True  # granted as time ran out
                    if key.max_concurrent is not None and running >= key.max_concurrent:
                        raise RateLimited(
                            "This key's concurrent generations are at their limit.",
                            wait=_retry_after(),
                        )
                    raise ServersBusy(_retry_after())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self.recheck_interval())):
                        await asyncio.shield(woken)
                    in_queue = False
                    return slot_id, True
                if await self.check(slot_id):
                    in_queue = False
                    return slot_id, True
        finally:
            # Cancelled (the client left), or the database failed: leave the queue now.
            if in_queue:
                self.release(slot_id)
            self.waiting.pop(slot_id, None)
            if queued:
                metrics.QUEUE_DEPTH.labels(state.name).dec()

    def recheck_interval(self) -> float:
        return settings.QUEUE_RECHECK_SECONDS

    def wake(self, slot_id: int) -> None:
        woken = self.waiting.get(slot_id)
        if woken is not None and not woken.done():
            woken.set_result(True)

    async def started(self) -> None:
        pass


class _Postgres(_Scheduler):
    """The shared queue in PostgreSQL (see the module docstring)."""

    def __init__(self):
        super().__init__()
        # Who renews the rows: this process (the pid tells apart forked workers).
        self.holder = f"{os.getpid()}-{secrets.token_hex(6)}"
        self.held: set[int] = set()
        self.listening = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.first_listen = 0.0

    async def started(self) -> None:
        if not self.tasks:
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(self._listen()), loop.create_task(self._renew())]
            self.first_listen = time.monotonic() + 5
        elif self.tasks[0].done():  # the listener failed on something unforeseen: again
            self.tasks[0] = asyncio.get_running_loop().create_task(self._listen())
        # A process's first generations wait (5 s at most) for its LISTEN, so that no grant
        # goes unheard. Later, while the listener reconnects, requests rely on their re-checks.
        remaining = self.first_listen - time.monotonic()
        if remaining > 0 and not self.listening.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.listening.wait()

    def recheck_interval(self) -> float:
        # Without a listening connection (the database refused one, or it is reconnecting)
        # no wake-up comes: waiting requests re-check often until it is back.
        if self.listening.is_set():
            return settings.QUEUE_RECHECK_SECONDS
        return min(settings.QUEUE_RECHECK_SECONDS, DEGRADED_RECHECK_SECONDS)

    async def enter(self, slot_id, key, state) -> bool:
        self.held.add(slot_id)
        row = await db.fetchone(
            "SELECT gateway_queue_enter(%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                slot_id,
                state.name,
                key.pk,
                key.priority,
                key.max_concurrent,
                state.parallel,
                self.holder,
                settings.QUEUE_LEASE_SECONDS,
            ],
        )
        return bool(row[0])

    async def leave(self, slot_id, key_id) -> int:
        row = await db.fetchone("SELECT gateway_queue_leave(%s, %s)", [slot_id, key_id])
        if row[0] >= 0:
            self.held.discard(slot_id)
        return row[0]

    async def check(self, slot_id) -> bool:
        row = await db.fetchone("SELECT gateway_queue_check(%s)", [slot_id])
        if row[0] is None:
            # Its lease expired (this process could not renew it): queue again is unfair,
            # running without a slot is worse.
            raise ServersBusy(_retry_after())
        return row[0]

    def release(self, slot_id: int) -> None:
        """Give the slot back (and grant the next); after the answer, off the caller's path."""
        self.held.discard(slot_id)
        runtime.spawn(self._release(slot_id))

    async def _release(self, slot_id: int) -> None:
        try:
            await db.fetchone("SELECT gateway_queue_release(%s)", [slot_id])
        except DatabaseError:
            logger.warning("could not release a slot; its lease will expire", exc_info=True)

    async def _listen(self) -> None:
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(**db._connect_kwargs())
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if self.waiting:
                        # Grants sent while nobody listened: look them up once.
                        runtime.spawn(self._wake_granted())
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            self.wake(int(note.payload))
            except (psycopg.Error, OSError) as exc:
                logger.warning("queue listener lost its connection (%s)", type(exc).__name__)
            finally:
                self.listening.clear()
            # Waiting requests re-check meanwhile; the next grant decision is theirs too.
            await asyncio.sleep(1)

    async def _wake_granted(self) -> None:
        with contextlib.suppress(DatabaseError):
            row = await db.fetchone(
                "SELECT array_agg(id) FROM usage_slot "
                "WHERE id = ANY(%s) AND granted_at IS NOT NULL",
                [list(self.waiting)],
            )
            for slot_id in row[0] or ():
                self.wake(slot_id)

    async def _renew(self) -> None:
        renewed = time.monotonic()
        while True:
            # Woken often, renewing every third of a lease, and only while it holds rows.
            await asyncio.sleep(min(1.0, settings.QUEUE_LEASE_SECONDS / 6))
            if not self.held:
                renewed = time.monotonic()  # new rows come with a full lease
                continue
            if time.monotonic() - renewed < settings.QUEUE_LEASE_SECONDS / 3:
                continue
            renewed = time.monotonic()
            try:
                await db.fetchone(
                    "SELECT gateway_queue_renew(%s, %s)",
                    [self.holder, settings.QUEUE_LEASE_SECONDS],
                )
            except DatabaseError:
                logger.warning("could not renew this process's slots", exc_info=True)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []


@dataclass(eq=False)
class _Entry:
    backend: str
    key_id: int
    priority: str
    max_concurrent: int | None
    parallel: int | None
    order: int
    granted: bool = False
    loop: asyncio.AbstractEventLoop | None = None


class _Memory(_Scheduler):
    """The same queue in this process's memory (SQLite: one process). Requests may come from
    different loops (Django's test client): a lock guards the state, wake-ups cross loops."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.entries: dict[int, _Entry] = {}
        self.arrivals = 0
        # Per key, when it last got a slot through the queue (a grant counter): turns.
        self.turns: dict[int, int] = {}

    def _running(self, **where) -> int:
        ((name, value),) = where.items()
        return sum(1 for e in self.entries.values() if e.granted and getattr(e, name) == value)

    def _grantable(self, entry: _Entry) -> bool:
        return (
            entry.parallel is None or self._running(backend=entry.backend) < entry.parallel
        ) and self._under_cap(entry)

    def _under_cap(self, entry: _Entry) -> bool:
        return (
            entry.max_concurrent is None
            or self._running(key_id=entry.key_id) < entry.max_concurrent
        )

    def _grant(self) -> None:
        """The grant of usage/0007_queue_functions, in Python: one at a time while one can."""
        while True:
            waiting = [e for e in self.entries.items() if not e[1].granted]
            interactive = {
                e.backend for _, e in waiting if e.priority == INTERACTIVE and self._under_cap(e)
            }
            candidates = [
                (i, e)
                for i, e in waiting
                if self._grantable(e)
                and (e.priority == INTERACTIVE or e.backend not in interactive)
            ]
            if not candidates:
                return
            slot_id, entry = min(
                candidates,
                key=lambda c: (
                    self._running(key_id=c[1].key_id),
                    c[1].priority != INTERACTIVE,
                    self.turns.get(c[1].key_id, -1),
                    c[1].order,
                ),
            )
            entry.granted = True
            self.arrivals += 1
            self.turns[entry.key_id] = self.arrivals
            woken = self.waiting.get(slot_id)
            if woken is not None and entry.loop is not None:
                entry.loop.call_soon_threadsafe(self._wake, woken)

    @staticmethod
    def _wake(woken) -> None:
        if not woken.done():
            woken.set_result(True)

    async def enter(self, slot_id, key, state) -> bool:
        with self.lock:
            self.arrivals += 1
            entry = _Entry(
                state.name,
                key.pk,
                key.priority,
                key.max_concurrent,
                state.parallel,
                self.arrivals,
                loop=asyncio.get_running_loop(),
            )
            self.entries[slot_id] = entry
            self._grant()
            return entry.granted

    async def leave(self, slot_id, key_id) -> int:
        with self.lock:
            entry = self.entries.get(slot_id)
            if entry is not None and entry.granted:
                return -1
            self.entries.pop(slot_id, None)
            self._grant()
            return self._running(key_id=key_id)

    async def check(self, slot_id) -> bool:
        with self.lock:
            entry = self.entries.get(slot_id)
            return entry is not None and entry.granted

    def release(self, slot_id: int) -> None:
        with self.lock:
            if self.entries.pop(slot_id, None) is not None:
                self._grant()

    async def close(self) -> None:
        pass


_memory = _Memory()
_postgres: dict[asyncio.AbstractEventLoop, _Postgres] = {}


def _scheduler() -> _Scheduler:
    if not db.pooled():
        return _memory
    loop = asyncio.get_running_loop()
    scheduler = _postgres.get(loop)
    if scheduler is None:
        scheduler = _postgres[loop] = _Postgres()
    return scheduler


async def close_queue() -> None:
    """At shutdown (ASGI lifespan): stop this loop's listener and lease renewal."""
    scheduler = _postgres.pop(asyncio.get_running_loop(), None)
    if scheduler is not None:
        await scheduler.close()


def queue_snapshot() -> list[dict]:
    """Per server: generations running and requests waiting now (the dashboard)."""
    from django.db.models import Count, Q

    from usage.models import Slot as SlotRow

    if connection.vendor != "postgresql":
        with _memory.lock:
            entries = list(_memory.entries.values())
        names = sorted({e.backend for e in entries})
        return [
            {
                "backend": name,
                "running": sum(1 for e in entries if e.backend == name and e.granted),
                "waiting": sum(1 for e in entries if e.backend == name and not e.granted),
            }
            for name in names
        ]
    rows = (
        SlotRow.objects.values("backend")
        .annotate(
            running=Count("id", filter=Q(granted_at__isnull=False)),
            waiting=Count("id", filter=Q(granted_at__isnull=True)),
        )
        .order_by("backend")
    )
    return list(rows)
