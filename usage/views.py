import csv
import hmac

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from keys.permissions import IsAdminKey, IsApiKey
from ollama_gateway.api import GatewayAPIView
from usage import metrics
from usage.models import UsageRecord
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


CSV_COLUMNS = [
    "started_at",
    "key__preview",
    "key__name",
    "method",
    "route",
    "model",
    "backend",
    "status",
    "outcome",
    "latency_ms",
    "ttft_ms",
    "prompt_tokens",
    "completion_tokens",
    "request_id",
    "client_addr",
]


class _Echo:
    def write(self, value):
        return value


def usage_csv_response(start, end) -> StreamingHttpResponse:
    """Raw records of a period as CSV, streamed: memory stays flat for millions of rows."""
    rows = (
        UsageRecord.objects.filter(started_at__gte=start, started_at__lt=end)
        .order_by("started_at")
        .values_list(*CSV_COLUMNS)
        .iterator(chunk_size=5000)
    )
    writer = csv.writer(_Echo())
    header = [c.replace("key__", "key_") for c in CSV_COLUMNS]
    lines = (writer.writerow(row) for row in _prepend(header, rows))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    name = f"usage-{start:%Y%m%d%H%M}-{end:%Y%m%d%H%M}.csv"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


def _prepend(first, rest):
    yield first
    yield from rest


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


def metrics_view(request):
    """Prometheus metrics, for a bearer METRICS_TOKEN or an address in METRICS_ALLOWED_IPS."""
    token = settings.METRICS_TOKEN
    given = request.META.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ").strip()
    token_ok = bool(token) and hmac.compare_digest(given.encode(), token.encode())
    if not (token_ok or getattr(request, "client_addr", None) in settings.METRICS_ALLOWED_IPS):
        return JsonResponse({"detail": "Not allowed."}, status=403)
    body, content_type = metrics.render()
    return HttpResponse(body, content_type=content_type)
