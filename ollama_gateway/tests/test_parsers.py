"""Management routes read a body as JSON only when it says it is JSON."""

import pytest
import requests

from keys.models import ApiKey

BODY = b'{"name": "from-an-unlabelled-body"}'


@pytest.mark.parametrize("content_type", [None, "", "*/*", "application/*", "text/plain"])
def test_a_body_not_labelled_json_gets_415(served, admin_key, content_type):
    headers = {"Authorization": f"Bearer {admin_key[1]}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = requests.post(f"{served}/api/keys", data=BODY, headers=headers, timeout=10)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("Unsupported media type")
    assert not ApiKey.objects.filter(name="from-an-unlabelled-body").exists()


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_json_is_read(served, admin_key, content_type):
    headers = {"Authorization": f"Bearer {admin_key[1]}", "Content-Type": content_type}
    response = requests.post(f"{served}/api/keys", data=BODY, headers=headers, timeout=10)
    assert response.status_code == 201
    assert ApiKey.objects.filter(name="from-an-unlabelled-body").exists()


def test_an_empty_body_needs_no_content_type(served, admin_key):
    headers = {"Authorization": f"Bearer {admin_key[1]}"}
    response = requests.post(f"{served}/api/keys", headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"name": ["This field is required."]}
