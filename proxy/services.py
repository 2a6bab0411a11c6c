from proxy.backends import settings_urls
from proxy.models import Backend


def backends_bootstrap() -> None:
    """At start, seed an empty Backend table from OLLAMA_BASE_URL (one URL or a list), so that
    the servers appear in the admin. Once it has rows, the table is the configuration."""
    if Backend.objects.exists():
        return
    for url in settings_urls():
        Backend.objects.get_or_create(url=url, defaults={"name": url.split("//", 1)[-1]})
