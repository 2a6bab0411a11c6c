"""The API docs work with no internet: a browser loading them asks nothing of any other host."""

import time
from urllib.parse import urlsplit

import pytest

pytestmark = [pytest.mark.browser]


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/redoc", "document.body.innerText.includes('Chat completions')"),
        ("/docs", "document.querySelectorAll('.opblock-summary-path').length > 20"),
    ],
)
def test_docs_request_nothing_from_other_hosts(
    chromium, live_server, transactional_db, path, rendered
):
    chromium.page("Network.enable")
    chromium.open(f"{live_server.url}{path}")
    chromium.wait_for(rendered)
    time.sleep(1)  # images and fonts asked for once the page has rendered
    chromium.evaluate("1")  # every event sent so far has been read
    requested = [
        event["params"]["request"]["url"]
        for event in chromium.events
        if event["method"] == "Network.requestWillBeSent"
    ]
    here = urlsplit(live_server.url).netloc
    elsewhere = [
        url
        for url in requested
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc != here
    ]
    assert len(requested) > 2 and elsewhere == []
