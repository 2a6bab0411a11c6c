"""Settings for ollama-gateway.

Everything configurable comes from the environment (or a `.env` file beside manage.py) and is
documented in `.env.example`. Library code reads `django.conf.settings` at call time, never here.
"""

import os
import re
from datetime import timedelta
from pathlib import Path

import environ
from corsheaders.defaults import default_headers as cors_default_headers
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# Values come from the environment, then from the .env file beside manage.py (gunicorn.conf.py
# reads the same file). GATEWAY_ENV_FILE names another file, or none when empty (the test suite:
# ollama_gateway/settings_test.py).
ENV_FILE = os.environ.get("GATEWAY_ENV_FILE", str(BASE_DIR / ".env"))
if ENV_FILE and Path(ENV_FILE).is_file():
    environ.Env.read_env(ENV_FILE, overwrite=False)
elif ENV_FILE and "GATEWAY_ENV_FILE" in os.environ:
    raise ImproperlyConfigured(f"GATEWAY_ENV_FILE names {ENV_FILE}, which is not a file.")

VERSION = "0.1.0"

DEBUG = env.bool("DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment or in .env (for example: "
            "SECRET_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(50))')). "
            "Only DEBUG=true may run without one."
        )
    # Development only: a per-checkout value is fine, a shipped production default is not.
    SECRET_KEY = "django-insecure-development-only-" + str(BASE_DIR)

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8000)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "keys",
    "usage",
    "proxy",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Answers CORS preflights itself (no key needed, nothing recorded) and marks allowed origins.
    "corsheaders.middleware.CorsMiddleware",
    # The admin, its dashboard and the docs only (ollama_gateway/csp.py).
    "ollama_gateway.csp.ContentSecurityPolicyMiddleware",
    "ollama_gateway.middleware.GatewayMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Turns an admin login refused for too many failures into a 429 page (see AXES_* below).
    "axes.middleware.AxesMiddleware",
]

# CORS, as Ollama's OLLAMA_ORIGINS: browser front ends and extensions on these origins may call
# the API; others get no Access-Control-Allow-Origin. `*` inside an entry matches anything
# (`chrome-extension://*`).
_cors_origins = env.list("CORS_ALLOWED_ORIGINS", default=[])
CORS_ALLOWED_ORIGINS = [origin for origin in _cors_origins if "*" not in origin]
CORS_ALLOWED_ORIGIN_REGEXES = [
    "^" + re.escape(origin).replace(r"\*", ".*") + "$" for origin in _cors_origins if "*" in origin
]
CORS_URLS_REGEX = r"^/(?:api/|v1/|$)"
CORS_ALLOW_HEADERS = (
    *cors_default_headers,
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "x-request-id",
)
CORS_EXPOSE_HEADERS = [
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
]

ROOT_URLCONF = "ollama_gateway.urls"
WSGI_APPLICATION = "ollama_gateway.wsgi.application"
ASGI_APPLICATION = "ollama_gateway.asgi.application"
# The model routes run on the event loop behind these only: each must be async-capable (no
# thread hop per request). The admin, management API and docs get MIDDLEWARE.
MODEL_ROUTE_MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "ollama_gateway.middleware.GatewayMiddleware",
]
# The official clients call /api/generate, never /api/generate/: no redirects on the model API.
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# Unset DATABASE_URL: an embedded SQLite file for a zero-setup first run.
# PostgreSQL in production: a psycopg connection pool shared by a worker's threads, so that
# many concurrent streams do not each pin a server connection.
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.postgresql":
    if env.bool("DB_POOL", default=True):
        _db["CONN_MAX_AGE"] = 0
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
            "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
            "timeout": env.float("DB_POOL_TIMEOUT", default=5.0),
            # Connections opened for a burst are closed after this many idle seconds (one per
            # period), so that a quiet replica gives them back to PostgreSQL's max_connections.
            "max_idle": env.float("DB_POOL_MAX_IDLE", default=60.0),
        }
    else:
        _db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    # A liveness check (an empty query) when a connection is handed out: after a database
    # restart no request meets a dead connection. One short extra round trip per request.
    _db["CONN_HEALTH_CHECKS"] = env.bool("DB_HEALTH_CHECKS", default=True)
    # One test database per test run, so that concurrent runs never meet.
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{os.getpid()}"}
    _db.setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=5)
    )
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    _db.setdefault("OPTIONS", {}).update(
        {
            # WAL lets readers proceed while a request writes; IMMEDIATE avoids deadlocked upgrades.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # Test processes (e.g. a gunicorn subprocess) must share the test database: use a file,
    # one per test run so that concurrent runs never meet.
    _db["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Admin logins go through django-axes first: it refuses a user name from an address after
# repeated failures. API keys never reach Django's authenticate() (keys/authentication.py).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed admin logins for one user name from one address before that pair is locked out...
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
# ...for this many minutes (each further failure during the lockout restarts it).
AXES_COOLOFF_TIME = timedelta(minutes=env.float("ADMIN_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_RESET_ON_SUCCESS = True
# The same client address as records and limits: X-Forwarded-For only from TRUSTED_PROXIES.
AXES_CLIENT_IP_CALLABLE = "ollama_gateway.middleware.client_address"
AXES_HTTP_RESPONSE_CODE = 429
# Failures and lockouts are logged with the user name and address (axes masks both by default;
# an operator needs them to act). Passwords are always masked.
AXES_SENSITIVE_PARAMETERS: list[str] = []

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default="") or BASE_DIR / "var" / "static")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Tests and first runs need no collectstatic: serve from the apps' folders when not collected.
WHITENOISE_USE_FINDERS = env.bool("WHITENOISE_USE_FINDERS", default=True)

# --- Security (production defaults; `manage.py check --deploy` passes with DEBUG off) ----------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# Sent with the admin, the dashboard and /docs, /redoc (never the model routes); the default is
# in ollama_gateway/csp.py. Only to loosen it for a customised page.
CONTENT_SECURITY_POLICY = env.str("CONTENT_SECURITY_POLICY", default="")
SILENCED_SYSTEM_CHECKS = env.list(
    "SILENCED_SYSTEM_CHECKS",
    # TLS is terminated by the reverse proxy in front of the gateway (see docs): HSTS and the
    # HTTPS redirect are set there, or here through SECURE_HSTS_SECONDS / SECURE_SSL_REDIRECT.
    default=["security.W004", "security.W008"],
)

# --- Django REST framework and the OpenAPI schema -------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["keys.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["keys.permissions.IsAdminKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["ollama_gateway.parsers.SafeJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "ollama_gateway.parsers.StrictContentNegotiation",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_CLASSES": ["usage.limits.KeyRateThrottle"],
    "EXCEPTION_HANDLER": "ollama_gateway.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "ollama-gateway",
    "DESCRIPTION": (
        "An authenticating gateway in front of Ollama: API keys with roles, rate limits and usage "
        "accounting. Send your key as `Authorization: Bearer <key>` (or `X-API-Key: <key>`)."
    ),
    "VERSION": VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"PartStateEnum": ["ok", "unreachable"]},
}

# --- Ollama upstream ---------------------------------------------------------------------------
# One Ollama server, or several separated by commas. Servers are managed in the admin
# (Backends) once added there; this list seeds that table at start and serves while it is empty.
OLLAMA_BASE_URL = env.str("OLLAMA_BASE_URL", default="http://127.0.0.1:11434").rstrip("/")
# Seconds between health and model-catalog checks of each server (several servers only).
BACKEND_CHECK_INTERVAL = env.float("BACKEND_CHECK_INTERVAL", default=10.0)
# Seconds a server that failed is set aside before it is tried again.
BACKEND_COOLDOWN = env.float("BACKEND_COOLDOWN", default=15.0)
# Seconds a process keeps the backend configuration before re-reading the table.
BACKEND_CONFIG_INTERVAL = env.float("BACKEND_CONFIG_INTERVAL", default=10.0)
# Servers at link-local or cloud-metadata addresses (169.254.0.0/16, fe80::/10, 100.100.100.200,
# metadata.google.internal...) are refused unless this is true: the pool gets every prompt.
BACKEND_ALLOW_LINK_LOCAL = env.bool("BACKEND_ALLOW_LINK_LOCAL", default=False)
# The gateway's own credential for an upstream that requires one; the client's never goes upstream.
OLLAMA_API_KEY = env.str("OLLAMA_API_KEY", default="")
OLLAMA_CONNECT_TIMEOUT = env.float("OLLAMA_CONNECT_TIMEOUT", default=5.0)
# A model that is loading can hold back the first byte for minutes: keep this generous.
OLLAMA_READ_TIMEOUT = env.float("OLLAMA_READ_TIMEOUT", default=600.0)
OLLAMA_POOL_SIZE = env.int("OLLAMA_POOL_SIZE", default=256)
# Sharing the GPU (usage/queue.py). OLLAMA_NUM_PARALLEL: generations each Ollama server runs at
# once (its own OLLAMA_NUM_PARALLEL); it seeds the `parallel` of every server in the Backend
# table (editable in the admin) and the gateway queues the rest fairly across keys. Unset: no
# gateway queue. A request that waited QUEUE_TIMEOUT seconds gets 429 (its key's cap) or 503.
OLLAMA_NUM_PARALLEL = env.int("OLLAMA_NUM_PARALLEL", default=None)
if OLLAMA_NUM_PARALLEL is not None and OLLAMA_NUM_PARALLEL < 1:
    raise ImproperlyConfigured("OLLAMA_NUM_PARALLEL must be at least 1 (or unset: no queue).")
QUEUE_TIMEOUT = env.float("QUEUE_TIMEOUT", default=120.0)
# A process renews its slots every third of QUEUE_LEASE_SECONDS: a killed process's slots come
# back within it. A waiting request re-checks the queue every QUEUE_RECHECK_SECONDS in case a
# wake-up was lost (PostgreSQL NOTIFY during a reconnection).
QUEUE_LEASE_SECONDS = env.float("QUEUE_LEASE_SECONDS", default=15.0)
QUEUE_RECHECK_SECONDS = env.float("QUEUE_RECHECK_SECONDS", default=5.0)
# Bodies larger than this get 413 before anything reaches Ollama (several base64 images fit).
MAX_REQUEST_BODY_BYTES = env.int("MAX_REQUEST_BODY_BYTES", default=50 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
# Slow clients. Request headers must arrive within REQUEST_HEADER_TIMEOUT seconds; a body within
# REQUEST_BODY_TIMEOUT seconds plus one second per REQUEST_BODY_MIN_RATE bytes received (408
# otherwise). A client that takes nothing of its answer for CLIENT_WRITE_TIMEOUT seconds is cut
# off (its stream is recorded as client_closed).
REQUEST_HEADER_TIMEOUT = env.float("REQUEST_HEADER_TIMEOUT", default=10.0)
# A request's line and headers together: 431 beyond (nginx's default allows 32 KiB).
REQUEST_HEADER_MAX_BYTES = env.int("REQUEST_HEADER_MAX_BYTES", default=64 * 1024)
REQUEST_BODY_TIMEOUT = env.float("REQUEST_BODY_TIMEOUT", default=30.0)
REQUEST_BODY_MIN_RATE = env.int("REQUEST_BODY_MIN_RATE", default=256 * 1024)
CLIENT_WRITE_TIMEOUT = env.float("CLIENT_WRITE_TIMEOUT", default=60.0)
# Model blobs (POST /api/blobs) are gigabytes: streamed through, never read into memory.

# --- API keys and limits -----------------------------------------------------------------------
DEMO_ADMIN_KEY = env.str("DEMO_ADMIN_KEY", default="")
DEMO_USER_KEY = env.str("DEMO_USER_KEY", default="")
DEFAULT_RATE_LIMIT_USER = env.int("DEFAULT_RATE_LIMIT_USER", default=100)
DEFAULT_RATE_LIMIT_ADMIN = env.int("DEFAULT_RATE_LIMIT_ADMIN", default=1000)
# `last_used_at` is written at most this often per key, so that requests do not each pay a write.
API_KEY_LAST_USED_RESOLUTION = env.int("API_KEY_LAST_USED_RESOLUTION", default=60)

# What user keys may ask of the shared Ollama server (proxy/policy.py); admin keys are not bound.
# keep_alive is clamped to [MIN, MAX] seconds (MAX negative: no upper bound).
USER_KEEP_ALIVE_MIN = env.float("USER_KEEP_ALIVE_MIN", default=300.0)
USER_KEEP_ALIVE_MAX = env.float("USER_KEEP_ALIVE_MAX", default=1800.0)
# options.num_ctx above this is lowered to it; 0: user keys cannot set it.
USER_MAX_NUM_CTX = env.int("USER_MAX_NUM_CTX", default=0)
# Server-wide fields user keys may set anyway, unchanged (keep_alive, shift, num_ctx, num_gpu...).
USER_SERVER_OPTIONS = env.list("USER_SERVER_OPTIONS", default=[])

# Failed authentications per client address and minute before the gateway answers 429.
AUTH_FAILURES_PER_MINUTE = env.int("AUTH_FAILURES_PER_MINUTE", default=20)
# Reverse proxies whose X-Forwarded-For names the real client (for limits, records and logs).
TRUSTED_PROXIES = env.list("TRUSTED_PROXIES", default=[])

# --- Metrics -----------------------------------------------------------------------------------
# GET /metrics answers requests carrying `Authorization: Bearer <METRICS_TOKEN>` when it is set,
# and requests from these addresses.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])

# --- Logging -----------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"()": "ollama_gateway.logs.TextFormatter"},
        "json": {"()": "ollama_gateway.logs.JsonFormatter"},
    },
    "filters": {"redact_keys": {"()": "ollama_gateway.logs.RedactKeys"}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stdout",
            "formatter": "json" if LOG_FORMAT == "json" else "text",
            "filters": ["redact_keys"],
        }
    },
    "root": {"handlers": ["stdout"], "level": LOG_LEVEL},
    "loggers": {
        # Requests are logged by the gateway itself, one line each, with their request id.
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
        # Admin login failures and lockouts (django-axes) are warnings; its chatter is not.
        "axes": {"level": "WARNING"},
    },
}
