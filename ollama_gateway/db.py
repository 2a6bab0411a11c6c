"""The hot path's SQL from the event loop: an async psycopg pool, a connection per statement.

Under the ASGI server on PostgreSQL, each worker has one `AsyncConnectionPool`; a request takes
a connection only for the one statement it runs (the key lookup with its rate-limit count, the
usage record with its rollups) and gives it back at once. Nothing holds a connection while it
waits on Ollama or on a client, so the pool's size no longer bounds how many requests run.

Everywhere else (SQLite, Django's test client, WSGI), callers run the same work through
Django's own connection in a thread (`in_thread`): SQLite has no async driver, and tests'
transactions must see what the code writes.

psycopg's errors come out as Django's (`OperationalError`, `DatabaseError`), so one handler
answers 503 whichever way the statement went.
"""

import asyncio
import functools
import logging

import psycopg
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, connections
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ollama_gateway import runtime

logger = logging.getLogger("ollama_gateway.db")

_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
# Statements sent through the pool by this process (tests count a request's round trips).
statements_sent = 0


@functools.cache
def wrapper():
    """Django's database wrapper, for what needs no connection (its vendor, its value
    adaptation). On the event loop each request is a context of its own, and
    `django.db.connection` there builds a new wrapper per context: this is built once."""
    return connections["default"]


def pooled() -> bool:
    """Whether this call runs on the async pool (else: `in_thread`)."""
    return wrapper().vendor == "postgresql" and runtime.serving()


def in_thread(function):
    """`function` (which uses Django's connection) as a coroutine run in a worker thread."""
    return sync_to_async(function, thread_sensitive=True)


def _connect_kwargs() -> dict:
    db = connection.settings_dict
    kwargs = {
        "dbname": db["NAME"],
        "user": db["USER"] or None,
        "password": db["PASSWORD"] or None,
        "host": db["HOST"] or None,
        "port": db["PORT"] or None,
        "autocommit": True,
        "connect_timeout": db.get("OPTIONS", {}).get("connect_timeout", 5),
    }
    return {k: v for k, v in kwargs.items() if v is not None}


def _pool() -> AsyncConnectionPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        options = settings.DATABASES["default"].get("OPTIONS", {}).get("pool") or {}
        pool = AsyncConnectionPool(
            kwargs=_connect_kwargs(),
            min_size=options.get("min_size", 1),
            max_size=options.get("max_size", 20),
            timeout=options.get("timeout", 5.0),
            max_idle=options.get("max_idle", 60.0),
            open=False,
            name="hot-path",
        )
        _pools[loop] = pool
    return pool


async def close_pool() -> None:
    pool = _pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


async def fetchone(sql: str, params, *, patient: bool = False) -> tuple | None:
    """Run one statement on a pooled connection; its first row (None if it returns none).

    A connection found dead (a database restart, a terminated backend) is dropped by the pool
    and the statement is tried once more on a fresh one: records must survive such faults. A
    statement whose connection died after it committed could be counted twice; losing it is
    worse.

    `patient` (work done after the answer went out, like a usage record): a pool timeout or
    a lost connection is retried for up to a minute, with backoff, instead of failing.
    """
    global statements_sent
    statements_sent += 1
    pool = _pool()
    if pool.closed:
        await pool.open(wait=False)
    attempts = 8 if patient else 2
    for attempt in range(1, attempts + 1):
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchone() if cursor.description else None
        except psycopg.OperationalError as exc:
            # PoolTimeout included: no connection could be had in time. For a caller waiting on
            # its answer that is not retried: it would only make it wait as long again.
            if attempt == attempts or (isinstance(exc, PoolTimeout) and not patient):
                raise OperationalError(str(exc)) from exc
            logger.warning("database statement failed (%s); retrying", type(exc).__name__)
            if not isinstance(exc, PoolTimeout):
                # Its idle siblings may be dead too (a database restart): drop those first.
                await pool.check()
            if attempt > 1:
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 2), 8.0))
        except psycopg.Error as exc:
            raise DatabaseError(str(exc)) from exc
    return None  # not reached
