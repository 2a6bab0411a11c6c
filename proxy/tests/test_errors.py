"""Errors on the model API: the right status, in the surface's own shape, before Ollama when
the request is bad, and never an internal address."""

import time

import pytest
import requests

from testsupport import wait_for_records


@pytest.fixture
def call(gateway, user_key):
    def send(method, path, raw=user_key[1], **kwargs):
        headers = {"Authorization": f"Bearer {raw}", **kwargs.pop("headers", {})}
        return requests.request(method, gateway + path, headers=headers, timeout=30, **kwargs)

    return send


def test_refused_upstream_is_502_within_a_second(call, settings):
    settings.OLLAMA_BASE_URL = "http://127.0.0.1:9"
    started = time.monotonic()
    native = call("POST", "/api/generate", json={"model": "llama3.2", "prompt": "x"})
    assert time.monotonic() - started < 1
    assert native.status_code == 502
    assert native.json() == {"error": "Could not reach Ollama."}
    openai_style = call("GET", "/v1/models")
    assert openai_style.status_code == 502
    assert openai_style.json()["error"]["message"] == "Could not reach Ollama."
    assert "127.0.0.1" not in native.text + openai_style.text


def test_hanging_upstream_is_504_after_the_read_timeout(call, settings, fake_ollama):
    settings.OLLAMA_READ_TIMEOUT = 0.5
    fake_ollama.configure(fail="hang")
    response = call("POST", "/api/chat", json={"model": "llama3.2", "messages": []})
    assert response.status_code == 504
    assert response.json() == {"error": "Ollama did not answer in time."}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"model": "llama3.2", ', 400, "Request body is not valid JSON."),
        (b"[1, 2]", 400, "Request body must be a JSON object."),
        (b'{"prompt": "no model"}', 400, "model is required"),
        (b'{"model": ""}', 400, "model is required"),
        (b'{"model": 7}', 400, "model is required"),
        (b"\xff\xfe not utf-8", 400, "Request body is not valid JSON."),
        (b"[" * 100_000 + b"]" * 100_000, 400, "Request body is not valid JSON."),
    ],
    ids=["truncated", "array", "missing", "empty", "number", "not-utf8", "deeply-nested"],
)
def test_bad_bodies_get_400_before_reaching_ollama(call, fake_ollama, body, status, message):
    response = call(
        "POST", "/api/generate", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert response.json() == {"error": message}
    assert fake_ollama.requests == []


def test_bad_bodies_on_v1_use_openai_shape(call, fake_ollama):
    response = call("POST", "/v1/chat/completions", data=b"nope")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_is_413(call, settings, fake_ollama):
    settings.MAX_REQUEST_BODY_BYTES = 1000
    response = call("POST", "/api/chat", json={"model": "llama3.2", "prompt": "x" * 2000})
    assert response.status_code == 413
    assert "larger than 1000 bytes" in response.json()["error"]
    assert fake_ollama.requests == []


@pytest.mark.parametrize(("fail", "status"), [("error500", 500), ("busy", 503)])
def test_upstream_errors_pass_through_with_status_and_body(call, fake_ollama, fail, status):
    fake_ollama.configure(fail=fail)
    response = call(
        "POST", "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}
    )
    assert response.status_code == status
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/me"),
        ("POST", "/api/signout"),
        ("DELETE", "/api/user/keys/abc"),
        ("POST", "/api/experimental/web_search"),
        ("POST", "/api/experimental/web_fetch"),
        ("GET", "/api/experimental/model-recommendations"),
    ],
)
def test_account_and_cloud_routes_are_refused_to_every_key(
    call, fake_ollama, user_key, admin_key, method, path
):
    for raw in (user_key[1], admin_key[1]):
        response = call(method, path, raw=raw, json={})
        assert response.status_code == 403
        assert "ollama.com identity" in response.json()["error"]
    assert call(method, path, raw="ollama-" + "z" * 43).status_code == 401
    assert fake_ollama.requests == []


def test_refused_key_routes_mint_no_metric_series(call, gateway):
    for key in ("first", "second"):
        assert call("DELETE", f"/api/user/keys/{key}").status_code == 403
    assert len(wait_for_records(2, route__startswith="/api/user/keys/")) == 2
    metrics = requests.get(f"{gateway}/metrics", timeout=10).text
    assert 'route="/api/user/keys/{key}"' in metrics
    assert "/api/user/keys/first" not in metrics and "/api/user/keys/second" not in metrics


def test_cloud_models_are_hidden_from_user_keys(call, fake_ollama):
    response = call("POST", "/api/generate", json={"model": "gpt-oss:120b-cloud", "prompt": "x"})
    assert response.status_code == 404
    assert fake_ollama.requests == []


def test_wrong_method_is_405_in_shape(call, fake_ollama):
    response = call("GET", "/api/generate")
    assert response.status_code == 405
    assert "error" in response.json()


@pytest.mark.parametrize(
    "body",
    [
        {"model": "llama3.2", "MODEL": "qwen2.5:0.5b", "prompt": "x"},
        {"model": "llama3.2", "Model": "gpt-oss:120b-cloud", "prompt": "x"},
        {"name": "llama3.2", "NAME": "qwen2.5:0.5b", "prompt": "x"},
    ],
)
def test_case_variant_model_fields_cannot_slip_past_the_allowlist(
    gateway, make_key, fake_ollama, body
):
    _, raw = make_key(allowed_models=["llama3.2"])
    response = requests.post(
        f"{gateway}/api/generate", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=10
    )
    assert response.status_code == 400
    assert "lowercase" in response.json()["error"]
    assert fake_ollama.requests == []


@pytest.mark.parametrize(
    "model", ["LLAMA3.2", "Qwen2.5:0.5B", "gpt-oss:120b-CLOUD"], ids=["upper", "mixed", "cloud"]
)
def test_model_names_compare_case_insensitively(call, make_key, fake_ollama, model):
    _, raw = make_key(allowed_models=["llama3.2"])
    response = call("POST", "/api/generate", raw=raw, json={"model": model, "prompt": "x"})
    assert response.status_code == (200 if model == "LLAMA3.2" else 404)


@pytest.mark.parametrize(
    "path",
    ["..%2F..%2Fapi%2Ftags", "..%2F..%2Fapi%2Fme", "llama3.2%3Fx=1", "a/../../api/tags"],
)
def test_model_path_cannot_reach_other_upstream_routes(call, fake_ollama, path):
    response = call("GET", f"/v1/models/{path}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
    assert fake_ollama.requests == []
