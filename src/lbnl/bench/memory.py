"""Resident memory of this process: current RSS, available memory and a peak meter.

Read from ``/proc`` (0 or ``None`` where it is missing) so the bench needs no extra package. The peak
of a call is what matters, not its end state: Linux keeps it (``VmHWM``) and lets a process reset it
(``/proc/self/clear_refs``), which is exact and costs nothing while the call runs. Where that is not
allowed, a thread samples the RSS every few milliseconds; on a bench pinned to one core that thread
shares the core with the timed call (it slowed a 12 s rerank call by 5-7%), so it is the fallback only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def mem_available() -> int | None:
    """Bytes the kernel reports as available to new allocations (``MemAvailable``), or ``None``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> int:
    """This process's resident memory in bytes (0 where ``/proc`` is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _high_water_mark() -> int | None:
    """This process's peak resident memory in bytes since start or the last :func:`_reset_high_water_mark`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS; whether that was allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _high_water_mark() is not None
    except OSError:
        return False


class RssPeak:
    """This process's peak resident memory while active: the kernel's own high-water mark, reset on entry,
    or a thread sampling every few milliseconds where the reset is not allowed."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak = 0
        self.sampled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "RssPeak":
        self.before = self.peak = rss()
        self.sampled = not _reset_high_water_mark()
        if self.sampled:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self.sampled:
            self.peak = max(self.peak, _high_water_mark() or 0)
        self.peak = max(self.peak, rss())
