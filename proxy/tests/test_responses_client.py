"""The official `openai` package's Responses API and a Codex-shaped client (zstd bodies), through
the gateway's /v1/responses under gunicorn."""

import gzip
import json
import time

import httpx
import openai
import pytest
import zstandard

from testsupport import wait_for_record


@pytest.fixture
def client(served, user_key):
    return openai.OpenAI(base_url=f"{served}/v1", api_key=user_key[1], max_retries=0)


def zstd_bomb(gib: int = 1) -> bytes:
    """`gib` GiB of zeros, zstd-compressed to about 32 KB per GiB."""
    writer = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = b"\0" * (1 << 20)
    return b"".join(writer.compress(zeros) for _ in range(1024 * gib)) + writer.flush()


def test_create_is_relayed_and_recorded(client, fake_ollama_server, user_key):
    response = client.responses.create(model="llama3.2", input="hello there")
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert (response.usage.input_tokens, response.usage.output_tokens) == (2, 5)
    record = wait_for_record(route="/v1/responses")
    assert (record.model, record.status, record.outcome) == ("llama3.2", 200, "ok")
    assert (record.prompt_tokens, record.completion_tokens) == (2, 5)
    headers = fake_ollama_server.requests[-1].headers
    assert "authorization" not in headers and user_key[1] not in json.dumps(dict(headers))


def test_stream_is_relayed_event_by_event_and_counted(client, fake_ollama_server):
    fake_ollama_server.configure(tokens=4, token_delay=0.15)
    started = time.monotonic()
    events = []
    for event in client.responses.create(model="llama3.2", input="hi", stream=True):
        events.append((time.monotonic() - started, event))
    types = [event.type for _, event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types.count("response.output_text.delta") == 4
    assert types[-1] == "response.completed"
    deltas = [at for at, event in events if event.type == "response.output_text.delta"]
    assert deltas[-1] - deltas[0] >= 0.3  # not buffered until the end
    record = wait_for_record(route="/v1/responses")
    assert (record.prompt_tokens, record.completion_tokens) == (1, 4)
    assert record.outcome == "ok" and record.ttft_ms is not None


def test_refused_model_answers_like_a_missing_one(client, served, make_key):
    _, raw = make_key(allowed_models=["qwen2.5:0.5b"])
    limited = openai.OpenAI(base_url=f"{served}/v1", api_key=raw, max_retries=0)
    bodies = []
    for each in (limited, client):
        with pytest.raises(openai.NotFoundError) as raised:
            each.responses.create(model="gone", input="hi")
        bodies.append(raised.value.body)
    assert bodies[0] == bodies[1]
    assert bodies[0]["message"] == 'model "gone" not found, try pulling it first'


def test_failure_mid_stream_ends_with_response_failed(client, fake_ollama_server):
    fake_ollama_server.configure(fail="midstream")
    events = list(client.responses.create(model="llama3.2", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert "stopped answering" in events[-1].response.error.message
    assert wait_for_record(route="/v1/responses").outcome == "upstream_error"


def test_codex_zstd_body_is_decoded_and_forwarded_plain(served, fake_ollama_server, user_key):
    body = {
        "model": "llama3.2",
        "instructions": "You are Codex.",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "fix it"}]}],
        "stream": True,
        "store": False,
    }
    raw = json.dumps(body).encode()
    answer = httpx.post(
        f"{served}/v1/responses",
        content=zstandard.ZstdCompressor().compress(raw),
        headers={
            "Authorization": f"Bearer {user_key[1]}",
            "Content-Type": "application/json",
            "Content-Encoding": "zstd",
            "Accept": "text/event-stream",
        },
        timeout=30,
    )
    assert answer.status_code == 200
    assert b"event: response.completed" in answer.content
    forwarded = fake_ollama_server.requests[-1]
    assert forwarded.body == raw and "content-encoding" not in forwarded.headers
    assert wait_for_record(route="/v1/responses").model == "llama3.2"


def test_gzip_body_is_decoded_too(served, fake_ollama_server, user_key):
    raw = json.dumps({"model": "llama3.2", "input": "hi"}).encode()
    answer = httpx.post(
        f"{served}/v1/responses",
        content=gzip.compress(raw),
        headers={"Authorization": f"Bearer {user_key[1]}", "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 200 and answer.json()["status"] == "completed"
    assert fake_ollama_server.requests[-1].body == raw


def test_zstd_bomb_is_refused_at_once(served, fake_ollama_server, user_key):
    bomb = zstd_bomb(1)
    assert len(bomb) < 64 * 1024
    started = time.monotonic()
    answer = httpx.post(
        f"{served}/v1/responses",
        content=bomb,
        headers={"Authorization": f"Bearer {user_key[1]}", "Content-Encoding": "zstd"},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "once decompressed" in answer.json()["error"]["message"]
    # Stops after MAX_REQUEST_BODY_BYTES (50 MiB), not the whole gigabyte.
    assert elapsed < 2.0
    assert fake_ollama_server.requests == []


@pytest.mark.parametrize(
    ("encoding", "content", "status"), [("br", b"{}", 415), ("zstd", b"garbage", 400)]
)
def test_bad_encodings_in_openai_shape(served, user_key, encoding, content, status):
    answer = httpx.post(
        f"{served}/v1/responses",
        content=content,
        headers={"Authorization": f"Bearer {user_key[1]}", "Content-Encoding": encoding},
    )
    assert answer.status_code == status
    assert answer.json()["error"]["type"] == "invalid_request_error"
