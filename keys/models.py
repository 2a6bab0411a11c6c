from django.db import models
from django.utils import timezone

from keys.crypto import PREVIEW_LENGTH


class ApiKey(models.Model):
    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        USER = "user", "User"

    class Priority(models.TextChoices):
        INTERACTIVE = "interactive", "Interactive"
        BATCH = "batch", "Batch"

    name = models.CharField(max_length=100)
    role = models.CharField(max_length=5, choices=Role.choices, default=Role.USER)
    # What lists show and what DELETE /api/keys/{preview} takes; the start of the raw key.
    preview = models.CharField(max_length=PREVIEW_LENGTH, unique=True, editable=False)
    # SHA-256 hex digest of the raw key (keys/crypto.py); its unique index serves authentication.
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    rate_limit = models.PositiveIntegerField(help_text="Requests per hour.")
    token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt + completion tokens per day (UTC); empty: none."
    )
    # Sharing the GPU (usage/queue.py): generations of this key running at once across every
    # gateway process, its place in the queue, and its tokens per clock minute.
    max_concurrent = models.PositiveIntegerField(
        null=True, blank=True, help_text="Generations running at once; empty: no cap."
    )
    priority = models.CharField(
        max_length=11,
        choices=Priority.choices,
        default=Priority.INTERACTIVE,
        help_text="A batch request takes a free slot only when no interactive request waits.",
    )
    tokens_per_minute = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Prompt + completion tokens per minute; empty: none."
    )
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model names this key may use; empty means all."
    )
    is_active = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    created_by = models.CharField(max_length=150, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        # "add API key" alone mints user keys; admin keys can manage every key and model.
        permissions = [("manage_admin_keys", "Can create admin API keys")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(rate_limit__gt=0), name="apikey_rate_limit_gt_0"
            ),
            models.CheckConstraint(
                condition=models.Q(role__in=["admin", "user"]), name="apikey_role_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(token_quota__isnull=True) | models.Q(token_quota__gt=0),
                name="apikey_token_quota_gt_0",
            ),
            models.CheckConstraint(
                condition=models.Q(max_concurrent__isnull=True) | models.Q(max_concurrent__gt=0),
                name="apikey_max_concurrent_gt_0",
            ),
            models.CheckConstraint(
                condition=models.Q(tokens_per_minute__isnull=True)
                | models.Q(tokens_per_minute__gt=0),
                name="apikey_tokens_per_minute_gt_0",
            ),
            models.CheckConstraint(
                condition=models.Q(priority__in=["interactive", "batch"]),
                name="apikey_priority_valid",
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.preview}…)"

    # DRF treats whatever the authentication class returns as request.user.
    is_authenticated = True

    @property
    def is_admin(self) -> bool:
        return self.role == self.Role.ADMIN

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    def is_usable(self, now=None) -> bool:
        """Not revoked, not expired. (The lookup statement in usage/limits.py says it in SQL.)"""
        return self.is_active and not self.is_expired(now)

    def allows_model(self, model: str) -> bool:
        """Whether this key may use `model`; `llama3.2` and `llama3.2:latest` are the same model.

        Cloud models (`*:cloud`, `*-cloud`) run on the server owner's ollama.com account: only
        admin keys may use them.
        """
        if not self.is_admin and is_cloud_model(model):
            return False
        if not self.allowed_models:
            return True
        return normalize_model(model) in {normalize_model(m) for m in self.allowed_models}


def is_cloud_model(name: str) -> bool:
    tag = normalize_model(name).rsplit(":", 1)[-1]
    return tag == "cloud" or tag.endswith("-cloud")


def normalize_model(name: str) -> str:
    """Ollama's own rules: names compare case-insensitively, and no tag means `latest`."""
    name = name.strip().lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
