"""Prometheus metrics. Under gunicorn every worker writes to PROMETHEUS_MULTIPROC_DIR (set by
gunicorn.conf.py) and /metrics sums them; a single process uses the default registry."""

import os
import re

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "gateway_requests_total",
    "API requests by route, model, status and outcome",
    ["route", "model", "status", "outcome"],
)
LATENCY = Histogram(
    "gateway_request_duration_seconds", "Until the last byte was sent", ["route"], buckets=_SECONDS
)
TTFT = Histogram(
    "gateway_time_to_first_token_seconds",
    "Until the first byte of a stream",
    ["route"],
    buckets=_SECONDS,
)
TOKENS = Counter("gateway_tokens_total", "Tokens by model and kind", ["model", "kind"])
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total",
    "Requests that Ollama failed or timed out",
    ["route", "outcome"],
)
BACKEND_REQUESTS = Counter(
    "gateway_backend_requests_total",
    "Requests by the Ollama server that answered, and outcome",
    ["backend", "outcome"],
)
BACKEND_IN_FLIGHT = Gauge(
    "gateway_backend_in_flight",
    "Requests being served by each Ollama server now",
    ["backend"],
    multiprocess_mode="livesum",
)
# 1 while every gateway process sees the server healthy, 0 when one has set it aside.
BACKEND_UP = Gauge(
    "gateway_backend_up", "Ollama server health", ["backend"], multiprocess_mode="livemin"
)
STREAMS_IN_FLIGHT = Gauge(
    "gateway_streams_in_flight", "Streams being relayed now", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "gateway_queue_depth",
    "Generations waiting in the gateway's queue for each Ollama server",
    ["backend"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "gateway_queue_wait_seconds",
    "Time generations waited for a slot (0 when one was free)",
    ["backend"],
    buckets=(0.001, *_SECONDS),
)

# Parametric routes collapse to one label value each, so clients cannot mint new series.
_ROUTE_PATTERNS = (
    (re.compile(r"^/api/blobs/.*"), "/api/blobs/{digest}"),
    (re.compile(r"^/v1/models/.+"), "/v1/models/{model}"),
    (re.compile(r"^/api/keys/.+"), "/api/keys/{preview}"),
    # Ollama's ollama.com key route: refused by the gateway, but counted.
    (re.compile(r"^/api/user/keys/.+"), "/api/user/keys/{key}"),
)


# Model label values: what a server lists, else "other"; while no catalog is known (one server,
# never checked), the first MAX_MODEL_LABELS names this process saw, then "other".
OTHER_MODEL = "other"
MAX_MODEL_LABELS = 50
_seen_models: set[str] = set()


def model_label(model: str, outcome: str) -> str:
    """A bounded label for a model name: 20 spellings of one model never make 20 series."""
    from keys.models import normalize_model
    from proxy.backends import known_models

    if not model:
        return ""
    # Names in failed requests are arbitrary (typos, probes): one value for all of them.
    if outcome != "ok":
        return OTHER_MODEL
    name = normalize_model(model)
    catalog = known_models()
    if catalog:
        return name if name in catalog else OTHER_MODEL
    if name in _seen_models or len(_seen_models) < MAX_MODEL_LABELS:
        _seen_models.add(name)
        return name
    return OTHER_MODEL


def route_label(path: str) -> str:
    for pattern, label in _ROUTE_PATTERNS:
        if pattern.match(path):
            return label
    return path


def observe(record) -> None:
    """Count one finished request (called by usage_record only)."""
    route = route_label(record.route)
    model = model_label(record.model, record.outcome)
    REQUESTS.labels(route, model, str(record.status), record.outcome).inc()
    LATENCY.labels(route).observe(record.latency_ms / 1000)
    if record.ttft_ms is not None:
        TTFT.labels(route).observe(record.ttft_ms / 1000)
    if record.prompt_tokens:
        TOKENS.labels(model, "prompt").inc(record.prompt_tokens)
    if record.completion_tokens:
        TOKENS.labels(model, "completion").inc(record.completion_tokens)
    if record.outcome in ("upstream_error", "timeout"):
        UPSTREAM_ERRORS.labels(route, record.outcome).inc()
    if record.backend:
        BACKEND_REQUESTS.labels(record.backend, record.outcome).inc()


def _registry():
    """Every worker's metrics under gunicorn (summed from their files), else this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def render() -> tuple[bytes, str]:
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def backend_totals() -> dict[str, dict]:
    """Per Ollama server, summed over every worker of this gateway since it started: requests,
    failed ones (upstream errors and timeouts), and requests in flight now."""
    totals: dict[str, dict] = {}
    for family in _registry().collect():
        if family.name not in ("gateway_backend_requests", "gateway_backend_in_flight"):
            continue
        for sample in family.samples:
            backend = sample.labels.get("backend")
            if not backend or sample.name.endswith("_created"):
                continue
            row = totals.setdefault(backend, {"requests": 0, "failures": 0, "in_flight": 0})
            if family.name == "gateway_backend_in_flight":
                row["in_flight"] += int(sample.value)
                continue
            row["requests"] += int(sample.value)
            if sample.labels.get("outcome") in ("upstream_error", "timeout"):
                row["failures"] += int(sample.value)
    return totals
