"""The key list in a real browser: it fits a laptop screen (1366 px wide)."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

pytestmark = [pytest.mark.browser]


def test_key_list_fits_a_laptop_screen(
    chromium, live_server, transactional_db, client, django_user_model, make_key, tmp_path
):
    client.force_login(django_user_model.objects.create_superuser("root", "r@example.com", None))
    soon = timezone.now() + timedelta(days=30)
    for n in range(3):
        key, _ = make_key(
            name=f"team-{n}-production-batch-jobs", token_quota=1_000_000, expires_at=soon
        )
        key.last_used_at = timezone.now()
        key.save(update_fields=["last_used_at"])
    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    chromium.open(
        f"{live_server.url}/admin/keys/apikey/",
        cookies={settings.SESSION_COOKIE_NAME: session},
        width=1366,
        height=768,
    )
    chromium.screenshot(tmp_path / "keys.png")  # kept for whoever reads a failure
    # The admin scrolls a wide table inside its box: the box must not need to.
    table_right, box_right, table, box = chromium.evaluate(
        "[document.querySelector('#result_list').getBoundingClientRect().right,"
        " document.querySelector('.results').getBoundingClientRect().right,"
        " document.querySelector('.results').scrollWidth,"
        " document.querySelector('.results').clientWidth]"
    )
    assert table <= box, f"the key table is {table}px in a {box}px box (see {tmp_path})"
    assert table_right <= box_right <= 1366
    assert chromium.evaluate("document.documentElement.scrollWidth") <= 1366
