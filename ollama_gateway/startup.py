"""What every start does before serving: the table set, the demo keys, the Ollama servers."""

from django.core.management import call_command


def prepare() -> None:
    from keys.services import demo_keys_ensure
    from proxy.services import backends_bootstrap

    call_command("migrate", interactive=False, verbosity=0)
    demo_keys_ensure()
    backends_bootstrap()
