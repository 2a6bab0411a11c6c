from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from keys import crypto
from keys.models import ApiKey


def run(*args):
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_createapikey_prints_the_key_once(db):
    out, err = run(
        "createapikey",
        "--name",
        "ci",
        "--role",
        "admin",
        "--rate-limit",
        "5",
        "--expires-in",
        "2",
        "--token-quota",
        "5000",
        "--models",
        "llama3.2, qwen2.5:0.5b",
    )
    raw = out.strip()
    key = ApiKey.objects.get(key_hash=crypto.hash_key(raw))
    assert (key.name, key.role, key.rate_limit) == ("ci", "admin", 5)
    assert key.allowed_models == ["llama3.2", "qwen2.5:0.5b"]
    assert key.expires_at is not None and key.token_quota == 5000
    assert key.preview in err and raw not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--role", "root"], "invalid choice"),
        (["--name", "x", "--rate-limit", "0"], "rate_limit"),
        (["--name", "x", "--rate-limit", str(10**12)], "rate_limit"),
        (["--name", "x", "--rate-limit", "many"], "invalid int"),
        (["--name", "x", "--expires-in", "-1"], "--expires-in"),
        (["--name", " "], "name"),
        (["--name", "x", "--token-quota", "-3"], "token_quota"),
        (["--name", "x", "--max-concurrent", "0"], "max_concurrent"),
        (["--name", "x", "--priority", "urgent"], "invalid choice"),
        (["--name", "x", "--tokens-per-minute", "0"], "tokens_per_minute"),
        ([], "--name"),
    ],
)
def test_createapikey_rejects_bad_arguments(db, args, message):
    with pytest.raises(CommandError, match=message):
        run("createapikey", *args)
    assert ApiKey.objects.count() == 0


def test_revokeapikey(make_key):
    key, _ = make_key()
    out, _ = run("revokeapikey", key.preview)
    assert key.preview in out
    assert ApiKey.objects.get(pk=key.pk).is_active is False


def test_revokeapikey_unknown(db):
    with pytest.raises(CommandError, match="No API key"):
        run("revokeapikey", "ollama-nothere1")


def test_listapikeys_shows_previews_not_secrets(make_key):
    key, raw = make_key(name="listed")
    revoked, _ = make_key(name="gone")
    run("revokeapikey", revoked.preview)
    out, _ = run("listapikeys")
    assert key.preview in out and "listed" in out
    assert raw not in out and key.key_hash not in out
    assert "revoked" in out


def test_createapikey_sets_the_gpu_sharing_fields(db):
    out, _ = run(
        "createapikey",
        "--name",
        "nightly",
        "--max-concurrent",
        "2",
        "--priority",
        "batch",
        "--tokens-per-minute",
        "50000",
    )
    key = ApiKey.objects.get(key_hash=crypto.hash_key(out.strip()))
    assert (key.max_concurrent, key.priority, key.tokens_per_minute) == (2, "batch", 50000)
