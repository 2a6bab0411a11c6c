import pytest
from django.core.exceptions import ValidationError

from proxy.models import Backend


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"url": "ftp://gpu-1:11434"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "http://user:pw@gpu-1:11434"}, "url"),
        ({"url": "http://gpu-1:11434/api"}, "url"),
        ({"url": "http://gpu-1:11434?x=1"}, "url"),
        ({"url": "http://gpu-1:11434#top"}, "url"),
        ({"url": "http://gpu-1:99999"}, "url"),
        ({"url": "http://169.254.169.254"}, "url"),
        ({"url": "http://169.254.1.1:11434"}, "url"),
        ({"url": "http://2852039166"}, "url"),  # 169.254.169.254 spelled as a number
        ({"url": "http://0xa9.0xfe.0xa9.0xfe"}, "url"),
        ({"url": "http://[::ffff:169.254.169.254]"}, "url"),
        ({"url": "http://[fe80::1]:11434"}, "url"),
        ({"url": "http://100.100.100.200"}, "url"),
        ({"url": "http://[fd00:ec2::254]"}, "url"),
        ({"url": "http://metadata.google.internal"}, "url"),
        ({"url": "http://Metadata.Google.Internal.:80"}, "url"),
        ({"credential_env": "SECRET_KEY"}, "credential_env"),
        ({"credential_env": "DATABASE_URL"}, "credential_env"),
    ],
)
def test_backend_validation(db, fields, bad):
    backend = Backend(**{"name": "gpu-1", "url": "http://gpu-1:11434", **fields})
    with pytest.raises(ValidationError) as raised:
        backend.full_clean()
    assert bad in raised.value.message_dict


@pytest.mark.parametrize(
    "url",
    [
        "http://gpu-1:11434",
        "https://gpu-1.example.com",
        "http://127.0.0.1:11434",
        "http://[::1]:11434",
        "http://192.168.1.20:11434/",
        "http://10.0.0.5:11434",
    ],
)
def test_a_valid_backend(db, url):
    Backend(name="gpu-1", url=url, credential_env="OLLAMA_GPU1_TOKEN").full_clean()


def test_link_local_allowed_when_the_setting_says_so(db, settings):
    settings.BACKEND_ALLOW_LINK_LOCAL = True
    Backend(name="gpu-1", url="http://169.254.10.10:11434").full_clean()
    with pytest.raises(ValidationError):  # the shape rules still hold
        Backend(name="gpu-1", url="http://169.254.10.10:11434/x").full_clean()


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
