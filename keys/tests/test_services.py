import pytest
from django.core.exceptions import ValidationError

from keys import crypto
from keys.models import ApiKey
from keys.services import demo_keys_ensure
from ollama_gateway.startup import prepare

DEMO_ADMIN = "ollama-" + "a" * 43
DEMO_USER = "ollama-" + "u" * 43


def test_demo_keys_are_inserted_idempotently(db, settings):
    settings.DEMO_ADMIN_KEY, settings.DEMO_USER_KEY = DEMO_ADMIN, DEMO_USER
    prepare()
    prepare()
    assert ApiKey.objects.count() == 2
    admin = ApiKey.objects.get(key_hash=crypto.hash_key(DEMO_ADMIN))
    user = ApiKey.objects.get(key_hash=crypto.hash_key(DEMO_USER))
    assert (admin.role, user.role) == ("admin", "user")


def test_a_weak_demo_key_is_refused(db, settings):
    settings.DEMO_ADMIN_KEY = "ollama-short"
    with pytest.raises(ValidationError, match="DEMO_ADMIN_KEY"):
        demo_keys_ensure()


@pytest.mark.parametrize(
    ("model", "allowed", "expected"),
    [
        ("llama3.2", [], True),
        ("llama3.2", ["llama3.2:latest"], True),
        ("llama3.2:latest", ["llama3.2"], True),
        ("llama3.2:1b", ["llama3.2"], False),
        ("qwen2.5", ["llama3.2"], False),
    ],
)
def test_allowlist_matches_ollama_model_names(model, allowed, expected):
    assert ApiKey(allowed_models=allowed).allows_model(model) is expected


@pytest.mark.parametrize("model", ["gpt-oss:120b-cloud", "deepseek-v3.1:671b-cloud", "kimi:cloud"])
def test_cloud_models_are_for_admin_keys_only(model):
    assert ApiKey(role="user").allows_model(model) is False
    assert ApiKey(role="admin").allows_model(model) is True
