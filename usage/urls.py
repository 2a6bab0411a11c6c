from django.urls import path

from usage import views

urlpatterns = [
    path("api/stats", views.StatsView.as_view(), name="stats"),
    path("api/admin/stats", views.AdminStatsView.as_view(), name="admin-stats"),
    path("api/admin/usage.csv", views.UsageExportView.as_view(), name="usage-export"),
    path("metrics", views.metrics_view, name="metrics"),
]
