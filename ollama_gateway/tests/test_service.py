"""GET /, /health, the API docs and production settings."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

ROOT = Path(__file__).resolve().parents[2]


def test_service_info_links_the_docs(client):
    body = client.get("/").json()
    assert body["name"] == "ollama-gateway"
    assert body["docs"]["swagger"].endswith("/docs")
    assert body["docs"]["redoc"].endswith("/redoc")


@pytest.fixture(autouse=True)
def fresh_health(monkeypatch):
    from ollama_gateway import views

    monkeypatch.setattr(views, "_health", None)


def test_health_ok_when_database_and_ollama_answer(client, fake_ollama, db):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "ollama": "ok"}


def test_health_503_names_ollama_when_it_is_down(client, settings, db):
    settings.OLLAMA_BASE_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "ollama": "unreachable"}
    assert "127.0.0.1" not in response.content.decode()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_serve_their_assets_themselves(page, db):
    client = Client()
    html = client.get(page).content.decode()
    assert client.get(page).status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets, "the page should load its scripts"
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{asset} needs the internet"
        assert client.get(asset).status_code == 200


def test_schema_declares_the_bearer_scheme(client, db):
    response = client.get("/api/schema", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    schemes = schema["components"]["securitySchemes"]
    assert any(s.get("scheme") == "bearer" for s in schemes.values())
    assert "/api/keys" in schema["paths"]


def _manage(*args, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    # The production settings, as an operator runs manage.py (still without a .env: the suite
    # sets GATEWAY_ENV_FILE to nothing, see ollama_gateway/settings_test.py).
    environment["DJANGO_SETTINGS_MODULE"] = "ollama_gateway.settings"
    environment.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
    )


def test_refuses_to_start_without_secret_key():
    result = _manage("check")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_check_deploy_is_clean_with_production_settings():
    result = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="p" * 20 + "Xy7$kQ2!mN9@vB4#zL6%wR8^tH1&jD3*" + "q" * 20,
        ALLOWED_HOSTS="gateway.example.com",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_health_is_cached_briefly(client, fake_ollama, db, settings):
    assert client.get("/health").status_code == 200
    checks = len(fake_ollama.requests)
    for _ in range(5):
        client.get("/health")
    assert len(fake_ollama.requests) == checks
