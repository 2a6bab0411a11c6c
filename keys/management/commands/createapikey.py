from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from keys.models import ApiKey
from keys.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key and print it (once: only its hash is stored)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--role", choices=ApiKey.Role.values, default=ApiKey.Role.USER)
        parser.add_argument("--rate-limit", type=int, help="Requests per hour (default by role).")
        parser.add_argument("--token-quota", type=int, help="Tokens per day (default: none).")
        parser.add_argument(
            "--max-concurrent", type=int, help="Generations running at once (default: no cap)."
        )
        parser.add_argument(
            "--priority", choices=ApiKey.Priority.values, default=ApiKey.Priority.INTERACTIVE
        )
        parser.add_argument(
            "--tokens-per-minute", type=int, help="Tokens per clock minute (default: none)."
        )
        parser.add_argument("--expires-in", type=float, metavar="DAYS")
        parser.add_argument(
            "--models", default="", help="Comma-separated allowlist (default: all)."
        )

    def handle(
        self,
        *args,
        name,
        role,
        rate_limit,
        token_quota,
        max_concurrent,
        priority,
        tokens_per_minute,
        expires_in,
        models,
        **options,
    ):
        if expires_in is not None and expires_in <= 0:
            raise CommandError("--expires-in must be a positive number of days.")
        expires_at = timezone.now() + timedelta(days=expires_in) if expires_in else None
        try:
            key, raw = api_key_create(
                name=name,
                role=role,
                rate_limit=rate_limit,
                token_quota=token_quota,
                max_concurrent=max_concurrent,
                priority=priority,
                tokens_per_minute=tokens_per_minute,
                expires_at=expires_at,
                allowed_models=[m for m in models.split(",") if m.strip()],
                created_by="manage.py",
            )
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{f}: {' '.join(m)}" for f, m in exc.message_dict.items())
            ) from None
        self.stderr.write(f"Created {key.role} key {key.name!r} ({key.preview}). Store it now:")
        self.stdout.write(raw)
