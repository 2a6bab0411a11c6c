"""The API docs render in a real browser with no internet: Swagger UI and ReDoc draw the
gateway's operations from their self-served assets."""

import pytest

pytestmark = [pytest.mark.browser]


def test_swagger_ui_renders_the_operations(chromium, live_server, transactional_db, tmp_path):
    chromium.open(f"{live_server.url}/docs")
    chromium.wait_for("document.querySelectorAll('.opblock-summary-path').length > 20")
    operations = chromium.evaluate(
        "Array.from(document.querySelectorAll('.opblock-summary-path'))"
        ".map(e => e.textContent.trim())"
    )
    assert "/api/keys" in operations and "/v1/chat/completions" in operations
    # The bearer scheme is offered for the "Authorize" dialog.
    assert chromium.evaluate("!!document.querySelector('.btn.authorize')")
    width, height = chromium.screenshot(tmp_path / "docs.png")
    assert width > 0 and height > 500


def test_redoc_renders_the_operations(chromium, live_server, transactional_db, tmp_path):
    chromium.open(f"{live_server.url}/redoc")
    chromium.wait_for("document.body.innerText.includes('Chat completions')")
    text = chromium.evaluate("document.body.innerText")
    assert "Create an API key" in text and "Chat completions" in text
    _, height = chromium.screenshot(tmp_path / "redoc.png")
    assert height > 500
