"""gunicorn settings for production: `gunicorn -c gunicorn.conf.py ollama_gateway.asgi`.

Event-loop workers (ollama_gateway/server.py): a waiting request, a stream included, is a
coroutine, not a thread; a few processes use the cores. Every value can be overridden from the
environment (GUNICORN_* or gunicorn's own flags).
"""

import os
import shutil
import tempfile

import environ

# .env configures the server (HOST, PORT, GUNICORN_*) as it does the gateway: read here, before
# anything below looks at os.environ. The real environment wins; GATEWAY_ENV_FILE names another
# file, or none when empty (the same rule as ollama_gateway/settings.py).
_env_file = os.environ.get(
    "GATEWAY_ENV_FILE", os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env")
)
if _env_file and (os.path.isfile(_env_file) or "GATEWAY_ENV_FILE" in os.environ):
    environ.Env.read_env(_env_file, overwrite=False)

# Workers share Prometheus metrics through files here (prometheus-client's multiprocess mode).
# Set before any worker imports prometheus_client; emptied at every start.
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(tempfile.gettempdir(), f"ollama-gateway-metrics-{os.getpid()}"),
)

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
worker_class = "ollama_gateway.server.GatewayWorker"
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
# The worker's loop heartbeats on its own: a long request never looks like a hung worker.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
# On SIGTERM running streams get this long (less 5 s to record what is cut) to finish.
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "120"))
keepalive = 5
# Open connections per worker; beyond it, 503 at once.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "4000"))
backlog = 2048
# gunicorn's control socket (runtime worker changes) is shared by every instance of a user by
# default: off, unless GUNICORN_CONTROL_SOCKET names one for this instance (mode 0600).
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET")
if not control_socket_disable:
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
accesslog = None  # the gateway logs each request itself, with its request id
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")


def on_starting(server):
    """Once, in the master, before any worker: migrate and insert the demo keys."""
    import django

    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ollama_gateway.settings")
    django.setup()
    from django.db import connections

    from ollama_gateway.startup import prepare

    prepare()
    # Workers fork from the master: they must not inherit its connections, nor its connection
    # pool (whose threads do not survive a fork). Each worker opens its own on first use.
    for connection in connections.all():
        connection.close()
        if getattr(connection, "pool", None) is not None:
            connection.close_pool()


def child_exit(server, worker):
    """A dead worker's live gauges (streams in flight) must not linger in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
