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


def test_num_parallel_seeds_every_server_and_the_admin_value_wins(db, settings):
    from proxy.backends import configured_backends
    from proxy.models import Backend
    from proxy.services import backends_bootstrap

    settings.OLLAMA_BASE_URL = "http://gpu-1:11434,http://gpu-2:11434"
    settings.OLLAMA_NUM_PARALLEL = 2
    backends_bootstrap()
    assert sorted(Backend.objects.values_list("parallel", flat=True)) == [2, 2]
    Backend.objects.filter(name="ollama-1").update(parallel=4)
    Backend.objects.create(name="gpu-3", url="http://gpu-3:11434")
    backends_bootstrap()
    assert dict(Backend.objects.values_list("name", "parallel")) == {
        "ollama-1": 4,
        "ollama-2": 2,
        "gpu-3": 2,
    }
    assert {c.name: c.parallel for c in configured_backends()} == {
        "ollama-1": 4,
        "ollama-2": 2,
        "gpu-3": 2,
    }
