"""Service-level endpoints: what this is, and whether its parts answer."""

import logging

import requests
from django.conf import settings
from django.db import connection
from django.db.utils import Error as DatabaseError
from django.http import JsonResponse
from django.urls import reverse
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from proxy.upstream import upstream

logger = logging.getLogger(__name__)


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


def _ollama_ok() -> bool:
    try:
        response = upstream().request("GET", "/api/version", timeout=(2.0, 5.0))
        response.close()
        return response.status_code == 200
    except requests.RequestException:
        logger.warning("health: ollama unreachable")
        return False


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
        parts = {
            "database": "ok" if _database_ok() else "unreachable",
            "ollama": "ok" if _ollama_ok() else "unreachable",
        }
        healthy = all(state == "ok" for state in parts.values())
        return JsonResponse(
            {"status": "ok" if healthy else "unavailable", **parts}, status=200 if healthy else 503
        )
