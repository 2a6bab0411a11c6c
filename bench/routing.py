"""What routing adds to a request: the gateway's own choice of an Ollama server.

Measured in-process on the gateway's code (`BackendPool.choose`, then the in-flight count
taken and given back, as `ProxyView.forward` does), over many calls, for three servers
against one: an end-to-end comparison could not tell microseconds from the noise of a shared
machine. Needs Django set up.
"""

import time


def _pool(servers: int):
    from proxy.backends import BackendConfig, BackendPool

    pool = BackendPool(
        [BackendConfig(f"ollama-{i}", f"http://127.0.0.1:{11500 + i}") for i in range(servers)]
    )
    for i, state in enumerate(pool.states):
        # Each server has the benchmark's model and one of its own; the second has it loaded.
        state.models = frozenset({"llama3.2:latest", f"model-{i}:latest"})
        state.loaded = frozenset({"llama3.2:latest"} if i == 1 else ())
    return pool


def _per_call_us(pool, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        state = pool.choose("llama3.2")
        state.acquire()
        state.release()
    return (time.perf_counter() - started) / calls * 1e6


def routing_cost(calls: int = 100_000) -> dict:
    """Microseconds per routed request, for one and for three servers (best of 3 runs)."""
    return {
        "calls": calls,
        "one_server_us": round(min(_per_call_us(_pool(1), calls) for _ in range(3)), 2),
        "three_servers_us": round(min(_per_call_us(_pool(3), calls) for _ in range(3)), 2),
    }
