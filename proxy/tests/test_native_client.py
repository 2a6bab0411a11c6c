"""The official `ollama` package, unchanged, through the gateway."""

import ollama
import pytest

from testsupport import wait_for_record


@pytest.fixture
def client(ollama_for, user_key):
    return ollama_for(user_key[1])


def test_list_show_version_and_ps(client, fake_ollama):
    names = {m.model for m in client.list().models}
    assert names == set(fake_ollama.config.models)
    shown = client.show("llama3.2")
    assert shown.details.family
    client.generate(model="llama3.2", prompt="warm up")
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]


def test_generate_streaming_and_not(client):
    whole = client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=False)
    assert whole.done and whole.response and whole.eval_count == 5
    parts = list(client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=True))
    assert len(parts) == 6 and parts[-1].done and parts[-1].done_reason == "stop"
    assert "".join(p.response for p in parts) == whole.response


def test_chat_streaming_and_not(client):
    messages = [{"role": "user", "content": "Hello there"}]
    whole = client.chat(model="llama3.2", messages=messages)
    assert whole.message.role == "assistant" and whole.message.content
    parts = list(client.chat(model="llama3.2", messages=messages, stream=True))
    assert parts[-1].done and parts[-1].prompt_eval_count > 0
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_chat_with_tools(client):
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    answer = client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "Weather?"}], tools=[tool]
    )
    assert answer.message.tool_calls[0].function.name == "get_weather"


def test_embed_and_legacy_embeddings(client, user_key):
    answer = client.embed(model="nomic-embed-text", input=["a b c", "d"])
    assert len(answer.embeddings) == 2 and answer.prompt_eval_count == 4
    assert client.embeddings(model="nomic-embed-text", prompt="a").embedding
    # /api/embed answers have no `done`: their prompt tokens still count (quotas, statistics).
    record = wait_for_record(key=user_key[0], route="/api/embed")
    assert (record.prompt_tokens, record.completion_tokens) == (4, 0)


def test_unknown_model_raises_404(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="no-such-model", prompt="hi")
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'no-such-model' not found"


def test_allowlist_hides_models_exactly_like_missing_ones(ollama_for, make_key, fake_ollama):
    _, raw = make_key(allowed_models=["llama3.2"])
    client = ollama_for(raw)
    assert [m.model for m in client.list().models] == ["llama3.2:latest"]
    for call in (
        lambda: client.generate(model="qwen2.5:0.5b", prompt="hi"),
        lambda: client.chat(model="qwen2.5:0.5b", messages=[]),
        lambda: client.show("qwen2.5:0.5b"),
        lambda: client.embed(model="nomic-embed-text", input="x"),
    ):
        with pytest.raises(ollama.ResponseError) as raised:
            call()
        assert raised.value.status_code == 404
        assert raised.value.error.startswith("model '") and raised.value.error.endswith("not found")
    assert not any(r.path.startswith(("/api/generate", "/api/chat")) for r in fake_ollama.requests)


def test_no_key_or_bad_key_raises_401(ollama_for, gateway, db):
    for client in (ollama.Client(host=gateway), ollama_for("ollama-" + "x" * 43)):
        with pytest.raises(ollama.ResponseError) as raised:
            client.list()
        assert raised.value.status_code == 401


def test_ollama_api_key_variable_is_honoured(gateway, user_key, monkeypatch):
    monkeypatch.setenv("OLLAMA_API_KEY", user_key[1])
    assert ollama.Client(host=gateway).list().models


def test_path_prefix_and_model_management_for_admins(ollama_for, admin_key, fake_ollama):
    client = ollama_for(admin_key[1])
    progress = list(client.pull("tinyllama", stream=True))
    assert progress[-1].status == "success"
    assert "tinyllama:latest" in {m.model for m in client.list().models}
    assert client.copy("tinyllama", "tinyllama-copy").status == "success"
    assert client.delete("tinyllama-copy").status == "success"
    with pytest.raises(ollama.ResponseError) as raised:
        client.delete("tinyllama-copy")
    assert raised.value.status_code == 404
    assert client.create(model="mine", from_="llama3.2", system="Be brief.").status == "success"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.pull("tinyllama"),
        lambda c: c.push("llama3.2"),
        lambda c: c.create(model="mine", from_="llama3.2"),
        lambda c: c.copy("llama3.2", "other"),
        lambda c: c.delete("llama3.2"),
    ],
    ids=["pull", "push", "create", "copy", "delete"],
)
def test_model_management_is_refused_to_user_keys(client, call, fake_ollama):
    with pytest.raises(ollama.ResponseError) as raised:
        call(client)
    assert raised.value.status_code == 403
    assert "admin" in raised.value.error
    assert fake_ollama.requests == []


@pytest.mark.parametrize("path", ["/api/version", "/api/tags"])
def test_head_requests_as_ollama_serves_them(gateway, user_key, path):
    import requests

    response = requests.head(
        gateway + path, headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
