"""The long run behind `make soak` (skipped otherwise): a mixed load for SOAK_SECONDS through
two gateway processes, then records must equal requests and worker memory must stay flat."""

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from usage.models import UsageRecord

SECONDS = float(os.environ.get("SOAK_SECONDS", "0"))

pytestmark = pytest.mark.skipif(not SECONDS, reason="set SOAK_SECONDS (make soak)")


def worker_rss_kb() -> int:
    """Resident memory of every gunicorn worker on this machine, summed (kB)."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            cmdline = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"gunicorn" in cmdline and "VmRSS" in text:
            total += int(text.split("VmRSS:")[1].split()[0])
    return total


def test_soak(served_pair, fake_ollama_server, make_key):
    _, raw = make_key(rate_limit=10**9)
    limited, limited_raw = make_key(rate_limit=50)
    fake_ollama_server.configure(tokens=10, token_delay=0.005)
    deadline = time.monotonic() + SECONDS
    rng = random.Random(7)

    def one(i):
        base = served_pair[i % 2]
        kind = rng.choice(["ok", "stream", "disconnect", "missing", "limited"])
        key = limited_raw if kind == "limited" else raw
        model = "no-such-model" if kind == "missing" else "llama3.2"
        with requests.post(
            f"{base}/api/generate",
            json={"model": model, "prompt": "soak", "stream": kind in ("stream", "disconnect")},
            headers={"Authorization": f"Bearer {key}"},
            stream=True,
            timeout=30,
        ) as response:
            lines = response.iter_lines()
            if kind == "disconnect" and response.ok:
                next(lines)
            else:
                for _ in lines:
                    pass
        return kind, response.status_code

    sent, memory = [], []
    with ThreadPoolExecutor(max_workers=16) as pool:
        while time.monotonic() < deadline:
            sent += list(pool.map(one, range(len(sent), len(sent) + 200)))
            memory.append(worker_rss_kb())
    time.sleep(1)
    assert UsageRecord.objects.count() == len(sent)
    assert all(status in (200, 404, 429) for _, status in sent)
    assert UsageRecord.objects.filter(key=limited, status=200).count() <= 50
    # No growth from the first quarter of the run to the end, beyond noise.
    if len(memory) >= 4:
        assert memory[-1] < memory[len(memory) // 4] * 1.25
