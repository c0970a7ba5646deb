"""Measure a process's anonymous memory (RssAnon): the part a memory-mapped file does not count.

Used by the streaming-memory benchmark and test to show that inspecting a checkpoint costs memory
near its largest tensor, not its size. Linux only (reads /proc/self/status).
"""

from __future__ import annotations

import threading
from pathlib import Path

STATUS = Path("/proc/self/status")


def rss_anon_bytes() -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise OSError("RssAnon not reported by /proc/self/status")


class PeakSampler:
    """Samples RssAnon every ``interval_s`` on a background thread; ``peak`` is the highest seen."""

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.baseline = rss_anon_bytes()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_anon_bytes())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline
