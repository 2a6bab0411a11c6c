"""Sharing the GPU (usage/queue.py), end to end: real HTTP through the gateway to the development
Ollama, whose handler is watched to see what actually runs upstream at once."""

import concurrent.futures
import os
import signal
import threading
import time

import pytest
import requests
from django.db import connection
from django.utils import timezone

from devollama.server import FakeOllama, _Handler
from ollama_gateway import db
from testsupport import bearer, free_port, start_gunicorn, wait_for_records
from usage.models import Slot, TokenCounter, UsageRecord
from usage.queue import _memory

postgresql_only = pytest.mark.skipif(
    "connection.vendor != 'postgresql'", reason="the shared queue lives in PostgreSQL"
)
GENERATIONS = ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions")


class Upstream:
    """What the development Ollama runs: generations in flight now, the peak, and each one's
    (prompt, start, end) as the fake saw it (from reading the request to its last byte)."""

    def __init__(self, monkeypatch):
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.spans = []
        local = threading.local()
        answer, handle = FakeOllama._answer, _Handler._handle

        def answered(fake, request, **options):
            local.request = request
            return answer(fake, request, **options)

        def handled(handler):
            local.request = None
            generation = handler.path.startswith(GENERATIONS)
            started = time.monotonic()
            if generation:
                with self.lock:
                    self.running += 1
                    self.peak = max(self.peak, self.running)
            try:
                handle(handler)
            finally:
                if generation:
                    prompt = _prompt(local.request)
                    with self.lock:
                        self.running -= 1
                        self.spans.append((prompt, started, time.monotonic()))

        monkeypatch.setattr(FakeOllama, "_answer", answered)
        monkeypatch.setattr(_Handler, "do_POST", handled)

    def starts(self) -> list[str]:
        """Prompts in the order their generations started upstream."""
        with self.lock:
            return [prompt for prompt, _, _ in sorted(self.spans, key=lambda s: s[1])]


def _prompt(request) -> str:
    try:
        return str(request.json().get("prompt", ""))
    except (AttributeError, ValueError):
        return ""


@pytest.fixture
def upstream(monkeypatch, fake_ollama_server):
    return Upstream(monkeypatch)


@pytest.fixture
def parallel(settings, gateway):
    """The in-process gateway with OLLAMA_NUM_PARALLEL set (its pool re-reads it)."""

    def set_parallel(n, **more):
        settings.OLLAMA_NUM_PARALLEL = n
        for name, value in more.items():
            setattr(settings, name, value)
        return gateway

    return set_parallel


def generate(url, raw, prompt, *, stream=False, timeout=60):
    body = {"model": "llama3.2", "prompt": prompt, "stream": stream}
    started = time.monotonic()
    answer = requests.post(f"{url}/api/generate", json=body, headers=bearer(raw), timeout=timeout)
    answer.elapsed_total = time.monotonic() - started
    return answer


def queue_is_empty() -> bool:
    if connection.vendor == "postgresql":
        return not Slot.objects.exists()
    with _memory.lock:
        return not _memory.entries


def wait_until(predicate, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@postgresql_only
def test_a_key_cap_holds_across_two_gateway_processes(
    served_pair, make_key, upstream, fake_ollama_server
):
    """A cap of 3, 16 requests spread over two gunicorn instances (four workers): never more
    than 3 run upstream at once, and every one is answered."""
    _, raw = make_key(max_concurrent=3, rate_limit=1000)
    fake_ollama_server.configure(tokens=4, token_delay=0.1)
    urls = list(served_pair) * 8
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda i: generate(urls[i], raw, f"p{i}", stream=i % 2 == 0), range(16))
        )
    assert [a.status_code for a in answers] == [200] * 16
    assert upstream.peak == 3
    assert len(upstream.spans) == 16
    assert wait_until(queue_is_empty)


def test_interactive_requests_start_within_one_generation(
    parallel, make_key, upstream, fake_ollama
):
    """Two slots, a batch key with 10 streams of ~1 s each, then an interactive key with 3
    short requests: each of those starts as the next slot frees (Ollama's FIFO would put them
    behind all ten)."""
    url = parallel(2)
    _, batch = make_key(name="batch", priority="batch", rate_limit=1000)
    _, interactive = make_key(name="interactive", rate_limit=1000)
    fake_ollama.configure(tokens=5, token_delay=0.2)  # ~1 s a generation
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        streams = [pool.submit(generate, url, batch, f"batch-{i}", stream=True) for i in range(10)]
        assert wait_until(lambda: upstream.running == 2)
        time.sleep(0.2)
        quick = [pool.submit(generate, url, interactive, f"interactive-{i}") for i in range(3)]
        latencies = [f.result().elapsed_total for f in quick]
        assert all(f.result().status_code == 200 for f in streams)
    # Each waited at most for the next free slot (one generation), then ran its own.
    assert max(latencies) < 2 * 1.0 + 1.0, latencies
    starts = upstream.starts()
    assert all(starts.index(f"interactive-{i}") < 6 for i in range(3)), starts
    assert upstream.peak == 2
    assert wait_until(queue_is_empty)


def test_two_saturating_keys_get_equal_turns(parallel, make_key, upstream, fake_ollama):
    """One slot; the first key queues ten requests, then the second key ten: FIFO (Ollama's
    own queue) would run all of the first key's before any of the second's. Here they
    alternate from the moment both wait."""
    url = parallel(1)
    _, first = make_key(name="first", rate_limit=1000)
    _, second = make_key(name="second", rate_limit=1000)
    fake_ollama.configure(tokens=2, token_delay=0.1)  # ~0.2 s a generation
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        a = [pool.submit(generate, url, first, f"a{i}") for i in range(10)]
        assert wait_until(lambda: upstream.running == 1)
        time.sleep(0.1)
        b = [pool.submit(generate, url, second, f"b{i}") for i in range(10)]
        assert all(f.result().status_code == 200 for f in a + b)
    keys = "".join(p[0] for p in upstream.starts())
    # At most two of the first key's ran before the second key's arrived; then turns.
    head = keys.index("b")
    assert head <= 2, keys
    assert keys[head : head + 16] == "ba" * 8, keys
    assert upstream.peak == 1


def test_a_batch_request_waits_while_an_interactive_one_waits(
    parallel, make_key, upstream, fake_ollama
):
    url = parallel(1)
    _, holder = make_key(name="holder", rate_limit=1000)
    _, batch = make_key(name="batch", priority="batch", rate_limit=1000)
    _, interactive = make_key(name="interactive", rate_limit=1000)
    fake_ollama.configure(tokens=3, token_delay=0.2)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(generate, url, holder, "holder")
        assert wait_until(lambda: upstream.running == 1)
        waiting_batch = pool.submit(generate, url, batch, "batch")
        time.sleep(0.2)  # the batch request queued first
        waiting_interactive = pool.submit(generate, url, interactive, "interactive")
        for future in (running, waiting_batch, waiting_interactive):
            assert future.result().status_code == 200
    assert upstream.starts() == ["holder", "interactive", "batch"]


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        ("/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False}, "ollama"),
        (
            "/api/chat",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]},
            "ollama",
        ),
        (
            "/v1/chat/completions",
            {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]},
            "openai",
        ),
        (
            "/v1/messages",
            {"model": "llama3.2", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
            "anthropic",
        ),
    ],
)
def test_queue_timeout_answers_503_or_429_in_the_route_shape(
    parallel, make_key, upstream, fake_ollama, path, body, shape
):
    url = parallel(1, QUEUE_TIMEOUT=0.5)
    _, holder = make_key(name="holder", rate_limit=1000)
    _, capped = make_key(name="capped", max_concurrent=1, rate_limit=1000)
    fake_ollama.configure(tokens=4, token_delay=0.5)  # 2 s
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(generate, url, holder, "holder")
        assert wait_until(lambda: upstream.running == 1)
        # The server is busy: 503.
        busy = requests.post(f"{url}{path}", json=body, headers=bearer(holder), timeout=10)
        assert running.result().status_code == 200
        # The key's own cap is the blocker: 429.
        capped_running = pool.submit(generate, url, capped, "capped")
        assert wait_until(lambda: upstream.running == 1)
        refused = requests.post(f"{url}{path}", json=body, headers=bearer(capped), timeout=10)
        assert capped_running.result().status_code == 200
    for answer, status in ((busy, 503), (refused, 429)):
        assert answer.status_code == status
        assert int(answer.headers["Retry-After"]) >= 1
        error = answer.json()["error"]
        if shape == "anthropic":
            # What the anthropic SDK maps to RateLimitError and OverloadedError (InternalServer).
            assert answer.json()["type"] == "error"
            assert error["type"] == ("rate_limit_error" if status == 429 else "overloaded_error")
        elif shape == "openai":
            assert error["type"] == ("rate_limit_error" if status == 429 else "api_error")
            assert error["message"]
        else:
            assert isinstance(error, str) and error
    # Nobody else got upstream, and nothing is left in the queue.
    assert len(upstream.spans) == 2
    assert wait_until(queue_is_empty)
    # Recorded for what they are: the GPU saturated (not Ollama failing), the key's own cap.
    outcomes = {r.status: r.outcome for r in wait_for_records(4) if r.status in (429, 503)}
    assert outcomes == {503: "busy", 429: "rate_limited"}


def test_a_client_gone_while_queued_leaves_the_queue(parallel, make_key, upstream, fake_ollama):
    url = parallel(1)
    _, raw = make_key(rate_limit=1000)
    fake_ollama.configure(tokens=4, token_delay=0.3)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(generate, url, raw, "holder", stream=True)
        assert wait_until(lambda: upstream.running == 1)
        # A streaming client waits, sees nothing, and goes away.
        with pytest.raises(requests.ReadTimeout):
            generate(url, raw, "gone", stream=True, timeout=0.5)
        assert running.result().status_code == 200
    # Its place is gone: the next request runs at once, and the queue ends empty.
    answer = generate(url, raw, "next")
    assert answer.status_code == 200
    assert answer.elapsed_total < 1.2 + 0.8
    assert "gone" not in upstream.starts()
    assert wait_until(queue_is_empty)
    gone = wait_for_records(3, key__isnull=False)
    assert [r.outcome for r in gone].count("client_closed") == 1


def test_queue_wait_is_recorded_and_exported(parallel, make_key, upstream, fake_ollama):
    url = parallel(1)
    _, raw = make_key(rate_limit=1000)
    fake_ollama.configure(tokens=3, token_delay=0.2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(generate, url, raw, f"p{i}") for i in range(2)]
        assert all(a.result().status_code == 200 for a in answers)
    waits = sorted(r.queue_wait_ms for r in wait_for_records(2))
    assert waits[0] < 100 and waits[1] > 300
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert "gateway_queue_wait_seconds_bucket" in metrics
    assert "gateway_queue_depth" in metrics


@postgresql_only
def test_a_generation_longer_than_its_lease_keeps_its_slot(
    parallel, make_key, upstream, fake_ollama
):
    """Leases are renewed while the generation runs: a 4 s stream on 1.5 s leases still holds
    its slot, and the request behind it waits for the end."""
    url = parallel(1, QUEUE_LEASE_SECONDS=1.5, QUEUE_RECHECK_SECONDS=0.5)
    _, raw = make_key(rate_limit=1000)
    fake_ollama.configure(tokens=8, token_delay=0.5)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        long = pool.submit(generate, url, raw, "long", stream=True)
        assert wait_until(lambda: upstream.running == 1)
        time.sleep(1.0)  # past the first renewal, before the lease would have run out
        behind = pool.submit(generate, url, raw, "behind")
        assert long.result().status_code == 200
        assert behind.result().status_code == 200
    assert upstream.peak == 1
    assert upstream.starts() == ["long", "behind"]


def early_in_a_minute() -> None:
    """Wait, if need be, until at least 15 s of the clock minute (the `tokens_per_minute`
    window) are left, so that a test's requests all fall in one window."""
    second = timezone.now().second
    if second >= 45:
        time.sleep(60.5 - second)


def test_tokens_per_minute_are_counted_exactly_under_concurrency(gateway, make_key, fake_ollama):
    key, raw = make_key(tokens_per_minute=10_000, rate_limit=1000)
    fake_ollama.configure(tokens=5)
    early_in_a_minute()
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda i: generate(gateway, raw, f"p{i}"), range(20)))
    assert all(a.status_code == 200 for a in answers)
    records = wait_for_records(20, key=key)
    used = sum(r.prompt_tokens + r.completion_tokens for r in records)
    assert used > 0
    counted = sum(TokenCounter.objects.filter(key=key).values_list("tokens", flat=True))
    assert counted == used
    # Spent: the next request is refused until the minute turns.
    key.tokens_per_minute = used
    key.save(update_fields=["tokens_per_minute"])
    refused = generate(gateway, raw, "more")
    assert TokenCounter.objects.filter(key=key).count() == 1  # one minute throughout
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "minute" in refused.json()["error"]


@postgresql_only
def test_the_empty_queue_costs_one_statement_and_its_release(
    parallel, make_key, fake_ollama, upstream
):
    url = parallel(2)
    _, raw = make_key(rate_limit=1000)
    assert generate(url, raw, "warm").status_code == 200
    wait_for_records(1)
    wait_until(queue_is_empty)
    before = db.statements_sent
    started = time.monotonic()
    assert generate(url, raw, "hi").status_code == 200
    wait_for_records(2)
    assert wait_until(queue_is_empty)
    # The key lookup, the slot (gateway_queue_enter), the record, and the slot's release
    # (after the answer, off the caller's path).
    assert db.statements_sent - before == 4
    assert time.monotonic() - started < 5


@postgresql_only
def test_an_idle_queue_sends_no_statement(parallel, make_key, fake_ollama):
    """Nothing polls: once no request holds or waits for a slot, the process is silent (the
    listener only listens; lease renewal only runs while it holds rows)."""
    url = parallel(1, QUEUE_LEASE_SECONDS=1.5)
    _, raw = make_key(rate_limit=1000)
    assert generate(url, raw, "hi").status_code == 200
    wait_for_records(1)
    assert wait_until(queue_is_empty)
    time.sleep(0.5)  # the release, after the answer
    before = db.statements_sent
    time.sleep(2.0)  # four renewal periods
    assert db.statements_sent == before


@postgresql_only
def test_a_killed_worker_gives_its_slots_back(transactional_db, fake_ollama_server, make_key):
    _, raw = make_key(rate_limit=1000)
    fake_ollama_server.reset()
    fake_ollama_server.configure(fail="hang")
    port = free_port()
    process = start_gunicorn(
        port,
        OLLAMA_BASE_URL=fake_ollama_server.url,
        OLLAMA_NUM_PARALLEL="2",
        QUEUE_LEASE_SECONDS="3",
        QUEUE_RECHECK_SECONDS="1",
        GUNICORN_WORKERS="1",
    )
    url = f"http://127.0.0.1:{port}"
    pool = concurrent.futures.ThreadPoolExecutor(4)
    try:
        hung = [pool.submit(generate, url, raw, f"h{i}", timeout=30) for i in range(2)]
        assert wait_until(lambda: Slot.objects.filter(granted_at__isnull=False).count() == 2)
        holder = Slot.objects.first().holder
        os.kill(int(holder.split("-")[0]), signal.SIGKILL)
        for future in hung:
            with pytest.raises(requests.ConnectionError):
                future.result()
        fake_ollama_server.configure(fail=None)
        killed_at = time.monotonic()
        # The new worker's request runs once the dead worker's leases expire (3 s).
        answer = generate(url, raw, "after", timeout=30)
        assert answer.status_code == 200
        assert time.monotonic() - killed_at < 3 + 2.5
        assert wait_until(lambda: not Slot.objects.exists())
    finally:
        fake_ollama_server.reset()
        pool.shutdown(wait=False)
        process.terminate()
        process.wait(timeout=30)
    assert UsageRecord.objects.filter(route="/api/generate", status=200).exists()


def test_a_key_revoked_while_queued_does_not_run(parallel, make_key, upstream, fake_ollama):
    """Revocation is immediate for requests already waiting for the GPU too: 401 when their
    turn comes, and the slot goes to the next."""
    from keys.services import api_key_revoke

    url = parallel(1)
    _, holder = make_key(name="holder", rate_limit=1000)
    runaway, raw = make_key(name="runaway", rate_limit=1000)
    fake_ollama.configure(tokens=3, token_delay=0.3)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(generate, url, holder, "holder")
        assert wait_until(lambda: upstream.running == 1)
        queued = pool.submit(generate, url, raw, "runaway")
        time.sleep(0.3)
        api_key_revoke(preview=runaway.preview)
        answer = queued.result()
        assert running.result().status_code == 200
    assert answer.status_code == 401 and "revoked" in answer.json()["error"]
    assert upstream.starts() == ["holder"]
    assert wait_until(queue_is_empty)


def test_tokens_per_minute_are_checked_again_when_a_queued_request_starts(
    parallel, make_key, upstream, fake_ollama
):
    """Requests queued behind one slot run one after another: each is checked against the
    minute's tokens when its turn comes, not only when it arrived."""
    url = parallel(1)
    _, raw = make_key(name="tpm", rate_limit=1000, tokens_per_minute=25)
    fake_ollama.configure(tokens=10, token_delay=0.05)  # 0.5 s each: records land between turns
    early_in_a_minute()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = [
            f.result().status_code
            for f in [pool.submit(generate, url, raw, f"p{i}") for i in range(8)]
        ]
    # 10 completion tokens + a few prompt tokens each: the third one already passes 25. One
    # more may start while the previous record is being written; the rest are refused.
    # The first two fit in 25 tokens whatever the timing: at least they run.
    assert 2 <= statuses.count(200) <= 4, statuses
    assert statuses.count(200) + statuses.count(429) == 8, statuses
