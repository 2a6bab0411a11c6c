.PHONY: run dev test ci soak bench bench-sharing

run:  ## Serve the gateway in front of OLLAMA_BASE_URL
	scripts/run

dev:  ## Serve the gateway in front of the bundled development Ollama
	scripts/run --dev-ollama

test:  ## Lint, migration check and the test suite
	scripts/test

ci:
	.ci/run

bench:  ## The gateway beside direct and nginx, on the development Ollama (BENCH_ARGS="--quick", "--write-docs")
	scripts/bench $(BENCH_ARGS)

bench-sharing:  ## Sharing the GPU (issue 12): direct FIFO vs the gateway's queue (BENCH_ARGS="--write-docs")
	.venv/bin/python -m bench.sharing $(BENCH_ARGS)

soak:  ## The long run: mixed load for SOAK_SECONDS (default 600) through two gateway processes
	SOAK_SECONDS=$${SOAK_SECONDS:-600} DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/ollama_gateway} scripts/test ollama_gateway/tests/test_soak.py
