"""The official `anthropic` package and a Claude-Code-shaped client, through the gateway's
/v1/messages under gunicorn, in front of the development Ollama."""

import itertools
import json
import time

import anthropic
import httpx
import pytest

from testsupport import wait_for_record, wait_for_records

HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture
def claude_for(served):
    def make(raw, **options):
        return anthropic.Anthropic(base_url=served, api_key=raw, max_retries=0, **options)

    return make


@pytest.fixture
def claude(claude_for, user_key):
    return claude_for(user_key[1])


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            name, data = block.split("\n")
            events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_create_is_relayed_and_recorded_with_tokens(claude, fake_ollama_server, user_key):
    message = claude.messages.create(model="llama3.2", max_tokens=100, messages=HELLO)
    assert message.content[0].text == "tok0 tok1 tok2 tok3 tok4 "
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 5)
    record = wait_for_record(route="/v1/messages")
    assert record.key_id == user_key[0].pk and record.model == "llama3.2"
    assert record.status == 200 and record.outcome == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (2, 5)
    # The SDK sent the key as x-api-key: it stops at the gateway.
    headers = fake_ollama_server.requests[-1].headers
    assert "x-api-key" not in headers and "authorization" not in headers
    assert user_key[1] not in json.dumps(dict(headers))
    assert headers["anthropic-version"]  # passed on, harmless: Ollama ignores it


def test_bearer_token_works_too(claude_for, user_key, served):
    client = anthropic.Anthropic(base_url=served, auth_token=user_key[1], max_retries=0)
    assert client.messages.create(model="llama3.2", max_tokens=5, messages=HELLO).content


def test_stream_arrives_incrementally_and_counts_tokens(claude, fake_ollama_server):
    fake_ollama_server.configure(tokens=5, token_delay=0.15)
    started = time.monotonic()
    arrivals, text = [], ""
    with claude.messages.stream(model="llama3.2", max_tokens=100, messages=HELLO) as stream:
        for piece in stream.text_stream:
            arrivals.append(time.monotonic() - started)
            text += piece
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    # Produced 150 ms apart, received spread out: not buffered until the end.
    assert arrivals[-1] - arrivals[0] >= 0.45
    assert all(b - a >= 0.07 for a, b in itertools.pairwise(arrivals))
    assert final.usage.output_tokens == 5
    record = wait_for_record(route="/v1/messages")
    assert record.outcome == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (2, 5)
    assert record.ttft_ms is not None and record.ttft_ms < record.latency_ms


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use(claude, stream):
    arguments = {"model": "llama3.2", "max_tokens": 100, "messages": HELLO, "tools": [WEATHER]}
    if stream:
        with claude.messages.stream(**arguments) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**arguments)
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert (block.type, block.name, block.input) == ("tool_use", "get_weather", {"city": "fake"})


def test_thinking(claude):
    with claude.messages.stream(
        model="llama3.2",
        max_tokens=100,
        messages=HELLO,
        thinking={"type": "enabled", "budget_tokens": 100},
    ) as stream:
        final = stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."
    record = wait_for_record(route="/v1/messages")
    assert record.completion_tokens == 8  # 3 thinking + 5 text tokens


def test_bad_key_raises_authentication_error(claude_for, db, served):
    with pytest.raises(anthropic.AuthenticationError) as raised:
        claude_for("ollama-" + "z" * 43).messages.create(
            model="llama3.2", max_tokens=5, messages=HELLO
        )
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "authentication_error"


def test_refused_model_answers_like_a_missing_one(claude, claude_for, make_key, fake_ollama_server):
    _, raw = make_key(allowed_models=["qwen2.5:0.5b"])
    errors = []
    # Refused by the gateway's allowlist, and unknown to Ollama.
    for client, model in ((claude_for(raw), "no-such-model"), (claude, "no-such-model")):
        with pytest.raises(anthropic.NotFoundError) as raised:
            client.messages.create(model=model, max_tokens=5, messages=HELLO)
        errors.append(raised.value.body["error"])
    assert errors[0] == errors[1]
    assert errors[0] == {
        "type": "not_found_error",
        "message": 'model "no-such-model" not found, try pulling it first',
    }
    # Only the second reached Ollama.
    assert [json.loads(r.body)["model"] for r in fake_ollama_server.requests] == ["no-such-model"]


def test_rate_limit_raises_rate_limit_error(claude_for, make_key):
    _, raw = make_key(rate_limit=1)
    client = claude_for(raw)
    client.messages.create(model="llama3.2", max_tokens=5, messages=HELLO)
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="llama3.2", max_tokens=5, messages=HELLO)
    assert raised.value.body["error"]["type"] == "rate_limit_error"
    assert int(raised.value.response.headers["Retry-After"]) > 0


def test_failure_mid_stream_ends_with_an_error_event(claude, fake_ollama_server):
    fake_ollama_server.configure(fail="midstream", tokens=5)
    with (
        pytest.raises(anthropic.APIStatusError) as raised,
        claude.messages.stream(model="llama3.2", max_tokens=100, messages=HELLO) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert "stopped answering" in str(raised.value)
    assert wait_for_record(route="/v1/messages").outcome == "upstream_error"


@pytest.mark.parametrize(
    ("fail", "status", "kind"),
    [("busy", 503, "overloaded_error"), ("error500", 500, "api_error")],
)
def test_upstream_errors_keep_anthropic_shape(claude, fake_ollama_server, fail, status, kind):
    fake_ollama_server.configure(fail=fail)
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(model="llama3.2", max_tokens=5, messages=HELLO)
    assert raised.value.status_code == status
    assert raised.value.body["error"]["type"] == kind


def test_gateway_errors_are_in_anthropic_shape(served, user_key):
    headers = {"x-api-key": user_key[1], "anthropic-version": "2023-06-01"}
    too_big = httpx.post(
        f"{served}/v1/messages",
        content=b"{" + b" " * (51 * 1024 * 1024) + b"}",
        headers={**headers, "content-type": "application/json"},
        timeout=30,
    )
    assert too_big.status_code == 413
    assert too_big.json()["error"]["type"] == "request_too_large"
    bad = httpx.post(f"{served}/v1/messages", content=b"[", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(f"{served}/v1/messages/batches", json={}, headers=headers)
    assert unknown.status_code == 404
    assert unknown.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Not found."},
    }


def test_claude_code_session(served, fake_ollama_server, user_key):
    """What Claude Code does: probe HEAD /, then long tool-enabled streams with its headers."""
    fake_ollama_server.configure(tokens=200, token_delay=0.002)
    probe = httpx.head(served + "/")
    assert probe.status_code == 200
    assert probe.headers["content-type"].startswith("text/plain")
    headers = {
        "x-api-key": user_key[1],
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "content-type": "application/json",
    }
    body = {
        "model": "llama3.2",
        "max_tokens": 32000,
        "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "list the files"}]}],
    }
    with httpx.stream(
        "POST", f"{served}/v1/messages?beta=true", json=body, headers=headers, timeout=60
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        relayed = answer.read()
    events = sse_events(relayed)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_delta") == 200
    assert "".join(e["delta"]["text"] for n, e in events if n == "content_block_delta") == "".join(
        f"tok{i} " for i in range(200)
    )
    # With tools, the same session gets a tool_use block.
    tooled = httpx.post(
        f"{served}/v1/messages?beta=true",
        json={**body, "tools": [WEATHER]},
        headers=headers,
        timeout=60,
    )
    tool_events = sse_events(tooled.content)
    starts = [e["content_block"] for n, e in tool_events if n == "content_block_start"]
    assert starts[0]["type"] == "tool_use"
    assert tool_events[-2][1]["delta"]["stop_reason"] == "tool_use"
    records = wait_for_records(2, route="/v1/messages")
    assert [r.completion_tokens for r in records] == [200, 200]  # as the fake reports them
    for request in fake_ollama_server.requests:
        assert "x-api-key" not in request.headers and "authorization" not in request.headers
        assert request.headers["anthropic-beta"] == headers["anthropic-beta"]


def test_count_tokens_answers_404_after_the_key_and_model_checks(
    served, user_key, make_key, fake_ollama_server
):
    url = f"{served}/v1/messages/count_tokens?beta=true"
    body = {"model": "llama3.2", "messages": HELLO}
    anonymous = httpx.post(url, json=body)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    answer = httpx.post(url, json=body, headers={"x-api-key": user_key[1]})
    assert answer.status_code == 404
    assert answer.json()["error"]["type"] == "not_found_error"
    assert "count_tokens is not available" in answer.json()["error"]["message"]
    _, limited = make_key(allowed_models=["qwen2.5:0.5b"])
    refused = httpx.post(url, json=body, headers={"x-api-key": limited})
    assert refused.json()["error"]["message"] == 'model "llama3.2" not found, try pulling it first'
    assert fake_ollama_server.requests == []
    # The SDK call raises NotFoundError, which Claude Code handles.
    with pytest.raises(anthropic.NotFoundError):
        anthropic.Anthropic(
            base_url=served, api_key=user_key[1], max_retries=0
        ).messages.count_tokens(model="llama3.2", messages=HELLO)


def test_stats_count_messages_with_tokens(claude, served, user_key):
    claude.messages.create(model="llama3.2", max_tokens=100, messages=HELLO)
    with claude.messages.stream(model="llama3.2", max_tokens=3, messages=HELLO) as stream:
        stream.get_final_message()
    wait_for_records(2, route="/v1/messages")
    stats = httpx.get(f"{served}/api/stats", headers={"x-api-key": user_key[1]}).json()
    totals = stats["totals"]
    assert totals["prompt_tokens"] == 4 and totals["completion_tokens"] == 8
    assert {row["model"]: row["requests"] for row in stats["by_model"]}["llama3.2"] == 2


def test_token_quota_counts_anthropic_tokens(claude_for, make_key):
    _, raw = make_key(token_quota=5)
    client = claude_for(raw)
    client.messages.create(model="llama3.2", max_tokens=100, messages=HELLO)  # 2 + 5 tokens
    wait_for_record(route="/v1/messages")
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(model="llama3.2", max_tokens=100, messages=HELLO)
    assert raised.value.body["error"] == {
        "type": "rate_limit_error",
        "message": "Token quota exceeded",
    }
