"""The pool of Ollama servers behind the gateway, as each gateway process sees it.

Configuration (which servers, their weights) comes from the `Backend` table, or, while it is
empty, from OLLAMA_BASE_URL (one URL or a comma-separated list). Health, model catalogs and
requests in flight are per process: a background thread checks every server's `/api/tags` and
`/api/ps` every BACKEND_CHECK_INTERVAL seconds, and a server that fails a request is set aside
for BACKEND_COOLDOWN seconds, then checked again and rejoins by itself.

Routing a request that names a model (`BackendPool.choose`): healthy servers that have the
model; among them those where it is already loaded (no cold load); then the fewest requests in
flight or waiting in the gateway's queue for it, relative to the weight. With one server, none
of this costs anything.
"""

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import requests
from django.conf import settings
from django.core.signals import setting_changed
from django.db import DatabaseError, connections

from keys.models import normalize_model
from proxy.upstream import Upstream
from usage import metrics

logger = logging.getLogger("proxy.backends")

CHECK_TIMEOUT = (2.0, 5.0)


@dataclass(eq=False)
class BackendState:
    name: str
    url: str
    weight: int
    upstream: Upstream
    # Generations it runs at once (None: no gateway queue); see usage/queue.py.
    parallel: int | None = None
    healthy: bool = True
    down_until: float = 0.0
    models: frozenset = frozenset()
    loaded: frozenset = frozenset()
    in_flight: int = 0
    # Requests of this process waiting in the gateway's queue for it (usage/queue.py).
    waiting: int = 0
    requests: int = 0
    failures: int = 0
    checked_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def usable(self, now: float) -> bool:
        return self.healthy or now >= self.down_until

    def load(self) -> float:
        # Queued requests count: a server with a queue is busier than its in-flight count says.
        return (self.in_flight + self.waiting + 1) / self.weight

    def acquire(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.requests += 1
        metrics.BACKEND_IN_FLIGHT.labels(self.name).inc()

    def release(self) -> None:
        with self.lock:
            self.in_flight -= 1
        metrics.BACKEND_IN_FLIGHT.labels(self.name).dec()

    def set_health(self, healthy: bool) -> None:
        self.healthy = healthy
        metrics.BACKEND_UP.labels(self.name).set(1 if healthy else 0)

    def summary(self) -> dict:
        """What the dashboard and /metrics show."""
        return {
            "name": self.name,
            "healthy": self.healthy,
            "models": sorted(self.models),
            "loaded": sorted(self.loaded),
            "in_flight": self.in_flight,
            "parallel": self.parallel,
            "requests": self.requests,
            "failures": self.failures,
            "error_rate": 100 * self.failures / self.requests if self.requests else 0.0,
        }


class Lease:
    """A request's claim on a server, counted in flight until `release` (idempotent): the one
    owner of that count and of the request's queue slot (usage/queue.py), whichever way the
    request ends."""

    __slots__ = ("_held", "slot", "state")

    def __init__(self, state: BackendState, slot=None):
        self.state = state
        self.slot = slot
        state.acquire()
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.state.release()
            if self.slot is not None:
                self.slot.release()


@dataclass(frozen=True)
class BackendConfig:
    name: str
    url: str
    weight: int = 1
    credential: str = ""
    parallel: int | None = None


def configured_backends() -> list[BackendConfig]:
    """Enabled rows of the Backend table; OLLAMA_BASE_URL while the table is empty."""
    from proxy.models import Backend

    rows = list(Backend.objects.all())
    if rows:
        return [
            BackendConfig(
                b.name,
                b.url.rstrip("/"),
                b.weight,
                os.environ.get(b.credential_env, "") if b.credential_env else "",
                b.parallel,
            )
            for b in rows
            if b.enabled
        ]
    return settings_backends()


def settings_backends() -> list[BackendConfig]:
    """The servers of OLLAMA_BASE_URL, named ollama-1, ollama-2...: names are shown in
    /health, metrics and records, where internal addresses have no business."""
    urls = [u.strip().rstrip("/") for u in settings.OLLAMA_BASE_URL.split(",") if u.strip()]
    return [
        BackendConfig(f"ollama-{i}", url, 1, settings.OLLAMA_API_KEY, settings.OLLAMA_NUM_PARALLEL)
        for i, url in enumerate(urls, start=1)
    ]


class BackendPool:
    def __init__(self, configs: list[BackendConfig], previous: "BackendPool | None" = None):
        self.configs = configs
        # A server whose configuration did not change keeps its state object: its requests in
        # flight (whose leases hold that object) stay counted, and its connections stay open.
        kept = dict(zip(previous.configs, previous.states, strict=True)) if previous else {}
        self.states = [kept.get(c) or self._state(c) for c in configs]
        self.loaded_at = time.monotonic()
        self._refreshing = threading.Lock()
        self._last_on_demand = 0.0

    @staticmethod
    def _state(config: BackendConfig) -> BackendState:
        return BackendState(
            name=config.name,
            url=config.url,
            weight=config.weight,
            parallel=config.parallel,
            upstream=Upstream(
                base_url=config.url,
                api_key=config.credential,
                connect_timeout=settings.OLLAMA_CONNECT_TIMEOUT,
                read_timeout=settings.OLLAMA_READ_TIMEOUT,
            ),
        )

    def by_name(self, name: str) -> BackendState | None:
        return next((s for s in self.states if s.name == name), None)

    def choose(self, model: str | None = None, exclude=(), refresh=True) -> BackendState | None:
        """The server for a request (see the module docstring); None when all were tried.

        A retry (`exclude` not empty) only goes to a server known to have the model. With
        `refresh`, catalogs are re-read (blocking) when no usable server lists the model.
        """
        states = self.states
        if len(states) == 1:
            return None if states[0] in exclude else states[0]
        now = time.monotonic()
        candidates = [s for s in states if s not in exclude and s.usable(now)]
        if not candidates:
            # Every server is cooling down: trying one beats refusing outright.
            candidates = [s for s in states if s not in exclude]
        if model and candidates:
            wanted = normalize_model(model)
            having = [s for s in candidates if wanted in s.models]
            if not having and refresh and self._refresh_on_demand():
                having = [s for s in candidates if wanted in s.models]
            if not having:
                # Only servers that are cooling down have it: try them rather than let another
                # server answer that the model does not exist.
                having = [s for s in states if s not in exclude and wanted in s.models]
            # No server lists it: any may answer (Ollama's own 404, or a model pulled just now),
            # but a retry goes only where the model is.
            candidates = having or ([] if exclude else candidates)
            loaded = [s for s in candidates if wanted in s.loaded]
            candidates = loaded or candidates
        return min(candidates, key=BackendState.load, default=None)

    async def achoose(self, model: str | None = None, exclude=()) -> BackendState | None:
        """`choose` from the event loop: a catalog refresh (blocking I/O) runs in a thread."""
        state = self.choose(model, exclude, refresh=False)
        if (
            len(self.states) > 1
            and model
            and not self.anyone_lists(model)
            # At most one re-read a second, and none while one runs: made-up model names
            # cannot keep threads waiting.
            and time.monotonic() - self._last_on_demand >= 1.0
            and not self._refreshing.locked()
        ):
            state = await asyncio.to_thread(self.choose, model, exclude)
        return state

    def anyone_lists(self, model: str) -> bool:
        wanted = normalize_model(model)
        return any(wanted in s.models for s in self.states)

    def mark_down(self, state: BackendState, reason: str) -> None:
        with state.lock:
            state.failures += 1
            state.set_health(False)
            state.down_until = time.monotonic() + settings.BACKEND_COOLDOWN
        logger.warning("backend %s marked down: %s", state.name, reason)

    def note_loaded(self, state: BackendState, model: str) -> None:
        """A model that just answered on a server is loaded there now."""
        if model and normalize_model(model) not in state.loaded:
            state.loaded = state.loaded | {normalize_model(model)}

    def check(self, state: BackendState) -> None:
        """Refresh one server's health and catalogs (GET /api/tags and /api/ps)."""
        try:
            tags = state.upstream.request("GET", "/api/tags", timeout=CHECK_TIMEOUT)
            ps = state.upstream.request("GET", "/api/ps", timeout=CHECK_TIMEOUT)
            tags.raise_for_status()
            ps.raise_for_status()
            models = frozenset(normalize_model(m["name"]) for m in tags.json().get("models", []))
            loaded = frozenset(normalize_model(m["name"]) for m in ps.json().get("models", []))
        except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as exc:
            if state.healthy:
                self.mark_down(state, f"health check failed ({type(exc).__name__})")
            else:
                state.down_until = time.monotonic() + settings.BACKEND_COOLDOWN
            return
        if not state.healthy:
            logger.info("backend %s is back", state.name)
        state.models, state.loaded = models, loaded
        state.set_health(True)
        state.checked_at = time.monotonic()

    def check_all(self) -> None:
        with self._refreshing:
            for state in self.states:
                self.check(state)

    def _refresh_on_demand(self) -> bool:
        """Re-read the healthy servers' catalogs when none lists a model (a model pulled a
        moment ago), at most once a second. A check already running is waited for briefly:
        it brings fresh catalogs too."""
        if time.monotonic() - self._last_on_demand < 1.0:
            return False
        if not self._refreshing.acquire(timeout=sum(CHECK_TIMEOUT)):
            return False
        try:
            if time.monotonic() - self._last_on_demand >= 1.0:
                self._last_on_demand = time.monotonic()
                for state in self.states:
                    if state.healthy:
                        self.check(state)
        finally:
            self._refreshing.release()
        return True


_lock = threading.Lock()
_pool: BackendPool | None = None
_checker: threading.Thread | None = None


def backend_pool() -> BackendPool:
    """This process's pool; its configuration is re-read every BACKEND_CONFIG_INTERVAL seconds."""
    global _pool
    pool = _pool
    if pool is not None and time.monotonic() - pool.loaded_at < settings.BACKEND_CONFIG_INTERVAL:
        return pool
    with _lock:
        if _pool is None or time.monotonic() - _pool.loaded_at >= settings.BACKEND_CONFIG_INTERVAL:
            _pool = _reload(_pool)
            _start_checker()
        return _pool


def _reload(current: BackendPool | None) -> BackendPool:
    try:
        configs = configured_backends()
    except DatabaseError:
        if current is not None:
            current.loaded_at = time.monotonic()
            return current
        configs = settings_backends()
    if current is not None and current.configs == configs:
        current.loaded_at = time.monotonic()
        return current
    pool = BackendPool(configs, previous=current)
    if current is None and len(pool.states) > 1:
        # First use in this process: know the servers before routing to them.
        pool.check_all()
    if current is not None:
        # Keep what this process learnt about servers that stay.
        for state in pool.states:
            old = current.by_name(state.name)
            if old is not None and old is not state and old.url == state.url:
                state.healthy, state.down_until = old.healthy, old.down_until
                state.models, state.loaded = old.models, old.loaded
    return pool


def _start_checker() -> None:
    """The background health checks, one thread per process, started on first use (after a
    gunicorn fork, so every worker has its own)."""
    global _checker
    if _checker is not None and _checker.is_alive():
        return

    def run():
        while True:
            pool = _pool
            if pool is not None and len(pool.states) > 1:
                pool.check_all()
            time.sleep(settings.BACKEND_CHECK_INTERVAL)

    _checker = threading.Thread(target=run, name="backend-checks", daemon=True)
    _checker.start()


async def abackend_pool() -> BackendPool:
    """`backend_pool` from the event loop, without waiting on the table: a stale configuration
    serves this request while a thread re-reads it for the next ones. Only a process's first
    request (or the first after a reset) waits for it, in a thread."""
    pool = _pool
    if pool is None:
        return await asyncio.to_thread(_load_closing_connections)
    if time.monotonic() - pool.loaded_at >= settings.BACKEND_CONFIG_INTERVAL:
        _refresh_in_background()
    return pool


_refreshing = threading.Lock()


def _load_closing_connections() -> BackendPool:
    """`backend_pool` in a borrowed thread, which keeps no database connection afterwards."""
    try:
        return backend_pool()
    finally:
        connections.close_all()


def _refresh_in_background() -> None:
    if not _refreshing.acquire(blocking=False):
        return  # one re-read at a time

    def run():
        try:
            _load_closing_connections()
        finally:
            _refreshing.release()

    threading.Thread(target=run, name="backend-config", daemon=True).start()


def known_models() -> frozenset:
    """Every model some server of this process's pool lists (normalized), as last checked;
    empty before any check (a single server is checked only on demand). Never loads the pool
    or calls a server: metrics and the dashboard ask it after the answer went out."""
    pool = _pool
    if pool is None:
        return frozenset()
    return frozenset().union(*(state.models for state in pool.states))


def reset_backend_pool() -> None:
    """Forget the pool: the next request re-reads the configuration."""
    global _pool
    with _lock:
        _pool = None


def _reset_on_settings_change(*, setting, **kwargs):
    if setting.startswith(("OLLAMA_", "BACKEND_")):
        reset_backend_pool()


# Tests change OLLAMA_BASE_URL and the timeouts with override_settings.
setting_changed.connect(_reset_on_settings_change)
