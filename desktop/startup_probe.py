"""For benchmarks/startup.py: report when the main window has first been painted, then quit.

Enabled by the environment variable QUANTTUNE_STARTUP_PROBE=1; prints ``painted <unix time>``.
"""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtWidgets import QApplication, QWidget

ENV = "QUANTTUNE_STARTUP_PROBE"


class _FirstPaint(QObject):
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Paint:
            watched.removeEventFilter(self)
            # After the paint event has been handled, not merely delivered.
            QTimer.singleShot(0, self._report)
        return False

    def _report(self) -> None:
        print(f"painted {time.time():.6f}", flush=True)
        QApplication.quit()


def install_if_requested(window: QWidget) -> None:
    if os.environ.get(ENV) == "1":
        probe = _FirstPaint(window)
        window.installEventFilter(probe)
