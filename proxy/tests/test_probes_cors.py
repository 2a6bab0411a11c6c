"""Health probes answered as Ollama answers them, and CORS for listed browser origins."""

import pytest
import requests

from usage.models import UsageRecord

ALLOWED = "http://webui.example:3000"


def test_head_root_answers_without_a_key(served):
    probe = requests.head(served + "/", timeout=10)
    assert probe.status_code == 200
    assert probe.headers["Content-Type"].startswith("text/plain")
    # GET / stays the gateway's description.
    assert requests.get(served + "/", timeout=10).json()["name"] == "ollama-gateway"


@pytest.mark.parametrize("path", ["/api/version", "/api/tags"])
def test_head_probes_with_a_key(served, user_key, path):
    keyed = requests.head(
        served + path, headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert keyed.status_code == 200 and keyed.content == b""
    # The headers of the GET answer, its length included, as Ollama (Go) answers HEAD.
    got = requests.get(
        served + path, headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert keyed.headers["Content-Type"] == got.headers["Content-Type"]
    assert int(keyed.headers["Content-Length"]) == len(got.content) > 2
    assert requests.head(served + path, timeout=10).status_code == 401


def test_status_for_any_key(served, user_key, fake_ollama_server):
    answer = requests.get(served + "/api/status", headers={"X-API-Key": user_key[1]}, timeout=10)
    assert answer.json() == {"cloud": {"disabled": False, "source": "none"}}
    assert requests.get(served + "/api/status", timeout=10).status_code == 401


def preflight(url, origin):
    return requests.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, anthropic-version, content-type",
        },
        timeout=10,
    )


def test_preflight_from_an_allowed_origin(gateway, settings):
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED]
    answer = preflight(gateway + "/v1/messages", ALLOWED)
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    allowed = {h.strip() for h in answer.headers["Access-Control-Allow-Headers"].split(",")}
    assert {
        "authorization",
        "x-api-key",
        "anthropic-version",
        "anthropic-beta",
        "content-type",
        "x-request-id",
    } <= allowed
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert not UsageRecord.objects.exists()  # no key, nothing recorded


def test_preflight_from_a_refused_origin(gateway, settings):
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED]
    answer = preflight(gateway + "/api/chat", "http://evil.example")
    assert answer.status_code == 200  # answered, without the browser's permission
    assert "Access-Control-Allow-Origin" not in answer.headers
    assert (
        preflight(gateway + "/api/chat", ALLOWED).headers["Access-Control-Allow-Origin"] == ALLOWED
    )


def test_wildcard_origins_like_ollama_origins(gateway, settings):
    settings.CORS_ALLOWED_ORIGIN_REGEXES = [r"^chrome\-extension://.*$"]
    answer = preflight(gateway + "/api/chat", "chrome-extension://abcdef")
    assert answer.headers["Access-Control-Allow-Origin"] == "chrome-extension://abcdef"


def test_actual_request_from_an_allowed_origin(gateway, settings, user_key):
    settings.CORS_ALLOWED_ORIGINS = [ALLOWED]
    answer = requests.get(
        gateway + "/api/version",
        headers={"Origin": ALLOWED, "Authorization": f"Bearer {user_key[1]}"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    refused = requests.get(
        gateway + "/api/version",
        headers={"Origin": "http://evil.example", "Authorization": f"Bearer {user_key[1]}"},
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in refused.headers
