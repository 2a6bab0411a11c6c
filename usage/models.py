from datetime import datetime

from django.db import models
from django.utils import timezone

from keys.models import ApiKey


def hour_start(moment: datetime) -> datetime:
    """The hour a moment belongs to: rate-limit windows and hourly rollups."""
    return moment.replace(minute=0, second=0, microsecond=0)


def day_start(moment: datetime) -> datetime:
    """The UTC day a moment belongs to: token quotas and daily rollups."""
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


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
        # QUEUE_TIMEOUT passed while every slot of the servers was taken (503): the GPU is
        # saturated, Ollama did not fail.
        BUSY = "busy"

    # Null for requests that failed authentication: those are counted per client address.
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL)
    started_at = models.DateTimeField(default=timezone.now)
    method = models.CharField(max_length=7)
    route = models.CharField(max_length=64)
    model = models.CharField(max_length=200, blank=True)
    # The Ollama server that answered ("*": several, e.g. merged lists).
    backend = models.CharField(max_length=100, blank=True)
    status = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    latency_ms = models.FloatField(help_text="Until the last byte was sent.")
    ttft_ms = models.FloatField(
        null=True, blank=True, help_text="Until the first byte of a stream."
    )
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    queue_wait_ms = models.FloatField(
        null=True, blank=True, help_text="Time spent in the gateway's queue for a slot."
    )
    request_id = models.CharField(max_length=64)
    client_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            # Drill-down into one key's requests, newest first.
            models.Index(fields=["key", "-started_at"], name="usage_key_started"),
            # Time-range listings, CSV export and `pruneusage` batches.
            models.Index(fields=["started_at"], name="usage_started"),
            # The admin's search by request id (from a client's X-Request-ID or a log line).
            models.Index(fields=["request_id"], name="usage_request_id"),
        ]

    def __str__(self):
        return f"{self.method} {self.route} {self.status} ({self.request_id})"


# What the admin and the dashboard call each outcome (kept out of the field's choices, whose
# labels would only add a migration).
OUTCOME_LABELS = {
    UsageRecord.Outcome.OK: "OK",
    UsageRecord.Outcome.BAD_REQUEST: "Client error (4xx)",
    UsageRecord.Outcome.DENIED: "Denied (401/403)",
    UsageRecord.Outcome.RATE_LIMITED: "Rate-limited (429)",
    UsageRecord.Outcome.CLIENT_CLOSED: "Client hung up",
    UsageRecord.Outcome.UPSTREAM_ERROR: "Server error (5xx)",
    UsageRecord.Outcome.TIMEOUT: "Upstream timeout (504)",
    UsageRecord.Outcome.BUSY: "Servers busy (503, queue timeout)",
}


# Upper bounds (ms) of the latency histogram kept in each rollup row; the last bucket is open.
LATENCY_BUCKETS_MS = (
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
)
LATENCY_COLUMNS = tuple(f"latency_b{i}" for i in range(len(LATENCY_BUCKETS_MS) + 1))
OUTCOME_COLUMNS = {outcome: f"n_{outcome}" for outcome in UsageRecord.Outcome.values}
# Every counter of a rollup row: what one request adds to, and what statistics sum.
ROLLUP_SUM_COLUMNS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms_sum",
    "ttft_ms_sum",
    "ttft_count",
    "queue_wait_ms_sum",
    "queue_count",
    *OUTCOME_COLUMNS.values(),
    *LATENCY_COLUMNS,
)


class UsageRollup(models.Model):
    """Requests of one key on one model in one hour, and in one day, summed as they finish.

    Statistics read these rows, never the raw records, so their cost does not grow with
    traffic: hourly rows for hourly series, daily rows (24 times fewer) for longer periods.
    Rows are upserted atomically (`INSERT ... ON CONFLICT DO UPDATE`), both spans at once.
    """

    class Span(models.TextChoices):
        HOUR = "h", "hour"
        DAY = "d", "day"

    # The key's id, or 0 for requests that failed authentication. Not a foreign key: the
    # upsert's conflict target must never be NULL, and keys are never deleted anyway.
    key_pk = models.BigIntegerField()
    model = models.CharField(max_length=200)
    span = models.CharField(max_length=1, choices=Span.choices, default=Span.HOUR)
    # The start of the hour or the day (UTC).
    start = models.DateTimeField()
    requests = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    latency_ms_sum = models.FloatField(default=0)
    ttft_ms_sum = models.FloatField(default=0)
    ttft_count = models.PositiveBigIntegerField(default=0)
    # Requests that went through the GPU queue (usage/queue.py) and their total wait.
    queue_wait_ms_sum = models.FloatField(default=0)
    queue_count = models.PositiveBigIntegerField(default=0)
    # One counter per outcome (n_ok, n_upstream_error, ...) and per latency bucket.
    locals().update(
        {column: models.PositiveBigIntegerField(default=0) for column in OUTCOME_COLUMNS.values()}
    )
    locals().update(
        {column: models.PositiveBigIntegerField(default=0) for column in LATENCY_COLUMNS}
    )

    class Meta:
        constraints = [
            # The upsert's conflict target.
            models.UniqueConstraint(
                fields=["key_pk", "model", "span", "start"], name="rollup_key_model_span_start"
            )
        ]
        indexes = [
            # Statistics for a period (admin: all keys), hourly or daily rows.
            models.Index(fields=["span", "start"], name="rollup_span_start"),
        ]

    def __str__(self):
        return (
            f"key {self.key_pk} {self.model} {self.get_span_display()} {self.start:%Y-%m-%d %H:00}"
        )


class RateCounter(models.Model):
    """Requests of one key in one clock hour: the rate limit's counter, updated atomically."""

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE)
    window_start = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "window_start"], name="ratecounter_key_window")
        ]
        # Pruning expired windows.
        indexes = [models.Index(fields=["window_start"], name="ratecounter_window")]

    def __str__(self):
        return f"{self.key_id} @ {self.window_start:%Y-%m-%d %H:00}: {self.requests}"


class AuthFailureCounter(models.Model):
    """Failed authentications from one address in one minute: guessing is slowed with 429."""

    client_addr = models.CharField(max_length=45)
    window_start = models.DateTimeField()
    failures = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["client_addr", "window_start"], name="authfailure_addr_window"
            )
        ]
        indexes = [models.Index(fields=["window_start"], name="authfailure_window")]

    def __str__(self):
        return f"{self.client_addr} @ {self.window_start:%H:%M}: {self.failures}"


class TokenCounter(models.Model):
    """Prompt + completion tokens of one key in one clock minute: `tokens_per_minute`.

    Added to by the statement that writes the request's record (usage/services.py).
    """

    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE)
    window_start = models.DateTimeField()
    tokens = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["key", "window_start"], name="tokencounter_key_window")
        ]
        # Pruning expired windows.
        indexes = [models.Index(fields=["window_start"], name="tokencounter_window")]

    def __str__(self):
        return f"{self.key_id} @ {self.window_start:%Y-%m-%d %H:%M}: {self.tokens}"


class Slot(models.Model):
    """One generation on the shared Ollama servers: waiting for its turn (`granted_at` empty)
    or running. One row for the request's whole life, written and read only by the grant
    functions of usage/queue.py; a lease that its process renews, so a killed process's rows
    expire by themselves.
    """

    # Drawn by the process before the row exists, so it can await its wake-up first.
    id = models.BigIntegerField(primary_key=True)
    backend = models.CharField(max_length=100)
    # Not a foreign key: the grant reads it on every decision, keys are never deleted.
    key_id = models.BigIntegerField()
    priority = models.CharField(max_length=11)
    # Copied from the key and the server when the request arrives: grants need no join.
    max_concurrent = models.PositiveIntegerField(null=True)
    parallel = models.PositiveIntegerField(null=True)
    # The gateway process that holds the row (it renews `expires_at`).
    holder = models.CharField(max_length=32)
    enqueued_at = models.DateTimeField()
    granted_at = models.DateTimeField(null=True)
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "usage_slot"
        indexes = [
            # Slots running on a server; requests waiting for it.
            models.Index(fields=["backend", "granted_at"], name="slot_backend"),
            # Slots running for a key (its cap, the fair order).
            models.Index(fields=["key_id", "granted_at"], name="slot_key"),
            # Reaping expired leases.
            models.Index(fields=["expires_at"], name="slot_expires"),
            # A process renewing its leases.
            models.Index(fields=["holder"], name="slot_holder"),
        ]

    def __str__(self):
        state = "running" if self.granted_at else "waiting"
        return f"{self.backend} key {self.key_id} {state}"


class QueueTurn(models.Model):
    """When each key last got a slot through the queue: saturating keys take turns."""

    key_id = models.BigIntegerField(primary_key=True)
    granted_at = models.DateTimeField()

    class Meta:
        db_table = "usage_queue_turn"

    def __str__(self):
        return f"key {self.key_id} last served {self.granted_at:%H:%M:%S}"
