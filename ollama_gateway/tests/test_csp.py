"""The admin, the dashboard and the docs send a Content-Security-Policy; the model routes don't,
and the pages still work under it in a real browser."""

import pytest
from django.conf import settings

from ollama_gateway.csp import DEFAULT_POLICY


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", None))
    return client


@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/keys/apikey/",
        "/admin/usage/usagerecord/dashboard/",
        "/docs",
        "/docs?script=",
        "/redoc",
    ],
)
def test_pages_send_the_policy(staff_client, path):
    response = staff_client.get(path)
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert policy == DEFAULT_POLICY
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy


def test_swagger_ui_has_no_inline_script(client):
    page = client.get("/docs").content.decode()
    assert "<script>" not in page and 'src="/docs?script=' in page


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/api/version"), ("get", "/api/tags"), ("get", "/v1/models"), ("get", "/health")],
)
def test_model_routes_send_none(client, user_key, fake_ollama, method, path):
    response = getattr(client, method)(path, HTTP_AUTHORIZATION=f"Bearer {user_key[1]}")
    assert response.status_code == 200
    assert "Content-Security-Policy" not in response


def test_the_policy_is_configurable(client, settings):
    assert client.get("/admin/login/")["Content-Security-Policy"] == DEFAULT_POLICY
    settings.CONTENT_SECURITY_POLICY = "default-src 'none'"
    assert client.get("/admin/login/")["Content-Security-Policy"] == "default-src 'none'"


# Collected before any page script runs, so that a refused script or style is seen.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
    e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""


@pytest.mark.browser
@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/docs", "document.querySelectorAll('.opblock-summary-path').length > 20"),
        ("/redoc", "document.body.innerText.includes('Chat completions')"),
        ("/admin/usage/usagerecord/dashboard/", "!!document.querySelector('#stat-requests')"),
        ("/admin/keys/apikey/add/", "!!document.querySelector('#id_name')"),
    ],
)
def test_pages_render_under_the_policy(
    chromium, live_server, transactional_db, staff_client, path, ready
):
    chromium.page("Page.enable")
    chromium.page("Page.addScriptToEvaluateOnNewDocument", source=RECORD_VIOLATIONS)
    session = staff_client.cookies[settings.SESSION_COOKIE_NAME].value
    chromium.open(f"{live_server.url}{path}", cookies={settings.SESSION_COOKIE_NAME: session})
    chromium.wait_for(ready)
    violations = [
        v for v in chromium.evaluate("window.__csp") if "fonts.googleapis.com" not in v
    ]  # ReDoc's Google Fonts: refused on purpose (the page must work offline)
    assert violations == []
