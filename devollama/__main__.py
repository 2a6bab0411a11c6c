"""``python -m devollama``: serve the fake Ollama (see ``--help``)."""

from .server import main

main()
