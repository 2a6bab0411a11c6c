"""Streams under the production server (gunicorn, gthread): relayed as produced, cancelled
upstream when the client leaves, failures reported in-band, and each one recorded once."""

import itertools
import json
import time

import ollama
import pytest
import requests

from testsupport import wait_for_record, wait_for_records


def post_stream(url, raw, payload):
    return requests.post(
        url, json=payload, headers={"Authorization": f"Bearer {raw}"}, stream=True, timeout=30
    )


def arrival_times(response, separator=b"\n"):
    """When each non-empty line arrived, and the lines."""
    times, lines = [], []
    for line in response.iter_lines(chunk_size=1, delimiter=separator):
        if line.strip():
            times.append(time.monotonic())
            lines.append(line)
    return times, lines


def test_native_stream_arrives_token_by_token(served, fake_ollama_server, user_key):
    fake_ollama_server.configure(tokens=5, token_delay=0.1)
    response = post_stream(
        f"{served}/api/generate", user_key[1], {"model": "llama3.2", "prompt": "hi"}
    )
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    assert response.headers["X-Accel-Buffering"] == "no"
    times, lines = arrival_times(response)
    assert len(lines) == 6
    # Produced 100 ms apart, so received spread out: the first long before the last.
    assert times[-1] - times[0] >= 0.35
    token_times = times[:5]
    assert all(b - a >= 0.05 for a, b in itertools.pairwise(token_times))
    final = json.loads(lines[-1])
    assert final["done"] is True
    record = wait_for_record(route="/api/generate")
    assert record.outcome == "ok" and record.completion_tokens == 5
    assert record.prompt_tokens == final["prompt_eval_count"]
    assert record.ttft_ms is not None and record.ttft_ms < record.latency_ms


def test_openai_stream_arrives_event_by_event(served, fake_ollama_server, user_key):
    fake_ollama_server.configure(tokens=5, token_delay=0.1)
    response = post_stream(
        f"{served}/v1/chat/completions",
        user_key[1],
        {
            "model": "llama3.2",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    times, lines = arrival_times(response)
    assert lines[-1] == b"data: [DONE]"
    assert times[-1] - times[0] >= 0.35
    record = wait_for_record(route="/v1/chat/completions")
    assert (record.outcome, record.completion_tokens) == ("ok", 5)


def test_client_disconnect_cancels_the_upstream_request(served, fake_ollama_server, user_key):
    fake_ollama_server.configure(tokens=200, token_delay=0.05)
    response = post_stream(
        f"{served}/api/chat",
        user_key[1],
        {"model": "llama3.2", "messages": [{"role": "user", "content": "talk"}]},
    )
    lines = response.iter_lines()
    next(lines)
    next(lines)
    gauge = "gateway_streams_in_flight"
    assert f"{gauge} 1.0" in requests.get(f"{served}/metrics", timeout=10).text
    response.close()
    assert fake_ollama_server.wait_for_disconnect(timeout=5)
    record = wait_for_record(route="/api/chat")
    assert record.outcome == "client_closed"
    assert f"{gauge} 0.0" in requests.get(f"{served}/metrics", timeout=10).text
    # Far fewer than 200 tokens were produced: Ollama stopped generating.
    assert record.latency_ms < 5000


def test_upstream_dying_mid_stream_ends_with_an_error_line(served, fake_ollama_server, user_key):
    fake_ollama_server.configure(fail="midstream", token_delay=0.01)
    response = post_stream(
        f"{served}/api/generate", user_key[1], {"model": "llama3.2", "prompt": "x"}
    )
    _, lines = arrival_times(response)
    parsed = [json.loads(line) for line in lines]
    assert "error" in parsed[-1]
    assert not any(p.get("done") for p in parsed)
    client = ollama.Client(host=served, headers={"Authorization": f"Bearer {user_key[1]}"})
    with pytest.raises(ollama.ResponseError):
        list(client.generate(model="llama3.2", prompt="x", stream=True))
    # Both streams (raw, then through the client) are recorded as upstream errors.
    records = wait_for_records(2, route="/api/generate")
    assert [r.outcome for r in records] == ["upstream_error", "upstream_error"]


def test_openai_stream_failure_is_an_error_event(served, fake_ollama_server, user_key):
    fake_ollama_server.configure(fail="midstream", token_delay=0.01)
    response = post_stream(
        f"{served}/v1/chat/completions",
        user_key[1],
        {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    _, lines = arrival_times(response)
    last = json.loads(lines[-1].removeprefix(b"data: "))
    assert last["error"]["type"] == "api_error"
    assert b"data: [DONE]" not in lines


def test_a_slow_first_token_is_not_cut_off(served, fake_ollama_server, user_key):
    fake_ollama_server.configure(ttft=2.0)
    response = post_stream(
        f"{served}/api/generate", user_key[1], {"model": "llama3.2", "prompt": "x"}
    )
    _, lines = arrival_times(response)
    assert json.loads(lines[-1])["done"] is True


def test_a_stream_that_stalls_is_recorded_as_a_timeout(gateway, user_key, fake_ollama, settings):
    settings.OLLAMA_READ_TIMEOUT = 0.3
    fake_ollama.configure(tokens=5, token_delay=1.0)
    response = post_stream(
        f"{gateway}/api/chat",
        user_key[1],
        {"model": "llama3.2", "messages": [{"role": "user", "content": "slow"}]},
    )
    _, lines = arrival_times(response)
    assert "error" in json.loads(lines[-1])
    assert wait_for_record(route="/api/chat").outcome == "timeout"
