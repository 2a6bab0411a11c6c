"""Settings for the test suite (pytest.ini): the production settings, read from the environment
only. A developer's .env (the one `scripts/run` writes, say) must not change what tests see."""

import os

os.environ["GATEWAY_ENV_FILE"] = ""  # inherited by the gunicorn processes tests start
os.environ.setdefault("SECRET_KEY", "test-only-secret-key-never-used-in-production")
# The in-process gateway and the test threads give burst connections back quickly.
os.environ.setdefault("DB_POOL_MAX_IDLE", "2")

from ollama_gateway.settings import *  # noqa: F403
