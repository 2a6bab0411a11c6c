from proxy.backends import settings_backends
from proxy.models import Backend


def backends_bootstrap() -> None:
    """At start, seed an empty Backend table from OLLAMA_BASE_URL (one URL or a list), so that
    the servers appear in the admin. Once it has rows, the table is the configuration, but
    OLLAMA_NUM_PARALLEL still seeds the `parallel` of servers that have none (the admin's
    values win)."""
    from django.conf import settings

    if Backend.objects.exists():
        if settings.OLLAMA_NUM_PARALLEL is not None:
            Backend.objects.filter(parallel__isnull=True).update(
                parallel=settings.OLLAMA_NUM_PARALLEL
            )
        return
    for config in settings_backends():
        # The credential stays in the environment: the row names its variable.
        credential_env = "OLLAMA_API_KEY" if config.credential else ""
        Backend.objects.get_or_create(
            url=config.url,
            defaults={
                "name": config.name,
                "credential_env": credential_env,
                "parallel": config.parallel,
            },
        )
