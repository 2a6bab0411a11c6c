"""One place that shapes every error the gateway produces.

Four API surfaces, four shapes:
- management routes (keys, stats): DRF's `{"detail": ...}` / `{"field": [...]}`;
- native Ollama routes (`/api/*`): `{"error": "message"}`, as Ollama answers;
- OpenAI-compatible routes (`/v1/*`, Responses included): `{"error": {"message", "type", "param",
  "code"}}`, so that the OpenAI SDK raises its proper exception classes;
- Anthropic-compatible routes (`/v1/messages*`): `{"type": "error", "error": {"type", "message"}}`
  (see proxy/protocols.py), for the `anthropic` SDK and Claude Code.
A view declares its surface with an `error_surface` attribute.
"""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.views import exception_handler as drf_exception_handler

from proxy.protocols import ANTHROPIC, RESPONSES, anthropic_error_body, too_large

logger = logging.getLogger("ollama_gateway.errors")

DRF, OLLAMA, OPENAI = "drf", "ollama", "openai"
__all__ = ["ANTHROPIC", "DRF", "OLLAMA", "OPENAI", "RESPONSES", "error_body", "error_response"]

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
BAD_REQUEST = (
    "Bad request: the Host header is not in the gateway's ALLOWED_HOSTS, or the request is "
    "malformed."
)

_OPENAI_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def error_body(surface: str, status: int, message: str) -> dict:
    if surface == ANTHROPIC:
        return anthropic_error_body(status, message)
    if surface in (OPENAI, RESPONSES):
        return {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "api_error"),
                "param": None,
                "code": _OPENAI_CODES.get(status),
            }
        }
    if surface == OLLAMA:
        return {"error": message}
    return {"detail": message}


def error_response(surface: str, status: int, message: str, headers=None) -> JsonResponse:
    return JsonResponse(error_body(surface, status, message), status=status, headers=headers)


AUTHENTICATE_HEADER = 'Bearer realm="ollama-gateway"'
DATABASE_UNAVAILABLE = "The gateway's database is unavailable."


def api_exception_response(exc: exceptions.APIException, surface: str) -> JsonResponse:
    """What DRF's exception handler makes of `exc`, for the event loop's views: the status,
    a one-line message in the surface's shape, WWW-Authenticate on 401, Retry-After on 429."""
    headers = {}
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        headers["WWW-Authenticate"] = AUTHENTICATE_HEADER
    wait = getattr(exc, "wait", None)
    if wait is not None:
        headers["Retry-After"] = str(int(wait))
    return error_response(surface, exc.status_code, _flatten(exc.detail), headers=headers)


# The management routes under /api/ (DRF's synchronous views, `{"detail"}` errors); every other
# /api/ route is a model route.
MANAGEMENT_PREFIXES = ("/api/keys", "/api/stats", "/api/admin", "/api/schema")


def surface_for_path(path: str) -> str:
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return ANTHROPIC
    if path.startswith("/v1/"):
        return OPENAI
    if path.startswith("/api/") and not path.startswith(MANAGEMENT_PREFIXES):
        return OLLAMA
    return DRF


def _flatten(data) -> str:
    """A readable one-line message from DRF's error data, naming the fields."""
    if isinstance(data, dict):
        if set(data) == {"detail"}:
            return _flatten(data["detail"])
        return "; ".join(f"{field}: {_flatten(value)}" for field, value in data.items())
    if isinstance(data, list):
        return " ".join(_flatten(item) for item in data)
    return str(data)


def database_unavailable(request, surface: str, exc: Exception) -> JsonResponse:
    """Keys and limits cannot be checked: fail closed, quickly, and say why (503)."""
    logger.error(
        "database unavailable: %s",
        type(exc).__name__,
        extra={"request_id": getattr(request, "request_id", None)},
    )
    exchange = getattr(request, "exchange", None)
    if exchange is not None:
        # Its record has nowhere to go; trying would only hold the caller another timeout.
        exchange.recorded = True
    return error_response(surface, 503, DATABASE_UNAVAILABLE)


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(
            exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        )
    response = drf_exception_handler(exc, context)
    view = context.get("view")
    surface = getattr(view, "error_surface", DRF)
    if isinstance(exc, RequestDataTooBig):
        # Django refuses to read a body announced larger than DATA_UPLOAD_MAX_MEMORY_SIZE.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error_response(surface, 413, too_large(limit).message)
    if isinstance(exc, (OperationalError, InterfaceError)):
        return database_unavailable(context.get("request"), surface, exc)
    if response is None:
        # Not an API exception: a bug. Log it; the caller gets no stack trace.
        logger.exception("unhandled error", exc_info=exc)
        return error_response(surface, 500, "Internal server error.")
    if surface != DRF:
        response.data = error_body(surface, response.status_code, _flatten(response.data))
    if getattr(exc, "default_code", None) == "servers_busy":
        # The GPU queue is full (usage/queue.py): expected under load, not a server error.
        logger.warning(
            "servers busy: queue timeout",
            extra={"request_id": getattr(context.get("request"), "request_id", None)},
        )
        response._has_been_logged = True
    return response


def handler400(request, exception=None):
    """Django's own refusals (a Host header not in ALLOWED_HOSTS, a suspicious request)."""
    return error_response(surface_for_path(request.path), 400, BAD_REQUEST)


def handler404(request, exception=None):
    return error_response(surface_for_path(request.path), 404, "Not found.")


def handler500(request):
    return error_response(surface_for_path(request.path), 500, "Internal server error.")
