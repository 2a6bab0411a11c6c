"""The benchmark harness: the gateway against the development Ollama (`scripts/bench`)."""
