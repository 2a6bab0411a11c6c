from django.core.management.base import BaseCommand, CommandError

from keys.models import ApiKey
from keys.services import api_key_revoke


class Command(BaseCommand):
    help = "Revoke an API key for good, by its preview (as listapikeys shows it)."

    def add_arguments(self, parser):
        parser.add_argument("preview")

    def handle(self, *args, preview, **options):
        try:
            key = api_key_revoke(preview=preview)
        except ApiKey.DoesNotExist:
            raise CommandError(f"No API key with preview {preview!r}.") from None
        self.stdout.write(f"Revoked {key.preview} ({key.name}).")
