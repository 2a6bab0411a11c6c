"""Several Ollama servers: routing by model, preferring loaded models, failover, recovery,
merged lists and model management across the pool."""

import concurrent.futures
import time

import ollama
import pytest
import requests

from devollama.server import FakeConfig, FakeOllama
from proxy.backends import backend_pool
from testsupport import free_port, start_gunicorn, wait_for_records

MODELS = {
    "a": ["llama3.2:latest", "qwen2.5:0.5b"],
    "b": ["llama3.2:latest", "mistral:latest"],
    "c": ["phi3:latest"],
}


@pytest.fixture(scope="session")
def trio_servers():
    servers = {name: FakeOllama(config=FakeConfig(models=m)).start() for name, m in MODELS.items()}
    for position, server in enumerate(servers.values(), start=1):
        server.gateway_name = f"ollama-{position}"
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def trio(trio_servers):
    """Three development Ollamas, fresh, each with its own models (restarted if stopped)."""
    for server in trio_servers.values():
        if not server.running:
            server.start()  # on the same port
        server.reset()
    return trio_servers


@pytest.fixture
def pooled(gateway, trio, settings):
    """The live gateway in front of the three servers, catalogs loaded."""
    settings.OLLAMA_BASE_URL = ",".join(server.url for server in trio.values())
    settings.BACKEND_COOLDOWN = 60.0
    backend_pool().check_all()
    return gateway


def names(server):
    """The name the gateway gives a server of OLLAMA_BASE_URL: ollama-<position>."""
    return server.gateway_name


def generate(base, raw, model, **extra):
    return requests.post(
        f"{base}/api/generate",
        json={"model": model, "prompt": "hi", "stream": False, **extra},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=15,
    )


def generations(server):
    return [r for r in server.requests if r.path == "/api/generate"]


def asking_for(server, model):
    return [r for r in generations(server) if r.json()["model"] == model]


def test_requests_go_to_a_server_that_has_the_model(pooled, trio, user_key):
    assert generate(pooled, user_key[1], "phi3").status_code == 200
    assert generate(pooled, user_key[1], "mistral").status_code == 200
    assert len(generations(trio["c"])) == 1 and len(generations(trio["b"])) == 1
    assert generations(trio["a"]) == []
    backends = [r.backend for r in wait_for_records(2, route="/api/generate")]
    assert sorted(backends) == sorted([names(trio["b"]), names(trio["c"])])


def test_a_server_with_the_model_loaded_is_preferred(pooled, trio, user_key):
    # llama3.2 is on a and b; load it on b only.
    requests.post(
        f"{trio['b'].url}/api/generate",
        json={"model": "llama3.2", "prompt": "x", "stream": False},
        timeout=5,
    )
    backend_pool().check_all()
    for _ in range(5):
        assert generate(pooled, user_key[1], "llama3.2").status_code == 200
    assert len(generations(trio["b"])) == 1 + 5 and generations(trio["a"]) == []


def test_unloaded_model_spreads_by_requests_in_flight(pooled, trio, user_key):
    for server in trio.values():
        server.configure(ttft=0.3)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(
            pool.map(lambda _: generate(pooled, user_key[1], "qwen2.5:0.5b").status_code, range(2))
        )
    assert statuses == [200, 200]
    # qwen2.5 is only on a: both went there. Now llama3.2, on a and b, nowhere loaded: spread.
    assert len(asking_for(trio["a"], "qwen2.5:0.5b")) == 2
    pool_state = backend_pool()
    for state in pool_state.states:
        state.loaded = frozenset()
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: generate(pooled, user_key[1], "llama3.2", keep_alive=0), range(4)))
    spread = [len(asking_for(trio[name], "llama3.2")) for name in "abc"]
    assert sum(spread) == 4 and spread[0] >= 1 and spread[1] >= 1 and spread[2] == 0


def test_failover_when_a_server_is_down_and_recovery(pooled, trio, user_key):
    requests.post(
        f"{trio['a'].url}/api/generate",
        json={"model": "llama3.2", "prompt": "x", "stream": False},
        timeout=5,
    )
    backend_pool().check_all()
    trio["a"].stop()  # a had llama3.2 loaded: it would be chosen first
    response = generate(pooled, user_key[1], "llama3.2")
    assert response.status_code == 200
    assert [r.backend for r in wait_for_records(1, route="/api/generate")] == [names(trio["b"])]
    state = backend_pool().by_name(names(trio["a"]))
    assert state.healthy is False and state.failures == 1
    metrics = requests.get(f"{pooled}/metrics", timeout=10).text
    assert f'gateway_backend_up{{backend="{names(trio["a"])}"}} 0.0' in metrics
    assert f'gateway_backend_up{{backend="{names(trio["b"])}"}} 1.0' in metrics
    # qwen2.5 lives only on the stopped server: no other server pretends it does not exist.
    assert generate(pooled, user_key[1], "qwen2.5:0.5b").status_code == 502
    # It comes back on the same address: the next check brings it back in.
    trio["a"].start()
    trio["a"].reset()
    backend_pool().check_all()
    assert state.healthy is True
    assert generate(pooled, user_key[1], "qwen2.5:0.5b").status_code == 200
    assert len(generations(trio["a"])) == 1


def test_a_server_dying_mid_answer_is_replaced(pooled, trio, user_key):
    """Nothing reached the client yet: the answer comes from another server with the model."""
    requests.post(
        f"{trio['a'].url}/api/generate",
        json={"model": "llama3.2", "prompt": "x", "stream": False},
        timeout=5,
    )
    backend_pool().check_all()  # llama3.2 is loaded on a: a is tried first
    trio["a"].configure(fail="midstream")  # half an answer, then the connection drops
    response = generate(pooled, user_key[1], "llama3.2")
    assert response.status_code == 200 and response.json()["done"] is True
    assert (
        len(asking_for(trio["a"], "llama3.2")) == 2 and len(asking_for(trio["b"], "llama3.2")) == 1
    )
    assert [r.backend for r in wait_for_records(1, route="/api/generate")] == [names(trio["b"])]


def test_lists_merge_the_pool_without_duplicates(pooled, make_key):
    _, raw = make_key(allowed_models=["llama3.2", "phi3", "mistral"])
    client = ollama.Client(host=pooled, headers={"Authorization": f"Bearer {raw}"})
    assert [m.model for m in client.list().models] == [
        "llama3.2:latest",
        "mistral:latest",
        "phi3:latest",
    ]
    models = requests.get(
        f"{pooled}/v1/models", headers={"Authorization": f"Bearer {raw}"}, timeout=10
    )
    assert sorted(m["id"] for m in models.json()["data"]) == [
        "llama3.2:latest",
        "mistral:latest",
        "phi3:latest",
    ]


def test_model_management_goes_to_one_named_server_or_to_all(pooled, trio, admin_key):
    client = ollama.Client(host=pooled, headers={"Authorization": f"Bearer {admin_key[1]}"})
    progress = list(client.pull("tinyllama", stream=True))
    assert progress[-1].status == "success"
    for server in trio.values():
        assert any(r.path == "/api/pull" for r in server.requests)
    # copy answers once, not with a progress stream: a failure on any server is an error.
    assert client.copy("tinyllama", "tiny-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as raised:
        client.copy("phi3", "phi-copy")  # only c has phi3
    assert raised.value.status_code == 404 and "ollama-1" in raised.value.error
    named = requests.delete(
        f"{pooled}/api/delete?backend={names(trio['c'])}",
        json={"model": "tinyllama"},
        headers={"Authorization": f"Bearer {admin_key[1]}"},
        timeout=10,
    )
    assert named.status_code == 200
    assert [r.path for r in trio["c"].requests if r.method == "DELETE"] == ["/api/delete"]
    assert not any(r.method == "DELETE" for r in trio["a"].requests)
    unknown = requests.delete(
        f"{pooled}/api/delete?backend=nope",
        json={"model": "x"},
        headers={"Authorization": f"Bearer {admin_key[1]}"},
        timeout=10,
    )
    assert unknown.status_code == 404 and unknown.json() == {"error": "backend 'nope' not found"}


def test_two_replicas_three_servers_one_stopped_mid_test(transactional_db, trio, make_key):
    """Under load through two gateway processes: a server stops (no retryable request is lost),
    comes back (it serves again), and the rate limit stays exact across the replicas."""
    urls = ",".join(server.url for server in trio.values())
    env = {"OLLAMA_BASE_URL": urls, "BACKEND_CHECK_INTERVAL": "0.5", "BACKEND_COOLDOWN": "1"}
    ports = [free_port(), free_port()]
    gateways = [start_gunicorn(port, **env) for port in ports]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        key, raw = make_key(rate_limit=150)
        models = ["llama3.2", "phi3", "mistral"] * 40  # 120 requests

        def send(i_model):
            i, model = i_model
            if i == 40:
                trio["a"].stop()
            return generate(bases[i % 2], raw, model).status_code

        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(send, enumerate(models)))
        assert statuses == [200] * 120
        trio["a"].start()
        trio["a"].reset()
        time.sleep(2.5)  # a check, after the cool-down
        later = [generate(bases[i % 2], raw, "qwen2.5:0.5b").status_code for i in range(10)]
        assert later == [200] * 10
        assert len(generations(trio["a"])) == 10
        over = [generate(bases[i % 2], raw, "phi3").status_code for i in range(30)]
        assert over.count(200) == 20 and over.count(429) == 10
        served_by = {r.backend for r in wait_for_records(120 + 10 + 30, key=key) if r.status == 200}
        assert served_by == {names(s) for s in trio.values()}
    finally:
        for gateway in gateways:
            gateway.terminate()
            gateway.wait(timeout=20)


def test_new_protocols_route_by_model_and_fail_over(pooled, trio, user_key):
    """Anthropic, Responses and transcriptions go to a server with the model, like the others."""
    auth = {"Authorization": f"Bearer {user_key[1]}"}
    messages = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert (
        requests.post(
            f"{pooled}/v1/messages", json={"model": "mistral", **messages}, headers=auth, timeout=15
        ).status_code
        == 200
    )
    assert (
        requests.post(
            f"{pooled}/v1/responses",
            json={"model": "phi3", "input": "hi"},
            headers=auth,
            timeout=15,
        ).status_code
        == 200
    )
    audio = requests.post(
        f"{pooled}/v1/audio/transcriptions",
        files={"file": ("a.wav", b"RIFF0000", "audio/wav")},
        data={"model": "phi3"},
        headers=auth,
        timeout=15,
    )
    assert audio.status_code == 200

    def served_by(server):  # the pool's own checks (/api/tags, /api/ps) left out
        return [r.path for r in server.requests if r.path.startswith("/v1/")]

    assert served_by(trio["b"]) == ["/v1/messages"]
    assert served_by(trio["c"]) == ["/v1/responses", "/v1/audio/transcriptions"]
    # llama3.2 loaded on a, then a stops: the Anthropic request is served by b.
    requests.post(
        f"{trio['a'].url}/api/generate",
        json={"model": "llama3.2", "prompt": "x", "stream": False},
        timeout=5,
    )
    backend_pool().check_all()
    trio["a"].stop()
    answer = requests.post(
        f"{pooled}/v1/messages", json={"model": "llama3.2", **messages}, headers=auth, timeout=15
    )
    assert answer.status_code == 200 and answer.json()["type"] == "message"
    records = wait_for_records(2, route="/v1/messages")
    assert [r.backend for r in records] == [names(trio["b"])] * 2


def test_queued_requests_count_as_load_when_choosing_a_server(pooled, trio, user_key, settings):
    """With a gateway queue (one slot per server), requests waiting for a server make it busier:
    four requests for a model on a and b go two and two, not three behind one slot."""
    settings.OLLAMA_NUM_PARALLEL = 1
    backend_pool().check_all()
    for state in backend_pool().states:
        state.loaded = frozenset()
    for server in trio.values():
        server.configure(ttft=1.0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(
            pool.map(lambda _: generate(pooled, user_key[1], "llama3.2", keep_alive=0), range(4))
        )
    assert [a.status_code for a in answers] == [200] * 4
    assert [len(asking_for(trio[name], "llama3.2")) for name in "abc"] == [2, 2, 0]


def test_a_configuration_change_keeps_the_state_of_unchanged_servers(db, trio, settings):
    """Requests in flight stay counted on a server whose configuration did not change."""
    from proxy import backends

    urls = [server.url for server in trio.values()]
    settings.OLLAMA_BASE_URL = ",".join(urls[:2])
    before = backend_pool()
    lease = backends.Lease(before.states[0])
    settings.OLLAMA_BASE_URL = ",".join(urls)  # a third server joins
    after = backends._reload(before)
    assert len(after.states) == 3
    assert after.states[0] is before.states[0] and after.states[0].in_flight == 1
    lease.release()
    assert after.states[0].in_flight == 0
