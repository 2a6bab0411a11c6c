import re
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone


def validate_backend_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("Enter an http:// or https:// URL, e.g. http://gpu-1:11434.")


def validate_credential_env(value: str) -> None:
    # Only variables meant for Ollama: never SECRET_KEY, DATABASE_URL or the like.
    if value and not re.fullmatch(r"OLLAMA_[A-Z0-9_]+", value):
        raise ValidationError("Name an environment variable starting with OLLAMA_.")


class Backend(models.Model):
    """One Ollama server of the pool. Health and model catalogs live in each process."""

    name = models.CharField(max_length=100, unique=True)
    url = models.CharField(max_length=300, unique=True, validators=[validate_backend_url])
    weight = models.PositiveIntegerField(
        default=1,
        help_text="Share of traffic relative to the others (in-flight requests / weight).",
    )
    parallel = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Generations this server runs at once (its OLLAMA_NUM_PARALLEL); the gateway queues "
            "the rest fairly across keys. Empty: no gateway queue."
        ),
    )
    enabled = models.BooleanField(default=True)
    credential_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[validate_credential_env],
        help_text=(
            "Name of an environment variable (OLLAMA_...) holding the bearer credential this "
            "server requires. "
            "The credential itself is never stored in the database."
        ),
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(weight__gt=0), name="backend_weight_gt_0"),
            models.CheckConstraint(
                condition=models.Q(parallel__isnull=True) | models.Q(parallel__gt=0),
                name="backend_parallel_gt_0",
            ),
        ]

    def __str__(self):
        return f"{self.name} ({self.url})"
