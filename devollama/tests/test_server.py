"""The development Ollama, driven by the official clients and raw HTTP. No database needed."""

import base64
import hashlib
import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest
import requests

from devollama import FakeConfig, FakeOllama, token_texts

EXPECTED = "".join(token_texts(5))  # the answer with the default 5 tokens
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
        },
    },
}


@pytest.fixture
def client(fake):
    return ollama.Client(host=fake.url)


@pytest.fixture
def oai(fake):
    # No retries: the SDK would otherwise retry the injected 5xx with back-off.
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)


def post(fake, path, body, **kwargs):
    return requests.post(fake.url + path, json=body, timeout=5, **kwargs)


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def sse_events(response):
    """The data of each Server-Sent Event, decoded from JSON except the final [DONE]."""
    events = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


# Native API: metadata


def test_root_answers_like_ollama(fake):
    assert requests.get(fake.url, timeout=5).text == "Ollama is running"
    head = requests.head(fake.url, timeout=5)
    assert head.status_code == 200 and head.text == ""


def test_version(fake):
    fake.config.version = "0.13.0"
    assert requests.get(fake.url + "/api/version", timeout=5).json() == {"version": "0.13.0"}


def test_list_models(client):
    models = client.list().models
    assert [model.model for model in models] == [
        "llama3.2:latest",
        "qwen2.5:0.5b",
        "nomic-embed-text:latest",
    ]
    assert len(models[0].digest) == 64 and models[0].size > 0
    assert models[0].details.format == "gguf"
    assert models[1].details.parameter_size == "0.5B"


def test_digest_is_stable_per_name(fake, client):
    first = client.list().models[0].digest
    fake.reset()
    assert client.list().models[0].digest == first


def test_show(client):
    shown = client.show("llama3.2")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.details.family == "llama"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "FROM llama3.2:latest" in shown.modelfile
    assert client.show("nomic-embed-text").capabilities == ["embedding"]


def test_show_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.show("missing")
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'missing' not found"


def test_ps_lists_models_loaded_until_unloaded(client):
    assert client.ps().models == []
    client.generate(model="llama3.2", prompt="hi")
    running = client.ps().models
    assert [model.name for model in running] == ["llama3.2:latest"]
    assert running[0].expires_at is not None and running[0].size_vram > 0
    unloaded = client.generate(model="llama3.2", prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert client.ps().models == []


# Native API: generation


def test_generate_without_streaming(client):
    answer = client.generate(model="llama3.2", prompt="why is the sky blue", stream=False)
    assert answer.response == EXPECTED
    assert answer.done and answer.done_reason == "stop"
    assert answer.eval_count == 5 and answer.prompt_eval_count == 5
    assert answer.context and answer.total_duration > answer.eval_duration > 0


def test_generate_streams_ndjson(fake, client):
    parts = list(client.generate(model="llama3.2", prompt="hi", stream=True))
    assert "".join(part.response for part in parts) == EXPECTED
    assert [part.done for part in parts] == [False] * 5 + [True]
    assert parts[-1].eval_count == 5 and parts[-1].context


def test_generate_streams_by_default_in_chunked_ndjson(fake):
    response = post(fake, "/api/generate", {"model": "llama3.2", "prompt": "hi"})
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert response.headers["Transfer-Encoding"] == "chunked"
    lines = response.text.split("\n")
    assert lines[-1] == "" and all(lines[:-1])  # one object per line, no blank line
    assert [json.loads(line)["done"] for line in lines[:-1]] == [False] * 5 + [True]


def test_generate_with_empty_prompt_loads_the_model(client):
    loaded = client.generate(model="llama3.2", prompt="")
    assert (loaded.done, loaded.done_reason, loaded.response) == (True, "load", "")


def test_num_predict_caps_the_answer(client):
    answer = client.generate(model="llama3.2", prompt="hi", options={"num_predict": 2})
    assert answer.response == "".join(token_texts(2))
    assert (answer.done_reason, answer.eval_count) == ("length", 2)


def test_tokens_config(fake, client):
    fake.config.tokens = 12
    assert client.generate(model="llama3.2", prompt="hi").response == "".join(token_texts(12))


def test_chat_without_streaming(client):
    messages = [{"role": "user", "content": "one two three"}]
    answer = client.chat(model="llama3.2", messages=messages, stream=False)
    assert answer.message.role == "assistant" and answer.message.content == EXPECTED
    assert answer.prompt_eval_count == 3 and answer.eval_count == 5
    assert answer.done_reason == "stop"


def test_chat_streams(client):
    messages = [{"role": "user", "content": "hi"}]
    parts = list(client.chat(model="qwen2.5:0.5b", messages=messages, stream=True))
    assert "".join(part.message.content for part in parts) == EXPECTED
    assert parts[-1].done and parts[-1].eval_count == 5
    assert parts[0].model == "qwen2.5:0.5b"


def test_chat_with_empty_messages_loads_the_model(client):
    loaded = client.chat(model="llama3.2", messages=[])
    assert (loaded.done_reason, loaded.message.content) == ("load", "")


def test_chat_calls_the_first_tool(client):
    messages = [{"role": "user", "content": "weather in Paris?"}]
    answer = client.chat(model="llama3.2", messages=messages, tools=[WEATHER_TOOL], stream=False)
    (call,) = answer.message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == {"city": "fake", "unit": "celsius"}


def test_chat_thinks_when_asked(client):
    messages = [{"role": "user", "content": "hi"}]
    answer = client.chat(model="llama3.2", messages=messages, think=True, stream=False)
    assert answer.message.thinking and answer.message.content == EXPECTED
    parts = list(client.chat(model="llama3.2", messages=messages, think=True, stream=True))
    assert parts[0].message.thinking and not parts[0].message.content


def test_embedding_model_cannot_generate(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.generate(model="nomic-embed-text", prompt="hi")
    assert raised.value.status_code == 400


def test_embed(client):
    answer = client.embed(model="nomic-embed-text", input=["a", "b", "a"])
    first, second, third = answer.embeddings
    assert len(first) == 8 and first == third != second
    assert abs(sum(value * value for value in first) - 1) < 1e-4
    assert answer.prompt_eval_count == 3
    assert len(client.embed(model="nomic-embed-text", input="a", dimensions=16).embeddings[0]) == 16


def test_legacy_embeddings(client):
    assert len(client.embeddings(model="nomic-embed-text", prompt="hello").embedding) == 8


# Native API: errors


def test_unknown_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as raised:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404
    assert raised.value.error == "model 'nope' not found"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "missing request body"),
        (b"{not json", "invalid JSON"),
        (b"[]", "json: cannot unmarshal"),
        (b'{"prompt": "hi"}', "model is required"),
        (b'{"model": "llama3.2", "keep_alive": "soon"}', 'time: invalid duration "soon"'),
    ],
)
def test_bad_requests_are_400(fake, body, message):
    response = requests.post(fake.url + "/api/generate", data=body, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_unknown_routes_answer_like_gin(fake):
    for method, path in [("GET", "/api/nothing"), ("GET", "/api/generate"), ("POST", "/")]:
        response = requests.request(method, fake.url + path, timeout=5)
        assert (response.status_code, response.text) == (404, "404 page not found")


# Native API: model management


def test_pull_streams_progress_and_adds_the_model(client):
    statuses = [part.status for part in client.pull("mario", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert any(status.startswith("pulling ") and len(status) == 20 for status in statuses)
    assert "mario:latest" in [model.model for model in client.list().models]
    assert client.pull("mario").status == "success"


def test_push(client):
    assert client.push("llama3.2").status == "success"
    statuses = [part.status for part in client.push("llama3.2", stream=True)]
    assert statuses[-1] == "success"


def test_create_adds_the_model(client):
    assert client.create(model="mine", from_="llama3.2").status == "success"
    assert "mine:latest" in [model.model for model in client.list().models]


def test_copy(client):
    assert client.copy("llama3.2", "backup").status == "success"
    assert "backup:latest" in [model.model for model in client.list().models]
    with pytest.raises(ollama.ResponseError) as raised:
        client.copy("nope", "other")
    assert raised.value.status_code == 404


def test_delete_takes_a_json_body(fake, client):
    assert client.delete("qwen2.5:0.5b").status == "success"
    assert fake.requests[-1].method == "DELETE"
    assert fake.requests[-1].json() == {"model": "qwen2.5:0.5b"}
    assert "qwen2.5:0.5b" not in [model.model for model in client.list().models]
    with pytest.raises(ollama.ResponseError) as raised:
        client.delete("qwen2.5:0.5b")
    assert raised.value.status_code == 404


def test_blobs_check_their_digest(fake, client, tmp_path: Path):
    data = b"weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = f"{fake.url}/api/blobs/{digest}"
    assert requests.head(url, timeout=5).status_code == 404
    wrong = requests.post(url, data=b"other", timeout=5)
    assert (wrong.status_code, wrong.json()) == (400, {"error": "digest mismatch"})
    assert requests.post(url, data=data, timeout=5).status_code == 201
    assert requests.head(url, timeout=5).status_code == 200
    assert requests.head(fake.url + "/api/blobs/sha256:xyz", timeout=5).status_code == 400
    blob = tmp_path / "adapter.bin"
    blob.write_bytes(b"adapter")
    uploaded = client.create_blob(blob)
    assert requests.head(f"{fake.url}/api/blobs/{uploaded}", timeout=5).status_code == 200


def test_chunked_request_bodies_are_read(fake):
    chunks = iter([b'{"model": "llama3.2", ', b'"prompt": "hi", "stream": false}'])
    response = requests.post(fake.url + "/api/generate", data=chunks, timeout=5)
    assert response.json()["response"] == EXPECTED
    assert fake.requests[-1].headers["transfer-encoding"] == "chunked"


def test_http10_clients_get_a_stream_ended_by_closing(fake):
    body = json.dumps({"model": "llama3.2", "prompt": "hi"}).encode()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=5) as connection:
        connection.sendall(b"POST /api/generate HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body))
        connection.sendall(body)
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, lines = answer.partition(b"\r\n\r\n")
    assert b"chunked" not in head
    assert [json.loads(line)["done"] for line in lines.splitlines()] == [False] * 5 + [True]


# OpenAI-compatible API


def test_openai_chat(oai):
    messages = [{"role": "user", "content": "hello there"}]
    completion = oai.chat.completions.create(model="llama3.2", messages=messages)
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.system_fingerprint == "fp_ollama"
    assert completion.choices[0].message.content == EXPECTED
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 5)
    assert completion.usage.total_tokens == 7


def test_openai_chat_streams_server_sent_events(oai):
    messages = [{"role": "user", "content": "hi"}]
    chunks = list(
        oai.chat.completions.create(
            model="llama3.2",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks[:-1]) == EXPECTED
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5


def test_openai_stream_wire_format(fake):
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = post(fake, "/v1/chat/completions", body)
    assert response.headers["Content-Type"] == "text/event-stream"
    events = sse_events(response)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in event for event in events[:-1])  # not asked for


def test_openai_tool_call_arguments_are_a_json_string(oai):
    messages = [{"role": "user", "content": "weather?"}]
    completion = oai.chat.completions.create(
        model="llama3.2", messages=messages, tools=[WEATHER_TOOL]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert json.loads(choice.message.tool_calls[0].function.arguments)["city"] == "fake"


def test_openai_max_tokens(oai):
    messages = [{"role": "user", "content": "hi"}]
    completion = oai.chat.completions.create(model="llama3.2", messages=messages, max_tokens=1)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 1


def test_openai_completions(oai):
    completion = oai.completions.create(model="llama3.2", prompt="once upon")
    assert completion.object == "text_completion" and completion.choices[0].text == EXPECTED
    assert completion.usage.prompt_tokens == 2
    streamed = oai.completions.create(model="llama3.2", prompt="once upon", stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed) == EXPECTED


def test_openai_embeddings(fake, oai):
    result = oai.embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8 and result.usage.prompt_tokens == 2
    body = {"model": "nomic-embed-text", "input": "a", "encoding_format": "base64"}
    encoded = post(fake, "/v1/embeddings", body).json()["data"][0]["embedding"]
    decoded = struct.unpack("<8f", base64.b64decode(encoded))
    assert decoded == pytest.approx(result.data[0].embedding, abs=1e-6)


def test_openai_models(oai):
    assert next(model.id for model in oai.models.list()) == "llama3.2:latest"
    model = oai.models.retrieve("qwen2.5:0.5b")
    assert (model.id, model.object, model.owned_by) == ("qwen2.5:0.5b", "model", "library")


def test_openai_unknown_model_is_not_found(fake, oai):
    with pytest.raises(openai.NotFoundError) as raised:
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.body["message"] == 'model "nope" not found, try pulling it first'
    assert raised.value.body["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


def test_openai_errors_have_openai_shape(fake):
    response = post(fake, "/v1/chat/completions", {"model": "llama3.2", "messages": []})
    error = response.json()["error"]
    assert response.status_code == 400
    assert error == {
        "message": "[] is too short - 'messages'",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }


# Timing


def test_token_delay_spreads_chunks_in_time(fake, client):
    fake.config.token_delay = 0.1
    stream = client.generate(model="llama3.2", prompt="hi", stream=True)
    arrivals = [time.monotonic() for _ in stream]
    assert len(arrivals) == 6
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_ttft_delays_the_first_token_streaming_or_not(fake, client):
    fake.config.ttft = 0.2
    started = time.monotonic()
    stream = client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    next(iter(stream))
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    client.generate(model="llama3.2", prompt="hi", stream=False)
    assert time.monotonic() - started >= 0.2


# Injected failures


def test_midstream_failure_breaks_the_native_stream(fake, client):
    fake.config.fail = "midstream"
    received = []
    with pytest.raises(httpx.HTTPError):
        for part in client.generate(model="llama3.2", prompt="hi", stream=True):
            received.append(part)
    assert len(received) == 2 and not received[-1].done


def test_midstream_failure_breaks_openai_streams_and_whole_answers(fake):
    fake.config.fail = "midstream"
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post(fake, "/v1/chat/completions", body)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        post(fake, "/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False})


def test_hang_accepts_then_never_answers(fake):
    fake.config.fail = "hang"
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(fake.url + "/api/tags", timeout=(1, 0.3))
    assert fake.requests[-1].path == "/api/tags"  # the request was read
    assert requests.get(fake.url, timeout=5).status_code == 200  # "/" is not an API route


@pytest.mark.parametrize(("fail", "status"), [("error500", 500), ("busy", 503)])
def test_error_failures(fake, client, oai, fail, status):
    fake.config.fail = fail
    with pytest.raises(ollama.ResponseError) as raised:
        client.list()
    assert raised.value.status_code == status
    with pytest.raises(openai.InternalServerError) as raised_openai:
        oai.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "x"}])
    assert raised_openai.value.status_code == status
    assert raised_openai.value.body["type"] == "api_error"


def test_busy_message_is_ollamas(fake):
    fake.config.fail = "busy"
    response = post(fake, "/api/chat", {"model": "llama3.2", "messages": []})
    assert response.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }


def test_client_disconnect_is_detected(fake):
    fake.config.tokens, fake.config.token_delay = 1000, 0.02
    assert not fake.wait_for_disconnect(0.01)
    response = post(fake, "/api/generate", {"model": "llama3.2", "prompt": "hi"}, stream=True)
    assert json.loads(next(response.iter_lines()))["response"] == "tok0 "
    response.close()
    assert fake.wait_for_disconnect(5)
    assert fake.disconnects == 1


# Recording and control


def test_requests_are_recorded(fake, client):
    client.generate(model="llama3.2", prompt="hi", stream=False)
    (recorded,) = fake.requests
    assert (recorded.method, recorded.path) == ("POST", "/api/generate")
    assert recorded.json()["prompt"] == "hi"
    assert recorded.headers["Content-Type"] == recorded.headers["content-type"]
    assert "content-type" in recorded.headers


def test_control_endpoints(fake):
    assert post(fake, "/_fake/config", {"tokens": 2, "fail": None}).json()["tokens"] == 2
    generated = post(fake, "/api/generate", {"model": "llama3.2", "prompt": "hi", "stream": False})
    assert generated.json()["eval_count"] == 2
    state = requests.get(fake.url + "/_fake/state", timeout=5).json()
    assert state["config"]["tokens"] == 2 and state["request_count"] == 1
    assert state["requests"][0]["path"] == "/api/generate"
    assert json.loads(state["requests"][0]["body"])["prompt"] == "hi"
    assert post(fake, "/_fake/config", {"fail": "sometimes"}).status_code == 400
    assert post(fake, "/_fake/config", {"colour": "red"}).status_code == 400
    assert post(fake, "/_fake/reset", {}).json()["tokens"] == 5
    assert requests.get(fake.url + "/_fake/state", timeout=5).json()["request_count"] == 0


def test_reset_restores_the_initial_config_and_models(fake, client):
    client.pull("extra")
    fake.config.tokens = 1
    fake.reset()
    assert fake.config == FakeConfig()
    assert fake.requests == [] and "extra:latest" not in fake.config.models


def test_invalid_config_is_refused():
    with pytest.raises(ValueError):
        FakeConfig(fail="sometimes")


# Lifecycle


def test_stop_closes_everything_and_releases_hung_requests():
    fake = FakeOllama(config=FakeConfig(fail="hang")).start()
    session = requests.Session()
    session.get(fake.url, timeout=5)  # leaves an idle keep-alive connection
    outcome = []

    def hang():
        try:
            requests.get(fake.url + "/api/version", timeout=5)
        except requests.ConnectionError as error:
            outcome.append(error)

    thread = threading.Thread(target=hang)
    thread.start()
    wait_until(lambda: fake.requests)
    fake.stop()
    thread.join(5)
    assert outcome  # released, and the connection dropped without an answer
    with pytest.raises(requests.ConnectionError):
        session.get(fake.url, timeout=1)


def test_command_line():
    process = subprocess.Popen(
        [sys.executable, "-m", "devollama", "--port", "0", "--tokens", "3"],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("fake ollama listening on http://127.0.0.1:")
        url = line.split()[-1]
        answer = ollama.Client(host=url).generate(model="llama3.2", prompt="hi")
        assert answer.response == "".join(token_texts(3))
    finally:
        process.terminate()
        assert process.wait(5) == 0
