from django.db import models
from django.utils import timezone

from keys.models import ApiKey


class UsageRecord(models.Model):
    """One row per API request that reached authentication, whatever its outcome."""

    class Outcome(models.TextChoices):
        OK = "ok"
        UPSTREAM_ERROR = "upstream_error"
        RATE_LIMITED = "rate_limited"
        DENIED = "denied"
        BAD_REQUEST = "bad_request"
        CLIENT_CLOSED = "client_closed"
        TIMEOUT = "timeout"

    # Null for requests that failed authentication: those are counted per client address.
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    started_at = models.DateTimeField(default=timezone.now)
    method = models.CharField(max_length=7)
    route = models.CharField(max_length=64)
    model = models.CharField(max_length=200, blank=True)
    status = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    latency_ms = models.FloatField(help_text="Until the last byte was sent.")
    ttft_ms = models.FloatField(
        null=True, blank=True, help_text="Until the first byte of a stream."
    )
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64)
    client_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # Drill-down into one key's requests, newest first.
            models.Index(fields=["key", "-started_at"], name="usage_key_started"),
            # Time-range listings, CSV export and `pruneusage` batches.
            models.Index(fields=["started_at"], name="usage_started"),
        ]

    def __str__(self):
        return f"{self.method} {self.route} {self.status} ({self.request_id})"
