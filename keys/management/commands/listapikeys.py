from django.core.management.base import BaseCommand

from keys.models import ApiKey


class Command(BaseCommand):
    help = "List API keys (never their secrets)."

    def handle(self, *args, **options):
        row = "{:<16} {:<24} {:<6} {:<8} {:>10}  {:<20} {:<20}"
        self.stdout.write(
            row.format("PREVIEW", "NAME", "ROLE", "STATE", "RATE/H", "EXPIRES", "LAST USED")
        )
        for key in ApiKey.objects.all():
            state = "active" if key.is_active else "revoked"
            if key.is_active and key.is_expired():
                state = "expired"
            self.stdout.write(
                row.format(
                    key.preview,
                    key.name[:24],
                    key.role,
                    state,
                    key.rate_limit,
                    key.expires_at.strftime("%Y-%m-%d %H:%M") if key.expires_at else "-",
                    key.last_used_at.strftime("%Y-%m-%d %H:%M") if key.last_used_at else "-",
                )
            )
