import logging

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError

from proxy.backends import settings_backends
from proxy.models import Backend, validate_backend_url

audit = logging.getLogger("proxy.backends.audit")


def backends_bootstrap() -> None:
    """At start, seed an empty Backend table from OLLAMA_BASE_URL (one URL or a list), so that
    the servers appear in the admin. Once it has rows, the table is the configuration, but
    OLLAMA_NUM_PARALLEL still seeds the `parallel` of servers that have none (the admin's
    values win).

    The URLs pass the same validator as the admin's form: a bad one stops the start."""
    if Backend.objects.exists():
        if settings.OLLAMA_NUM_PARALLEL is not None:
            Backend.objects.filter(parallel__isnull=True).update(
                parallel=settings.OLLAMA_NUM_PARALLEL
            )
        return
    configs = settings_backends()
    for config in configs:
        try:
            validate_backend_url(config.url)
        except ValidationError as exc:
            raise ImproperlyConfigured(f"OLLAMA_BASE_URL {config.url}: {exc.messages[0]}") from None
    for config in configs:
        # The credential stays in the environment: the row names its variable.
        credential_env = "OLLAMA_API_KEY" if config.credential else ""
        _, created = Backend.objects.get_or_create(
            url=config.url,
            defaults={
                "name": config.name,
                "credential_env": credential_env,
                "parallel": config.parallel,
            },
        )
        if created:
            audit.warning("backend created: %s from OLLAMA_BASE_URL (%s)", config.name, config.url)
