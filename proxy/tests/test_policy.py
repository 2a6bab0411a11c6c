"""What user keys may ask of the shared Ollama server, and the sampling-settings migration aid:
proxy/policy.py on its own, then what the development Ollama receives through the gateway."""

import json

import pytest
import requests

from proxy.policy import ServerPolicy, apply_server_policy, duration_seconds

DEFAULT = ServerPolicy()  # 5 to 30 minutes, no num_ctx, nothing else


def user(payload, route="/api/generate", policy=DEFAULT):
    return apply_server_policy(payload, is_admin=False, route=route, policy=policy)


@pytest.mark.parametrize(
    ("keep_alive", "sent"),
    [
        (0, 300),  # would unload the model for everyone
        ("0", 300),
        (-1, 1800),  # would pin it forever
        ("-1m", 1800),
        ("24h", 1800),
        (86400, 1800),
        ("1s", 300),
        ("10m", "10m"),
        (600, 600),
        ("1h0m0.5s", 1800),
        (None, None),  # Ollama's own default
    ],
)
def test_user_keep_alive_is_clamped(keep_alive, sent):
    assert user({"model": "m", "keep_alive": keep_alive})["keep_alive"] == sent


@pytest.mark.parametrize("keep_alive", ["soon", "5", True, [], {"s": 1}, "1d", ""])
def test_user_keep_alive_ollama_would_not_read_is_dropped(keep_alive):
    assert "keep_alive" not in user({"model": "m", "keep_alive": keep_alive})


@pytest.mark.parametrize("spelling", ["KEEP_ALIVE", "Keep_Alive", "\u212aeep_alive"])
def test_other_spellings_go_reads_as_keep_alive_are_clamped(spelling):
    # Go's encoding/json matches names case-insensitively, with Unicode folding (K is K).
    assert user({"model": "m", spelling: 0})[spelling] == 300


@pytest.mark.parametrize(
    "option", ["num_ctx", "num_gpu", "main_gpu", "num_batch", "num_thread", "use_mmap", "numa"]
)
def test_user_runner_options_are_removed_and_sampling_kept(option):
    sent = user({"model": "m", "options": {option: 2, "temperature": 0.2, "stop": ["x"]}})
    assert sent["options"] == {"temperature": 0.2, "stop": ["x"]}


def test_shift_forces_a_reload_so_user_keys_cannot_set_it():
    assert "shift" not in user({"model": "m", "prompt": "x", "shift": False})
    assert "\u017fhift" not in user({"model": "m", "prompt": "x", "\u017fhift": False})


def test_every_spelling_of_options_is_limited():
    sent = user({"model": "m", "options": {"num_ctx": 9}, "OPTIONS": {"num_gpu": 99, "seed": 1}})
    assert sent["options"] == {} and sent["OPTIONS"] == {"seed": 1}


def test_num_ctx_capped_when_allowed():
    policy = ServerPolicy(max_num_ctx=8192)
    assert user({"options": {"num_ctx": 4096}}, policy=policy)["options"] == {"num_ctx": 4096}
    assert user({"options": {"num_ctx": 131072}}, policy=policy)["options"] == {"num_ctx": 8192}
    for bad in ("big", -1, 0, True, None):
        assert user({"options": {"num_ctx": bad}}, policy=policy)["options"] == {}


def test_admin_set_bounds_and_exemptions():
    forever = ServerPolicy(keep_alive_min=0, keep_alive_max=-1)
    assert user({"keep_alive": -1}, policy=forever)["keep_alive"] == -1
    assert user({"keep_alive": 0}, policy=forever)["keep_alive"] == 0
    exempt = ServerPolicy(user_may_set=frozenset({"keep_alive", "num_gpu", "shift"}))
    payload = {"keep_alive": 0, "shift": False, "options": {"num_gpu": 0, "num_ctx": 1}}
    assert user(payload, policy=exempt) == {**payload, "options": {"num_gpu": 0}}


def test_defaults_come_from_the_settings(settings):
    settings.USER_KEEP_ALIVE_MIN, settings.USER_KEEP_ALIVE_MAX = 60, 120
    settings.USER_MAX_NUM_CTX = 2048
    settings.USER_SERVER_OPTIONS = ["num_thread"]
    sent = apply_server_policy(
        {"keep_alive": 0, "options": {"num_ctx": 4096, "num_thread": 4, "num_gpu": 1}},
        is_admin=False,
        route="/api/chat",
    )
    assert sent == {"keep_alive": 60, "options": {"num_ctx": 2048, "num_thread": 4}}


def test_admin_keys_set_everything():
    payload = {"model": "m", "keep_alive": 0, "shift": False, "options": {"num_ctx": 131072}}
    assert apply_server_policy(payload, is_admin=True, route="/api/chat", policy=DEFAULT) is payload


def test_nothing_to_limit_returns_the_same_object_and_nothing_is_modified():
    plain = {"model": "m", "prompt": "x", "stream": False, "think": True, "format": "json"}
    assert user(plain) is plain
    payload = {"model": "m", "keep_alive": 0, "options": {"num_ctx": 1}}
    original = json.dumps(payload)
    assert user(payload) is not payload
    assert json.dumps(payload) == original


# --- The migration aid: top-level sampling settings reach options -----------------------------


@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("is_admin", [False, True])
def test_top_level_sampling_settings_move_into_options(route, is_admin):
    payload = {"model": "m", "prompt": "x", "temperature": 0.7, "top_p": 0.9, "top_k": 40}
    payload |= {"seed": 42, "num_predict": 16, "stream": False}
    sent = apply_server_policy(payload, is_admin=is_admin, route=route, policy=DEFAULT)
    assert sent == {
        "model": "m",
        "prompt": "x",
        "stream": False,
        "options": {"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 42, "num_predict": 16},
    }


def test_options_win_over_top_level_sampling_settings():
    sent = user({"temperature": 0.7, "seed": 1, "options": {"temperature": 0.1, "seed": None}})
    assert sent == {"options": {"temperature": 0.1, "seed": 1}}


@pytest.mark.parametrize(
    "payload",
    [
        {"temperature": "hot"},  # not a number: left where Ollama ignores it, as before
        {"temperature": True},
        {"temperature": 0.7, "options": "nonsense"},  # Ollama's own 400
    ],
)
def test_what_cannot_be_carried_is_left_alone(payload):
    assert apply_server_policy(payload, is_admin=True, route="/api/chat") is payload


@pytest.mark.parametrize(
    "route", ["/api/embed", "/api/show", "/v1/chat/completions", "/v1/completions"]
)
def test_sampling_settings_are_carried_on_generate_and_chat_only(route):
    # /v1 routes read temperature, top_p and seed at the top level themselves.
    payload = {"model": "m", "temperature": 0.7, "seed": 3}
    assert user(payload, route=route) is payload


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1h30m", 5400), ("1.5h", 5400), (".5s", 0.5), ("300ms", 0.3), ("-1s", -1)],
)
def test_go_durations(text, seconds):
    assert duration_seconds(text) == pytest.approx(seconds)


# --- Through the gateway: what the development Ollama receives ----------------------------------


def post(gateway, raw, path, body):
    return requests.post(
        f"{gateway}{path}", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=10
    )


def loaded(gateway, raw):
    auth = {"Authorization": f"Bearer {raw}"}
    answer = requests.get(f"{gateway}/api/ps", headers=auth, timeout=10)
    return [model["name"] for model in answer.json()["models"]]


def test_user_key_cannot_unload_the_model_for_everyone(gateway, user_key, admin_key, fake_ollama):
    generate = {"model": "llama3.2", "prompt": "hi", "stream": False}
    assert post(gateway, admin_key[1], "/api/generate", generate).status_code == 200
    assert "llama3.2:latest" in loaded(gateway, admin_key[1])
    unload = {"model": "llama3.2", "prompt": "", "keep_alive": 0, "stream": False}
    assert post(gateway, user_key[1], "/api/generate", unload).status_code == 200
    assert fake_ollama.requests[-1].json()["keep_alive"] == 300
    assert "llama3.2:latest" in loaded(gateway, admin_key[1])
    # An admin key still can.
    assert post(gateway, admin_key[1], "/api/generate", unload).status_code == 200
    assert "llama3.2:latest" not in loaded(gateway, admin_key[1])


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_user_key_server_options_never_reach_ollama(gateway, user_key, fake_ollama, path):
    body = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": False,
        "keep_alive": -1,
        "shift": False,
        "options": {"num_ctx": 131072, "num_gpu": 0, "temperature": 0.3},
    }
    assert post(gateway, user_key[1], path, body).status_code == 200
    received = fake_ollama.requests[-1].json()
    assert received["keep_alive"] == 1800 and "shift" not in received
    assert received["options"] == {"temperature": 0.3}


def test_admin_key_body_reaches_ollama_byte_for_byte(gateway, admin_key, fake_ollama):
    body = b'{"model":"llama3.2", "prompt":"x","keep_alive":-1,"options":{"num_ctx":131072}}'
    response = requests.post(
        f"{gateway}/api/generate",
        data=body,
        headers={"Authorization": f"Bearer {admin_key[1]}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200
    assert fake_ollama.requests[-1].body == body


def test_sampling_settings_at_the_top_level_reach_options(gateway, user_key, fake_ollama):
    body = {"model": "llama3.2", "prompt": "hi", "temperature": 0.7, "stream": False}
    body["num_predict"] = 2
    response = post(gateway, user_key[1], "/api/generate", body)
    assert response.status_code == 200
    received = fake_ollama.requests[-1].json()
    assert received["options"] == {"temperature": 0.7, "num_predict": 2}
    # The development Ollama honours num_predict: the answer stops after two tokens.
    assert response.json()["eval_count"] == 2
