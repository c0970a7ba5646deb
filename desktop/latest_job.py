"""A job that answers the latest request only: a preview the window keeps up to date while the
user edits (the data check, the trainable count, the memory estimate).

Requests are debounced; a request while the job runs starts it once more when it ends, with the
parameters of that moment, so the last answer always matches the last edit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from desktop.jobs import JobHandle, JobRunner


class LatestJob(QObject):
    """Signals: ``started()``, ``succeeded(object)``, ``failed(object, str)`` (exception, traceback).

    ``make_params()`` returns the job's params, or None when there is nothing to run now.
    """

    started = Signal()
    succeeded = Signal(object)
    failed = Signal(object, str)

    def __init__(
        self,
        runner: JobRunner,
        fn: Callable[[Any, Any], Any],
        name: str,
        make_params: Callable[[], Any],
        delay_ms: int = 400,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.runner, self.fn, self.name, self.make_params = runner, fn, name, make_params
        self.handle: JobHandle | None = None
        self._again = False
        self._timer = QTimer(self, singleShot=True, interval=delay_ms)
        self._timer.timeout.connect(self.run_now)

    @property
    def busy(self) -> bool:
        return self.handle is not None or self._again or self._timer.isActive()

    def request(self) -> None:
        self._timer.start()

    @Slot()
    def run_now(self) -> JobHandle | None:
        self._timer.stop()
        if self.handle is not None:
            self._again = True
            return self.handle
        params = self.make_params()
        if params is None:
            return None
        handle = self.runner.start(self.fn, params, name=self.name, owner=self.parent() or self)
        handle.succeeded.connect(self.succeeded)
        handle.failed.connect(self.failed)
        handle.finished.connect(self._on_finished)
        self.handle = handle
        self.started.emit()
        return handle

    @Slot()
    def _on_finished(self) -> None:
        self.handle = None
        if self._again:
            self._again = False
            self.run_now()
