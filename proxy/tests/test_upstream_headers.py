"""What comes back across the hop: only the answer's own headers, and an upstream that
refuses the gateway's credential is the gateway's problem (502), not the client's key (401)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        body = json.dumps({"models": []}).encode()
        content_type = getattr(self.server, "content_type", "application/json")
        if content_type.startswith("text/html"):
            body = b"<html><script>alert(document.cookie)</script></html>"
        self.send_response(self.server.status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "upstream=secret")
        self.send_header("Location", "http://10.1.2.3:11434/internal")
        self.send_header("WWW-Authenticate", 'Bearer realm="ollama.com"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_upstream(settings):
    def start(status, content_type="application/json"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
        server.status = status
        server.content_type = content_type
        threading.Thread(target=server.serve_forever, daemon=True).start()
        settings.OLLAMA_BASE_URL = f"http://127.0.0.1:{server.server_address[1]}"
        servers.append(server)

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_only_the_answers_own_headers_are_relayed(gateway, user_key, odd_upstream):
    odd_upstream(200)
    response = requests.get(
        f"{gateway}/api/tags", headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    for header in ("Set-Cookie", "Location", "WWW-Authenticate"):
        assert header not in response.headers


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_the_gateway_is_a_502(gateway, user_key, odd_upstream, status):
    odd_upstream(status)
    response = requests.get(
        f"{gateway}/api/tags", headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert response.status_code == 502
    assert response.json() == {"error": "Ollama refused the gateway's credentials."}
    assert "WWW-Authenticate" not in response.headers


@pytest.mark.parametrize("content_type", ["text/html; charset=utf-8", "image/svg+xml"])
def test_an_answer_of_another_type_is_not_served(gateway, user_key, odd_upstream, content_type):
    """Whatever answers at an Ollama server's address, no HTML of it reaches the gateway's
    origin (where the admin lives)."""
    odd_upstream(200, content_type)
    response = requests.get(
        f"{gateway}/api/tags", headers={"Authorization": f"Bearer {user_key[1]}"}, timeout=10
    )
    assert response.status_code == 502
    assert response.headers["Content-Type"] == "application/json"
    assert "script" not in response.text
