import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

# Where clouds answer instance metadata (and credentials) to anything on the machine. Link-local
# ranges cover most (169.254.169.254); these are the exceptions and the names they go by.
METADATA_ADDRESSES = {
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}
METADATA_HOSTS = {
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.com",
    "instance-data",
    "instance-data.ec2.internal",
}
URL_HELP = "Enter http:// or https:// with a host and optional port only, e.g. http://gpu-1:11434."


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a literal host names, in any spelling a resolver accepts (2852039166,
    0xa9.0xfe.0xa9.0xfe, ::ffff:169.254.169.254); None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        try:
            address = ipaddress.ip_address(socket.inet_aton(host))
        except OSError:
            return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def validate_backend_url(value: str) -> None:
    """An Ollama server's address: scheme, host and port, nothing else.

    Credentials, paths, queries and fragments are refused (the gateway appends the API's
    paths; a credential belongs in `credential_env`). Link-local and cloud-metadata addresses
    are refused unless BACKEND_ALLOW_LINK_LOCAL is set: the pool receives OLLAMA_API_KEY and
    every prompt. Names are checked as written, not resolved.
    """
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValidationError(URL_HELP) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(URL_HELP)
    if parts.username is not None or parts.password is not None:
        raise ValidationError("No credentials in the URL: name an environment variable below.")
    if parts.path not in ("", "/") or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValidationError(f"No path, query or fragment. {URL_HELP}")
    if port == 0:
        raise ValidationError(URL_HELP)
    if settings.BACKEND_ALLOW_LINK_LOCAL:
        return
    host = parts.hostname.rstrip(".").lower()
    address = _address(host)
    if host in METADATA_HOSTS or (
        address is not None and (address.is_link_local or address in METADATA_ADDRESSES)
    ):
        raise ValidationError(
            f"{parts.hostname} is a link-local or cloud metadata address; set "
            "BACKEND_ALLOW_LINK_LOCAL=true to allow it."
        )


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
