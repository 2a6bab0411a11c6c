.PHONY: run dev test ci

run:  ## Serve the gateway in front of OLLAMA_BASE_URL
	scripts/run

dev:  ## Serve the gateway in front of the bundled development Ollama
	scripts/run --dev-ollama

test:  ## Lint, migration check and the test suite
	scripts/test

ci:
	.ci/run
