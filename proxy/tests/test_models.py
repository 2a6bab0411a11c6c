import pytest
from django.core.exceptions import ValidationError

from proxy.models import Backend


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"url": "ftp://gpu-1:11434"}, "url"),
        ({"url": "http://"}, "url"),
        ({"credential_env": "SECRET_KEY"}, "credential_env"),
        ({"credential_env": "DATABASE_URL"}, "credential_env"),
    ],
)
def test_backend_validation(db, fields, bad):
    backend = Backend(**{"name": "gpu-1", "url": "http://gpu-1:11434", **fields})
    with pytest.raises(ValidationError) as raised:
        backend.full_clean()
    assert bad in raised.value.message_dict


def test_a_valid_backend(db):
    Backend(name="gpu-1", url="http://gpu-1:11434", credential_env="OLLAMA_GPU1_TOKEN").full_clean()
