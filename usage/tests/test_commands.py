from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from usage.limits import rate_limit_hit
from usage.models import RateCounter, UsageRecord, UsageRollup
from usage.services import Exchange, usage_record


def old_and_new(key):
    for days in (40, 1):
        exchange = Exchange(method="GET", route="/api/tags", request_id="r", client_addr=None)
        exchange.key, exchange.status = key, 200
        exchange.started_at = timezone.now() - timedelta(days=days)
        usage_record(exchange)


def test_pruneusage_deletes_old_records_in_batches_and_keeps_rollups(user_key):
    key, _ = user_key
    for _ in range(5):
        old_and_new(key)
    rate_limit_hit(key=key, now=timezone.now() - timedelta(days=2))
    out = StringIO()
    call_command("pruneusage", "--older-than", "30", "--batch-size", "2", stdout=out)
    assert "Deleted 5 usage records" in out.getvalue()
    assert UsageRecord.objects.count() == 5
    assert sum(UsageRollup.objects.filter(span="h").values_list("requests", flat=True)) == 10
    assert RateCounter.objects.count() == 0


@pytest.mark.parametrize(
    "args", [["--older-than", "0"], ["--older-than", "5", "--batch-size", "0"], []]
)
def test_pruneusage_rejects_bad_arguments(db, args):
    with pytest.raises(CommandError):
        call_command("pruneusage", *args)
