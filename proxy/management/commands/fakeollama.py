from django.core.management.base import BaseCommand

from devollama.server import main


class Command(BaseCommand):
    help = (
        "Run the development Ollama: a fake that speaks Ollama's API with made-up tokens "
        "(options: --host --port --ttft --tokens --token-delay --fail --models; see --help)."
    )

    def run_from_argv(self, argv):
        # The fake has its own argument parser; hand it everything after the command name.
        main(argv[2:])
