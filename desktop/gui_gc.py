"""Run Python's cycle collector only in the GUI thread.

Automatic collection runs in whichever thread happens to allocate; in a job thread it may
free a cycle that holds a widget, and a QWidget destroyed outside the GUI thread crashes the
process. So automatic collection is switched off and a timer in the GUI thread collects
instead, generation by generation as the automatic collector would.

pyqtgraph.util.garbage_collector does the same, but importing pyqtgraph costs over a second
before the window can show; this is the same technique in a few lines.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer, Slot

INTERVAL_MS = 1000


class GuiThreadCollector(QObject):
    def __init__(self, interval_ms: int = INTERVAL_MS, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.threshold = gc.get_threshold()
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.check)
        gc.disable()
        self.timer.start(interval_ms)

    @Slot()
    def check(self) -> None:
        """Collect the generations whose allocation counts passed their thresholds."""
        counts = gc.get_count()
        for generation in range(3):
            if counts[generation] <= self.threshold[generation]:
                break
            gc.collect(generation)

    def stop(self) -> None:
        self.timer.stop()
        gc.enable()
