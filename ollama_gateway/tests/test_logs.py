"""The log lines on stdout: what docs/operations.md says a request's line carries."""

import logging
import re
import time

import requests

from ollama_gateway.logs import TextFormatter
from testsupport import free_port, start_gunicorn, wait_for_record


def test_text_line_of_a_request_carries_its_fields(
    transactional_db, fake_ollama_server, make_key, capfd
):
    fake_ollama_server.reset()
    key, raw = make_key(name="logged")
    port = free_port()
    process = start_gunicorn(
        port,
        OLLAMA_BASE_URL=fake_ollama_server.url,
        LOG_LEVEL="INFO",
        LOG_FORMAT="text",
        GUNICORN_WORKERS="1",
    )
    output = ""
    try:
        response = requests.post(
            f"http://127.0.0.1:{port}/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer {raw}", "X-Request-ID": "trace-log-1"},
            timeout=10,
        )
        assert response.status_code == 200
        record = wait_for_record(request_id="trace-log-1")
        deadline = time.monotonic() + 10
        while "request_id=trace-log-1" not in output and time.monotonic() < deadline:
            time.sleep(0.05)
            output += capfd.readouterr().out
    finally:
        process.terminate()
        process.wait(timeout=20)
    [line] = [line for line in output.splitlines() if "request_id=trace-log-1" in line]
    assert re.search(r" INFO usage POST /api/generate 200 ok \d+\.\dms ", line), line
    for field in (
        f"key_preview={key.preview}",
        "client_addr=127.0.0.1",
        "model=llama3.2",
        f"prompt_tokens={record.prompt_tokens}",
        f"completion_tokens={record.completion_tokens}",
    ):
        assert f" {field}" in line, (field, line)
    assert record.completion_tokens > 0


def make_record(**extra):
    return logging.getLogger("usage").makeRecord(
        "usage", logging.INFO, __file__, 1, "POST %s", ("/api/chat",), None, extra=extra
    )


def test_text_fields_cannot_forge_a_line_or_a_field():
    line = TextFormatter().format(
        make_record(model="x\n2026-01-01 INFO usage forged", key_preview="ollama-abc", gone=None)
    )
    assert "\n" not in line
    assert line.endswith(' model="x\\n2026-01-01 INFO usage forged" key_preview=ollama-abc')
