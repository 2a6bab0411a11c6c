from functools import cached_property
from http import HTTPStatus

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections
from django.urls import path

from proxy.models import Backend
from usage import dashboard
from usage.models import OUTCOME_LABELS, UsageRecord, UsageRollup


class CheapCountPaginator(Paginator):
    """A paginator that never counts tens of millions of rows on PostgreSQL.

    Unfiltered, it takes the planner's estimate (`pg_class.reltuples`, kept fresh by
    autovacuum); filtered, it counts at most `limit` rows. SQLite counts, as usual.
    `exact` tells the pagination template whether to say "about" or "at least".
    """

    limit = 10_000
    exact = True

    @cached_property
    def count(self):
        queryset = self.object_list
        self.exact = connections[queryset.db].vendor != "postgresql"
        if self.exact:
            return super().count
        if not queryset.query.where:
            estimate = self._estimated_rows(queryset)
            if estimate > self.limit:
                return estimate
        count = queryset.order_by()[: self.limit].count()
        self.exact = count < self.limit
        return count

    @staticmethod
    def _estimated_rows(queryset) -> int:
        """The planner's row count: -1 (PostgreSQL 14+) or 0 if the table was never analyzed."""
        with connections[queryset.db].cursor() as cursor:
            cursor.execute(
                "SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                [queryset.model._meta.db_table],
            )
            row = cursor.fetchone()
        return int(row[0]) if row else -1


class ModelFilter(admin.SimpleListFilter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        # From the rollups (keys x models x hours): SELECT DISTINCT on the records scans them all.
        names = UsageRollup.objects.order_by("model").values_list("model", flat=True).distinct()
        return [(name, name or "(none)") for name in names]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(model=self.value())


class OutcomeFilter(admin.SimpleListFilter):
    title = "outcome"
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        return list(OUTCOME_LABELS.items())

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(outcome=self.value())


class BackendFilter(admin.SimpleListFilter):
    """Choices from the Backend table (a few rows), never a DISTINCT over the records."""

    title = "Ollama server"
    parameter_name = "backend"

    def lookups(self, request, model_admin):
        return [(name, name) for name in Backend.objects.values_list("name", flat=True)]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        return queryset.filter(backend=self.value())


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Raw records, read-only, listed so that tens of millions of rows stay fast: every
    listing is an index range (`usage_started`, or `usage_key_started` for one key), filters
    list small tables, and nothing counts the whole table."""

    # What happened first (status, outcome, latency), then who asked for what.
    list_display = [
        "status_text",
        "outcome_text",
        "latency",
        "started_at",
        "key",
        "method",
        "route",
        "model",
        "backend",
        "ttft",
        "prompt_tokens",
        "completion_tokens",
        "request_id",
    ]
    list_display_links = ["status_text"]
    # A date filter, not `date_hierarchy`: its year links run SELECT DISTINCT over the table.
    # The key filter lists the API keys (RelatedFieldListFilter), not the records' distinct keys.
    list_filter = [OutcomeFilter, "started_at", "key", ModelFilter, BackendFilter]
    list_select_related = ["key"]
    # Exact match: a request id is looked up whole, never as a substring scan.
    search_fields = ["request_id__exact"]
    search_help_text = "Search by exact request id (the X-Request-ID header)."
    ordering = ["-started_at"]
    # Sorting on any other column would sort the whole table to show one page.
    sortable_by = ["started_at"]
    show_full_result_count = False
    # Facet counts would aggregate the whole table for every filter choice.
    show_facets = admin.ShowFacets.NEVER
    paginator = CheapCountPaginator

    @admin.display(description="status")
    def status_text(self, obj):
        try:
            return f"{obj.status} {HTTPStatus(obj.status).phrase}"
        except ValueError:
            return str(obj.status)

    @admin.display(description="outcome")
    def outcome_text(self, obj):
        return OUTCOME_LABELS.get(obj.outcome, obj.outcome)

    @admin.display(description="latency")
    def latency(self, obj):
        return f"{obj.latency_ms:,.0f} ms"

    @admin.display(description="first token")
    def ttft(self, obj):
        return None if obj.ttft_ms is None else f"{obj.ttft_ms:,.0f} ms"

    def get_urls(self):
        return [
            path(
                "dashboard/",
                self.admin_site.admin_view(self.dashboard_view),
                name="usage_usagerecord_dashboard",
            ),
            path(
                "dashboard/csv/",
                self.admin_site.admin_view(self.dashboard_csv_view),
                name="usage_usagerecord_dashboard_csv",
            ),
            *super().get_urls(),
        ]

    def dashboard_view(self, request):
        self._require_view_permission(request)
        return dashboard.dashboard_view(request, self)

    def dashboard_csv_view(self, request):
        self._require_view_permission(request)
        return dashboard.dashboard_csv_view(request, self)

    def _require_view_permission(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied

    # Records are written by the gateway only, and deleted only by `usage_prune`.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
