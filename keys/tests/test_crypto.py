import pytest
from django.db import IntegrityError, connection, transaction

from keys import crypto
from keys.models import ApiKey


def test_generated_keys_have_the_documented_shape():
    raw = crypto.generate_key()
    assert raw.startswith("ollama-")
    # 32 random bytes, URL-safe base64 without padding.
    assert len(raw) == len("ollama-") + 43
    assert crypto.generate_key() != raw


def test_the_database_never_holds_a_usable_key(make_key):
    key, raw = make_key("admin", name="secret-holder", allowed_models=["llama3.2"])
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM keys_apikey")
        stored = " ".join(str(value) for row in cursor.fetchall() for value in row)
    assert raw not in stored
    assert raw[len(key.preview) :] not in stored
    assert key.key_hash == crypto.hash_key(raw)
    assert key.preview == raw[:15]


@pytest.mark.parametrize("field", ["preview", "key_hash"])
def test_preview_and_hash_are_unique_in_the_database(make_key, field):
    key, _ = make_key()
    twin = ApiKey(name="twin", rate_limit=1, preview="ollama-twin0000", key_hash="0" * 64)
    setattr(twin, field, getattr(key, field))
    with pytest.raises(IntegrityError), transaction.atomic():
        twin.save()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/api/keys/ollama-AbCdEfGh" + "x" * 35, "/api/keys/ollama-AbCdEfGh…"),
        ("a ollama-12345678_-abc b ollama-abcdefghijk", "a ollama-12345678… b ollama-abcdefgh…"),
        ("/api/keys/ollama-AbCdEfGh", "/api/keys/ollama-AbCdEfGh"),  # a preview stays
        ("/api/chat", "/api/chat"),
    ],
)
def test_redact_keys_leaves_previews_only(text, expected):
    assert crypto.redact_keys(text) == expected
