"""The official `openai` package, unchanged, through the gateway's /v1 routes."""

import openai
import pytest


@pytest.fixture
def client(openai_for, user_key):
    return openai_for(user_key[1])


def test_chat_completion(client):
    answer = client.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "Hello"}]
    )
    assert answer.choices[0].message.content
    assert answer.usage.completion_tokens == 5 and answer.usage.prompt_tokens > 0


def test_streaming_chat_completion_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="llama3.2",
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 5


def test_completions_and_embeddings(client):
    assert client.completions.create(model="llama3.2", prompt="Once").choices[0].text
    vectors = client.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert len(vectors.data) == 2


def test_models_are_filtered_by_the_allowlist(openai_for, make_key):
    _, raw = make_key(allowed_models=["qwen2.5:0.5b"])
    client = openai_for(raw)
    assert [m.id for m in client.models.list()] == ["qwen2.5:0.5b"]
    assert client.models.retrieve("qwen2.5:0.5b").id == "qwen2.5:0.5b"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("llama3.2:latest")
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="llama3.2", messages=[])
    assert raised.value.body["message"] == 'model "llama3.2" not found, try pulling it first'


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_bad_key_raises_authentication_error(openai_for, db):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_for("ollama-" + "z" * 43).models.list()
    assert raised.value.body["type"] == "authentication_error"


def test_bad_request_raises_bad_request_error(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="", messages=[])
