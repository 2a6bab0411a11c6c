"""/v1/audio/transcriptions: a multipart upload whose `model` field the allowlist checks."""

import openai
import pytest
import requests

from testsupport import wait_for_records

WAV = b"RIFF" + b"\0" * 2000


@pytest.fixture
def client(served, user_key):
    return openai.OpenAI(base_url=f"{served}/v1", api_key=user_key[1], max_retries=0)


def test_transcription(client, fake_ollama_server, user_key):
    answer = client.audio.transcriptions.create(model="llama3.2", file=("hello.wav", WAV))
    assert answer.text == "tok0 tok1 tok2 tok3 tok4"
    plain = client.audio.transcriptions.create(
        model="llama3.2", file=("hello.wav", WAV), response_format="text"
    )
    assert plain == "tok0 tok1 tok2 tok3 tok4"
    records = wait_for_records(2, route="/v1/audio/transcriptions")
    assert [(r.model, r.status, r.outcome) for r in records] == [("llama3.2", 200, "ok")] * 2
    assert "authorization" not in fake_ollama_server.requests[-1].headers


def test_multipart_bytes_are_forwarded_untouched(served, fake_ollama_server, user_key):
    answer = requests.post(
        f"{served}/v1/audio/transcriptions",
        files={"file": ("a.wav", WAV, "audio/wav")},
        data={"model": "llama3.2", "language": "en"},
        headers={"Authorization": f"Bearer {user_key[1]}"},
        timeout=30,
    )
    assert answer.status_code == 200
    sent = answer.request.body
    forwarded = fake_ollama_server.requests[-1]
    assert forwarded.body == sent
    assert forwarded.headers["content-type"] == answer.request.headers["Content-Type"]


def test_refused_model_answers_like_a_missing_one(client, served, make_key, fake_ollama_server):
    _, raw = make_key(allowed_models=["qwen2.5:0.5b"])
    limited = openai.OpenAI(base_url=f"{served}/v1", api_key=raw, max_retries=0)
    bodies = []
    for each in (limited, client):
        with pytest.raises(openai.NotFoundError) as raised:
            each.audio.transcriptions.create(model="whisper", file=("a.wav", WAV))
        bodies.append(raised.value.body)
    assert bodies[0] == bodies[1]
    assert bodies[0]["message"] == 'model "whisper" not found, try pulling it first'
    assert len(fake_ollama_server.requests) == 1  # only the unrestricted key's


def test_missing_model_field_is_400(served, user_key, fake_ollama_server):
    answer = requests.post(
        f"{served}/v1/audio/transcriptions",
        files={"file": ("a.wav", WAV, "audio/wav")},
        headers={"Authorization": f"Bearer {user_key[1]}"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == "model is required"
    assert fake_ollama_server.requests == []


def test_oversized_upload_is_413(client, fake_ollama_server):
    with pytest.raises(openai.APIStatusError) as raised:
        client.audio.transcriptions.create(
            model="llama3.2", file=("long.wav", b"\0" * (25 * 1024 * 1024 + 1))
        )
    assert raised.value.status_code == 413
    assert raised.value.body["type"] == "invalid_request_error"
    assert fake_ollama_server.requests == []
