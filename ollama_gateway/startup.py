"""What every start does before serving: the table set, then the demo keys."""

from django.core.management import call_command


def prepare() -> None:
    from keys.services import demo_keys_ensure

    call_command("migrate", interactive=False, verbosity=0)
    demo_keys_ensure()
