"""What the harness reads from the machine (/proc): facts for the report, process memory and CPU.

No psutil: everything here is a line or two of /proc.
"""

import os
import platform
import resource
import threading
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (never past the hard limit).

    Children started afterwards (the fake, gunicorn) inherit it. Returns (soft, hard).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def listen_backlog_cap() -> int:
    """net.core.somaxconn: the kernel's cap on any listen backlog (gunicorn's, the fake's)."""
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def machine() -> dict:
    """The facts a reader needs to compare figures: cores, memory, CPU model, Python, kernel."""
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kb = _status_kb(Path("/proc/meminfo").read_text(), "MemTotal")
    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the machine was apart from the benchmark."""
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (gunicorn's workers, for its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses: parse after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def rss_mib(pid: int) -> float | None:
    """VmRSS of `pid` in MiB, or None if it is gone."""
    try:
        kb = _status_kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS")
    except OSError:
        return None
    return None if kb is None else round(kb / 1024, 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _status_kb(text: str, name: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return None


class RssSampler:
    """Samples VmRSS of a gunicorn master's workers in a thread; keeps each worker's peak.

    Use as a context manager around the load: `peaks` maps worker pid to MiB.
    """

    def __init__(self, master_pid: int, interval: float = 0.25):
        self.master_pid = master_pid
        self.interval = interval
        self.peaks: dict[int, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self.samples += 1
        for pid in children(self.master_pid):
            rss = rss_mib(pid)
            if rss is not None:
                self.peaks[pid] = max(rss, self.peaks.get(pid, 0.0))
