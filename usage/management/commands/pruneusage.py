from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from usage.services import usage_prune


class Command(BaseCommand):
    help = (
        "Delete raw usage records older than --older-than days, in short batches that never "
        "lock the table for long. Hourly rollups (statistics) are kept; expired rate-limit "
        "counters are removed too."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, required=True, metavar="DAYS")
        parser.add_argument("--batch-size", type=int, default=10_000)
        parser.add_argument(
            "--pause", type=float, default=0.0, help="Seconds to sleep between batches."
        )

    def handle(self, *args, older_than, batch_size, pause, **options):
        if older_than <= 0:
            raise CommandError("--older-than must be a positive number of days.")
        if batch_size <= 0:
            raise CommandError("--batch-size must be positive.")
        deleted = usage_prune(
            older_than=timedelta(days=older_than), batch_size=batch_size, pause=pause
        )
        self.stdout.write(f"Deleted {deleted} usage records older than {older_than:g} days.")
