"""Where configuration comes from: the environment, then .env, for the gateway and for gunicorn;
never a developer's .env for the test suite; every setting documented in .env.example."""

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from testsupport import free_port, suite_database_url

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "PORT=9999\nDEMO_ADMIN_KEY=ollama-{}\nLOG_FORMAT=json\nMETRICS_TOKEN=x\n".format("h" * 43)


def clean_environment(**extra) -> dict:
    """This process's environment without what the test sets itself."""
    names = ("PORT", "HOST", "DEMO_ADMIN_KEY", "LOG_FORMAT", "METRICS_TOKEN", "GATEWAY_ENV_FILE")
    environment = {k: v for k, v in os.environ.items() if k not in names}
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    return {**environment, **extra}


def settings_seen(module: str, **environment) -> list[str]:
    script = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.PORT, repr(s.DEMO_ADMIN_KEY), s.LOG_FORMAT, repr(s.METRICS_TOKEN))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=clean_environment(DJANGO_SETTINGS_MODULE=module, **environment),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_suite_never_reads_a_developers_env_file(tmp_path):
    hostile = tmp_path / ".env"
    hostile.write_text(HOSTILE)
    # The file works for the gateway...
    assert settings_seen("ollama_gateway.settings", GATEWAY_ENV_FILE=str(hostile)) == [
        "9999",
        f"'ollama-{'h' * 43}'",
        "json",
        "'x'",
    ]
    # ...and the suite's settings ignore it, wherever it is.
    seen = settings_seen("ollama_gateway.settings_test", GATEWAY_ENV_FILE=str(hostile))
    assert seen == ["8000", "''", "text", "''"]
    assert os.environ["GATEWAY_ENV_FILE"] == ""  # and so do the servers tests start


def test_gunicorn_listens_where_the_env_file_says(tmp_path, transactional_db, fake_ollama):
    port = free_port()
    env_file = tmp_path / ".env"
    env_file.write_text(f"# as scripts/run writes it\nPORT={port}\nGUNICORN_WORKERS=1\n")
    environment = clean_environment(
        GATEWAY_ENV_FILE=str(env_file),
        DATABASE_URL=suite_database_url(),
        OLLAMA_BASE_URL=fake_ollama.url,
        LOG_LEVEL="WARNING",
    )
    for name in ("GUNICORN_WORKERS", "GUNICORN_THREADS"):
        environment.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "ollama_gateway.asgi"],
        cwd=ROOT,
        env=environment,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        answer = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert answer.status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_scripts_run_help_prints_help_and_starts_nothing():
    done = subprocess.run(
        ["bash", "scripts/run", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert done.stdout.startswith("Usage: scripts/run") and "PORT=8080" in done.stdout
    wrong = subprocess.run(
        ["bash", "scripts/run", "--port", "8080"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 2 and "unknown argument '--port'" in wrong.stderr


def test_every_setting_is_documented_in_env_example():
    read = set()
    for source in ("ollama_gateway/settings.py", "gunicorn.conf.py"):
        text = (ROOT / source).read_text()
        read |= set(re.findall(r"\benv(?:\.\w+)?\(\s*[\"']([A-Z0-9_]+)[\"']", text))
        read |= set(re.findall(r"os\.environ\.get\(\s*[\"']([A-Z0-9_]+)[\"']", text))
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert {"SECRET_KEY", "PORT", "GUNICORN_WORKERS"} <= read  # the patterns still find them
    assert sorted(read - documented - {"GATEWAY_ENV_FILE"}) == []
    assert "GATEWAY_ENV_FILE" in (ROOT / ".env.example").read_text()  # (not settable in a file)
