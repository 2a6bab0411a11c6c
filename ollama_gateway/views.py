"""Service-level endpoints: what this is, and whether its parts answer."""

import logging
import time

import requests
from django.conf import settings
from django.db import connection
from django.db.utils import Error as DatabaseError
from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from proxy.backends import CHECK_TIMEOUT, backend_pool

logger = logging.getLogger(__name__)

HEALTH_CACHE_SECONDS = 2.0
_health: tuple[float, dict, int] | None = None


class ServiceInfoView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Service information",
        responses=inline_serializer(
            "ServiceInfo",
            {
                "name": serializers.CharField(),
                "version": serializers.CharField(),
                "docs": serializers.DictField(child=serializers.CharField()),
            },
        ),
    )
    def get(self, request):
        if request.method == "HEAD":
            # Clients (Claude Code, Ollama's own CLI) probe `HEAD /` first, without a key:
            # answered as Ollama answers it. (Django routes HEAD here when there is no head().)
            return HttpResponse("Ollama is running", content_type="text/plain; charset=utf-8")
        return JsonResponse(
            {
                "name": "ollama-gateway",
                "version": settings.VERSION,
                "docs": {
                    "swagger": request.build_absolute_uri(reverse("swagger-ui")),
                    "redoc": request.build_absolute_uri(reverse("redoc")),
                    "schema": request.build_absolute_uri(reverse("schema")),
                },
            }
        )


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except DatabaseError:
        logger.warning("health: database unreachable", exc_info=True)
        return False


def _backends_ok() -> dict[str, bool]:
    """Whether each Ollama server answers, checked now (not from the pool's cached state)."""
    states = {}
    for state in backend_pool().states:
        try:
            response = state.upstream.request("GET", "/api/version", timeout=CHECK_TIMEOUT)
            response.close()
            states[state.name] = response.status_code == 200
        except requests.RequestException:
            logger.warning("health: ollama server %s unreachable", state.name)
            states[state.name] = False
    return states


class HealthView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Health of the gateway's parts",
        description="200 when the database and Ollama both answer, 503 naming what failed.",
        responses=inline_serializer(
            "Health",
            {
                "status": serializers.ChoiceField(["ok", "unavailable"]),
                "database": serializers.ChoiceField(["ok", "unreachable"]),
                "ollama": serializers.ChoiceField(["ok", "unreachable"]),
            },
        ),
    )
    def get(self, request):
        # Answered from a short cache: a flood of health checks must not become one on every
        # Ollama server and the database.
        global _health
        if _health is None or time.monotonic() - _health[0] > HEALTH_CACHE_SECONDS:
            _health = (time.monotonic(), *self.check())
        body, status = _health[1], _health[2]
        return JsonResponse(body, status=status)

    @staticmethod
    def check() -> tuple[dict, int]:
        backends = _backends_ok()
        parts = {
            "database": "ok" if _database_ok() else "unreachable",
            # Serving needs one Ollama server; several report each below.
            "ollama": "ok" if any(backends.values()) else "unreachable",
        }
        healthy = all(state == "ok" for state in parts.values())
        body = {"status": "ok" if healthy else "unavailable", **parts}
        if len(backends) > 1:
            body["backends"] = {n: "ok" if up else "unreachable" for n, up in backends.items()}
        return body, 200 if healthy else 503
