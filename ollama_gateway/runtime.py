"""The event loop the gateway serves from, and the work it finishes after an answer went out.

Under the ASGI server (`ollama_gateway.asgi`), each worker process runs one event loop for its
whole life: loop-bound resources (the async database pool, the HTTP sessions to Ollama) live
as long as it does, and bookkeeping (usage records) runs as background tasks that a shutdown
waits for. Anywhere else (Django's test client, a WSGI server running an async view through
`async_to_sync`) every request gets a short-lived loop of its own: such resources are made per
request and the bookkeeping is awaited before the request ends.
"""

import asyncio
import contextlib
import logging

logger = logging.getLogger("ollama_gateway.runtime")

_serving_loop: asyncio.AbstractEventLoop | None = None
_tasks: set[asyncio.Task] = set()
_requests: set[asyncio.Task] = set()


def serving() -> bool:
    """True inside the long-lived loop of the ASGI server."""
    try:
        return asyncio.get_running_loop() is _serving_loop
    except RuntimeError:
        return False


def start_serving() -> None:
    """Called by the ASGI lifespan startup, inside the worker's loop."""
    global _serving_loop
    _serving_loop = asyncio.get_running_loop()


async def stop_serving(timeout: float = 10.0) -> None:
    """Called by the ASGI lifespan shutdown: wait (up to `timeout` seconds) for the requests
    the server has just cancelled to finish their cleanup, and for the bookkeeping they and
    earlier requests started (usage records, slot releases). A request's cleanup may start
    more of it (a cut stream closes its upstream reply, then spawns its record): wait until
    nothing is left, not for a snapshot."""
    global _serving_loop
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    told = False
    while True:
        pending = [t for t in _requests | _tasks if not t.done()]
        remaining = deadline - loop.time()
        if not pending or remaining <= 0:
            break
        if not told:
            logger.info("waiting for %d request(s) and task(s) before exit", len(pending))
            told = True
        await asyncio.wait(pending, timeout=remaining)
    _serving_loop = None


@contextlib.contextmanager
def request_in_flight():
    """Marks the current task as a request that a shutdown waits for (see stop_serving)."""
    task = asyncio.current_task()
    _requests.add(task)
    try:
        yield
    finally:
        _requests.discard(task)


async def after_response(coroutine) -> None:
    """Run `coroutine` without making the caller wait for it, where the loop outlives the
    request; otherwise now (a per-request loop would drop it unfinished)."""
    if not serving():
        await coroutine
        return
    spawn(coroutine)


def spawn(coroutine) -> None:
    """Run `coroutine` as a background task of the running loop, waited for at shutdown."""
    task = asyncio.get_running_loop().create_task(coroutine)
    # The loop keeps only weak references to tasks: hold them until they are done.
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
