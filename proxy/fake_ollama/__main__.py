"""``python -m proxy.fake_ollama``: serve the fake Ollama (see ``--help``)."""

from .server import main

main()
