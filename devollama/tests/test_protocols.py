"""The development Ollama's Anthropic, Responses and audio routes, probes and its scheduler,
driven by the official `anthropic` and `openai` packages and raw HTTP."""

import gzip
import json
import threading
import time

import anthropic
import httpx
import openai
import pytest
import zstandard

from devollama import token_texts

EXPECTED = "".join(token_texts(5))
WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def claude(fake):
    return anthropic.Anthropic(base_url=fake.url, api_key="x", max_retries=0)


@pytest.fixture
def oai(fake):
    return openai.OpenAI(base_url=fake.url + "/v1", api_key="x", max_retries=0)


def sse_events(raw: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        events.append((name[7:], json.loads(data[6:])))
    return events


def test_messages_whole(claude):
    message = claude.messages.create(model="llama3.2", max_tokens=100, messages=HELLO)
    assert message.content[0].text == EXPECTED
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 5)


def test_messages_max_tokens_stops_early(claude):
    message = claude.messages.create(model="llama3.2", max_tokens=2, messages=HELLO)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2


def test_messages_stream_event_sequence(fake):
    body = {"model": "llama3.2", "max_tokens": 50, "messages": HELLO, "stream": True}
    answer = httpx.post(f"{fake.url}/v1/messages", json=body)
    assert answer.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in sse_events(answer.content)]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    events = dict(sse_events(answer.content))
    assert events["message_start"]["message"]["usage"] == {"input_tokens": 2, "output_tokens": 0}
    assert events["message_delta"]["usage"]["output_tokens"] == 5
    assert events["message_delta"]["delta"]["stop_reason"] == "end_turn"


def test_messages_stream_thinking_then_text(claude):
    with claude.messages.stream(
        model="llama3.2",
        max_tokens=100,
        messages=HELLO,
        thinking={"type": "enabled", "budget_tokens": 64},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == EXPECTED
    assert [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."


@pytest.mark.parametrize("stream", [False, True])
def test_messages_tool_use(claude, stream):
    arguments = {"model": "llama3.2", "max_tokens": 100, "messages": HELLO, "tools": [WEATHER]}
    if stream:
        with claude.messages.stream(**arguments) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**arguments)
    assert message.stop_reason == "tool_use"
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather"
    assert block.input == {"city": "fake"} and block.id.startswith("call_")


def test_messages_errors_in_anthropic_shape(claude, fake):
    with pytest.raises(anthropic.NotFoundError) as raised:
        claude.messages.create(model="nope", max_tokens=10, messages=HELLO)
    assert raised.value.body["error"]["message"] == 'model "nope" not found, try pulling it first'
    with pytest.raises(anthropic.BadRequestError) as raised:
        claude.messages.create(model="llama3.2", max_tokens=0, messages=HELLO)
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    fake.configure(fail="busy")
    with pytest.raises(anthropic.APIStatusError) as raised:
        claude.messages.create(model="llama3.2", max_tokens=10, messages=HELLO)
    assert raised.value.status_code == 503
    assert raised.value.body["error"]["type"] == "overloaded_error"


def test_messages_stream_timing_knobs(claude, fake):
    fake.configure(ttft=0.2, token_delay=0.1, tokens=3)
    started = time.monotonic()
    arrivals = []
    with claude.messages.stream(model="llama3.2", max_tokens=10, messages=HELLO) as stream:
        for _ in stream.text_stream:
            arrivals.append(time.monotonic() - started)
    assert arrivals[0] >= 0.2
    assert arrivals[-1] - arrivals[0] >= 0.18


def test_responses_whole_and_usage(oai):
    response = oai.responses.create(model="llama3.2", input="hello there", instructions="be brief")
    assert response.output_text == EXPECTED
    assert response.status == "completed"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (4, 5)


def test_responses_stream_event_sequence(oai):
    events = list(oai.responses.create(model="llama3.2", input="hi", stream=True))
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 5,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 5
    assert events[-1].response.output_text == EXPECTED


def test_responses_reasoning_and_function_call(oai):
    tool = {"type": "function", "name": "f", "parameters": WEATHER["input_schema"]}
    response = oai.responses.create(
        model="llama3.2", input="hi", tools=[tool], reasoning={"effort": "low"}
    )
    kinds = [item.type for item in response.output]
    assert kinds == ["reasoning", "function_call"]
    assert json.loads(response.output[1].arguments) == {"city": "fake"}
    with oai.responses.stream(model="llama3.2", input="hi", reasoning={"effort": "low"}) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "message"]


def test_zstd_bodies_on_v1_routes_only(fake):
    body = json.dumps({"model": "llama3.2", "input": "hi"}).encode()
    compressed = zstandard.ZstdCompressor().compress(body)
    headers = {"Content-Type": "application/json", "Content-Encoding": "zstd"}
    answer = httpx.post(f"{fake.url}/v1/responses", content=compressed, headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "completed"
    # Ollama's native routes and gzip bodies get no such treatment: the bytes are not JSON.
    native = httpx.post(f"{fake.url}/api/chat", content=compressed, headers=headers)
    assert native.status_code == 400
    gzipped = httpx.post(
        f"{fake.url}/v1/responses",
        content=gzip.compress(body),
        headers={**headers, "Content-Encoding": "gzip"},
    )
    assert gzipped.status_code == 400


def test_transcriptions(oai, fake):
    text = oai.audio.transcriptions.create(model="llama3.2", file=("a.wav", b"RIFF...."))
    assert text.text == EXPECTED.strip()
    plain = oai.audio.transcriptions.create(
        model="llama3.2", file=("a.wav", b"RIFF...."), response_format="text"
    )
    assert plain == EXPECTED.strip()
    with pytest.raises(openai.NotFoundError):
        oai.audio.transcriptions.create(model="nope", file=("a.wav", b"RIFF"))
    assert fake.requests[-1].headers["content-type"].startswith("multipart/form-data")


def test_probes_and_status(fake):
    for path in ("/", "/api/version", "/api/tags"):
        head = httpx.head(fake.url + path)
        assert head.status_code == 200 and head.content == b""
    assert httpx.get(fake.url + "/").text == "Ollama is running"
    assert httpx.get(fake.url + "/api/status").json() == {
        "cloud": {"disabled": False, "source": "none"}
    }


def test_parallel_caps_generations_and_queues_fifo(fake):
    fake.configure(parallel=2, token_delay=0.25, tokens=4)
    finished = []

    def generate(index):
        httpx.post(
            f"{fake.url}/api/generate",
            json={"model": "llama3.2", "prompt": str(index)},
            timeout=30,
        )
        finished.append(index)

    threads = [threading.Thread(target=generate, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)  # arrival order (with room for a busy machine)
    time.sleep(0.05)
    state = httpx.get(fake.url + "/_fake/state").json()
    assert state["running"] == 2 and state["queued"] == 4
    for thread in threads:
        thread.join()
    state = httpx.get(fake.url + "/_fake/state").json()
    assert state["max_running"] == 2 and state["running"] == 0
    assert sorted(finished) == list(range(6))
    # A request is recorded when it gets its slot: first come, first served.
    assert [r.json()["prompt"] for r in fake.requests] == [str(i) for i in range(6)]


def test_full_queue_answers_server_busy(fake):
    fake.configure(parallel=1, max_queue=1, ttft=0.5)
    results = {}

    def post(index, path, body):
        results[index] = httpx.post(f"{fake.url}{path}", json=body, timeout=30)

    chat = {"model": "llama3.2", "messages": HELLO}
    threads = [
        threading.Thread(target=post, args=(0, "/api/chat", chat)),
        threading.Thread(target=post, args=(1, "/api/chat", chat)),
    ]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    busy_native = httpx.post(f"{fake.url}/api/chat", json=chat)
    busy_claude = httpx.post(f"{fake.url}/v1/messages", json={**chat, "max_tokens": 5}, timeout=30)
    for thread in threads:
        thread.join()
    assert busy_native.status_code == 503
    assert busy_native.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    assert busy_claude.status_code == 503
    assert busy_claude.json()["error"]["type"] == "overloaded_error"
    assert [results[i].status_code for i in (0, 1)] == [200, 200]
    assert httpx.get(fake.url + "/_fake/state").json()["max_running"] == 1


def test_no_parallel_cap_reports_the_peak(fake):
    fake.configure(ttft=1.5)  # long enough to overlap on a busy machine
    threads = [
        threading.Thread(
            target=httpx.post,
            args=(f"{fake.url}/api/generate",),
            kwargs={"json": {"model": "llama3.2", "prompt": "x"}, "timeout": 30},
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert httpx.get(fake.url + "/_fake/state").json()["max_running"] == 3


def test_fault_knobs_apply_to_the_new_routes(fake, oai, claude):
    fake.configure(fail="error500")
    with pytest.raises(openai.InternalServerError) as raised:
        oai.responses.create(model="llama3.2", input="hi")
    assert raised.value.body["type"] == "api_error"
    with pytest.raises(openai.InternalServerError):
        oai.audio.transcriptions.create(model="llama3.2", file=("a.wav", b"RIFF"))
    fake.configure(fail="midstream")
    body = {"model": "llama3.2", "max_tokens": 50, "messages": HELLO, "stream": True}
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{fake.url}/v1/messages", json=body).read()
    fake.configure(fail="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{fake.url}/v1/responses", json={"model": "llama3.2", "input": "x"}, timeout=0.3
        )
