import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from keys.permissions import IsAdminKey, IsApiKey
from ollama_gateway.api import GatewayAPIView
from usage import metrics
from usage.export import usage_csv_response
from usage.serializers import (
    AdminStatsQuerySerializer,
    AdminStatsSerializer,
    PeriodQuerySerializer,
    StatsQuerySerializer,
    StatsSerializer,
)
from usage.stats import usage_stats

PERIOD_PARAMETERS = [
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="Start (default: 24 hours ago)."),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="End (default: now)."),
]


class StatsView(GatewayAPIView):
    """The calling key's statistics; AdminStatsView widens it to every key."""

    permission_classes = [IsApiKey]
    query_serializer = StatsQuerySerializer
    answer_serializer = StatsSerializer

    @extend_schema(
        summary="Usage statistics of the calling key",
        parameters=[*PERIOD_PARAMETERS, StatsQuerySerializer],
        responses=StatsSerializer,
    )
    def get(self, request):
        query = self.query_serializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        stats = usage_stats(
            start=params["start"],
            end=params["end"],
            granularity=params["granularity"],
            model=params.get("model"),
            **self.scope(request, params),
        )
        return Response(self.answer_serializer(stats).data)

    def scope(self, request, params) -> dict:
        return {"key": request.user}


class AdminStatsView(StatsView):
    permission_classes = [IsAdminKey]
    query_serializer = AdminStatsQuerySerializer
    answer_serializer = AdminStatsSerializer

    @extend_schema(
        summary="Usage statistics of every key (admin)",
        parameters=[*PERIOD_PARAMETERS, AdminStatsQuerySerializer],
        responses=AdminStatsSerializer,
    )
    def get(self, request):
        return super().get(request)

    def scope(self, request, params) -> dict:
        return {"key": params.get("key"), "per_key": True}


class UsageExportView(GatewayAPIView):
    permission_classes = [IsAdminKey]

    @extend_schema(
        summary="Export usage records of a period as CSV (admin)",
        parameters=PERIOD_PARAMETERS,
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    def get(self, request):
        query = PeriodQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return usage_csv_response(query.validated_data["start"], query.validated_data["end"])


# Headers a reverse proxy adds: a request carrying one came from somewhere else.
_FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def metrics_view(request):
    """Prometheus metrics, for a bearer METRICS_TOKEN or an address in METRICS_ALLOWED_IPS.

    The address is the client's as TRUSTED_PROXIES resolves it. A request relayed by a proxy
    that is not trusted (e.g. a local nginx when TRUSTED_PROXIES is empty: REMOTE_ADDR is
    127.0.0.1, the client is anywhere) is not taken for a local one: it needs the token.
    """
    token = settings.METRICS_TOKEN
    given = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
    token_ok = bool(token) and hmac.compare_digest(given.encode(), token.encode())
    relayed = request.META.get("REMOTE_ADDR") not in settings.TRUSTED_PROXIES and any(
        request.META.get(header) for header in _FORWARDING_HEADERS
    )
    address = getattr(request, "client_addr", None)
    if not (token_ok or (address in settings.METRICS_ALLOWED_IPS and not relayed)):
        return JsonResponse({"detail": "Not allowed."}, status=403)
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)
