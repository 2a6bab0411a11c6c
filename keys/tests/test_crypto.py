from django.db import connection

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


def test_preview_and_hash_are_unique_in_the_database(make_key):
    make_key()
    constraints = {
        field.name for field in ApiKey._meta.fields if field.unique and not field.primary_key
    }
    assert {"preview", "key_hash"} <= constraints
