"""The one job runner: every QThread in the app is created, watched and torn down here.

Panes call ``runner.start(core_job, params)`` and get a :class:`JobHandle`, a QObject that lives
in the GUI thread and re-emits what the job reports. The job itself runs through
``core.jobs.run_job`` in a worker QObject moved to its own QThread. The worker's signals are
connected only to slots of the handle (a GUI-thread object), so Qt queues them into the GUI
thread; a lambda connected to a worker signal would run in the worker thread instead
(ARCHITECTURE.md practice 3).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QEventLoop, QObject, QThread, QTimer, Signal, Slot

from core.errors import Cancelled
from core.jobs import JobContext, JobEvent, run_job

log = logging.getLogger(__name__)

# Threads started and not yet torn down, over every runner: the test suite fails a test that
# leaves one behind, since a QThread destroyed while running aborts the process.
_live_threads = 0


def live_thread_count() -> int:
    return _live_threads


@dataclass(frozen=True)
class NoParams:
    """Params for jobs that take none (device detection, cache scan)."""

    def validate(self) -> list[str]:
        return []


class _ProgressMailbox:
    """Holds only the newest progress report, so a job reporting thousands of steps a second
    cannot flood the GUI's event queue; at most one delivery is queued at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None

    def put(self, data: dict[str, Any]) -> bool:
        """Store ``data``; True when the reader must be notified (nothing was waiting)."""
        with self._lock:
            was_empty = self._latest is None
            self._latest = data
            return was_empty

    def take(self) -> dict[str, Any] | None:
        with self._lock:
            data, self._latest = self._latest, None
            return data


class _Worker(QObject):
    """Runs one job in the worker thread; talks outward only through its signals."""

    progressReady = Signal()
    event = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object, str)
    cancelled = Signal()
    done = Signal()

    def __init__(self, fn: Callable[[Any, JobContext], Any], params: Any, mailbox: _ProgressMailbox) -> None:
        super().__init__()
        self._fn, self._params, self._mailbox = fn, params, mailbox
        self.ctx = JobContext(self._sink)

    def _sink(self, event: JobEvent) -> None:
        # Called by the job in the worker thread; signals carry the event to the GUI thread.
        if event.kind == "progress":
            if self._mailbox.put(dict(event.data)):
                self.progressReady.emit()
        else:
            self.event.emit(event)

    @Slot()
    def run(self) -> None:
        try:
            result = run_job(self._fn, self._params, self.ctx)
        except Cancelled:
            self.cancelled.emit()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the user
            self.failed.emit(exc, traceback.format_exc())
        else:
            if self.ctx.cancelled:
                # The job finished its last step after Cancel was pressed: the user asked to
                # stop, so the result is not applied.
                self.cancelled.emit()
            else:
                self.succeeded.emit(result)
        finally:
            self._fn = self._params = None  # release big objects (models) with the job
            self.done.emit()


class JobHandle(QObject):
    """What a pane holds for one running job; lives in the GUI thread.

    Signals, all delivered in the GUI thread: ``progress(dict)`` (done, total, message, eta_s;
    coalesced), ``event(JobEvent)`` for every other kind ("token", "metric", "log"; never
    dropped), then exactly one of ``succeeded(result)``, ``failed(exc, traceback)``,
    ``cancelled()``, and ``finished()`` always last.
    """

    progress = Signal(dict)
    event = Signal(object)
    succeeded = Signal(object)
    failed = Signal(object, str)
    cancelled = Signal()
    finished = Signal()

    def __init__(
        self, runner: JobRunner, name: str, owner: QObject | None, ctx: JobContext, mailbox: _ProgressMailbox
    ) -> None:
        super().__init__()
        self.name = name
        self.owner = owner
        self._runner = runner
        self._ctx = ctx
        self._mailbox = mailbox
        self._started = time.monotonic()
        self._ended: float | None = None
        self._running = True
        self.background = False
        self.last_progress: dict[str, Any] = {}

    # -- public -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask the job to stop; it ends with ``cancelled()`` at its next step."""
        self._ctx.cancel()

    @property
    def cancel_requested(self) -> bool:
        return self._ctx.cancelled

    @property
    def running(self) -> bool:
        return self._running

    @property
    def elapsed(self) -> float:
        """Seconds since the job started (frozen once it finished)."""
        end = self._ended if self._ended is not None else time.monotonic()
        return end - self._started

    # -- slots, run in the GUI thread ------------------------------------------------------
    @Slot()
    def _deliver_progress(self) -> None:
        data = self._mailbox.take()
        if data is not None:
            self.last_progress = data
            self.progress.emit(data)

    @Slot(object)
    def _deliver_event(self, event: JobEvent) -> None:
        self.event.emit(event)

    @Slot(object)
    def _deliver_success(self, result: Any) -> None:
        self.succeeded.emit(result)

    @Slot(object, str)
    def _deliver_failure(self, exc: BaseException, tb: str) -> None:
        self.failed.emit(exc, tb)

    @Slot()
    def _deliver_cancelled(self) -> None:
        self.cancelled.emit()

    @Slot()
    def _thread_ended(self) -> None:
        self._deliver_progress()  # a last report may still sit in the mailbox
        self._running = False
        self._ended = time.monotonic()
        self._runner._teardown(self)
        self.finished.emit()


class JobRunner(QObject):
    """Starts jobs in QThreads and tears the threads down when they finish."""

    jobsChanged = Signal()  # a job started or finished
    _instances: weakref.WeakSet[JobRunner] = weakref.WeakSet()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        JobRunner._instances.add(self)
        # handle -> (thread, worker): kept referenced until the thread has really ended.
        self._jobs: dict[JobHandle, tuple[QThread, _Worker]] = {}

    def start(
        self,
        fn: Callable[[Any, JobContext], Any],
        params: Any,
        name: str = "Job",
        owner: QObject | None = None,
        background: bool = False,
    ) -> JobHandle:
        """Run ``fn(params, ctx)`` in a new thread; returns the handle at once.

        ``background``: housekeeping the user did not ask for (device detection, a cache
        scan); quitting cancels it without asking.
        """
        global _live_threads
        mailbox = _ProgressMailbox()
        worker = _Worker(fn, params, mailbox)
        handle = JobHandle(self, name, owner, worker.ctx, mailbox)
        handle.background = background
        thread = QThread()
        thread.setObjectName(f"job: {name}")
        worker.moveToThread(thread)
        self._wire(handle, worker, thread)
        self._jobs[handle] = (thread, worker)
        _live_threads += 1
        thread.start()
        self.jobsChanged.emit()
        return handle

    def _wire(self, handle: JobHandle, worker: _Worker, thread: QThread) -> None:
        # Every receiver below is a method of a QObject living in the GUI thread (the handle,
        # the runner) or of the worker in its own thread: never a free function or lambda.
        thread.started.connect(worker.run)
        worker.progressReady.connect(handle._deliver_progress)
        worker.event.connect(handle._deliver_event)
        worker.succeeded.connect(handle._deliver_success)
        worker.failed.connect(handle._deliver_failure)
        worker.cancelled.connect(handle._deliver_cancelled)
        worker.done.connect(thread.quit)
        # The worker lives in the ending thread: Qt deletes it there as the thread finishes.
        thread.finished.connect(worker.deleteLater)
        thread.finished.connect(handle._thread_ended)

    def _teardown(self, handle: JobHandle) -> None:
        global _live_threads
        thread, _worker = self._jobs.pop(handle)
        thread.wait()  # finished() fires just before the thread really ends
        thread.deleteLater()
        _live_threads -= 1
        self.jobsChanged.emit()

    @classmethod
    def instances(cls) -> list[JobRunner]:
        """Every runner still alive (the tests stop leftovers through this)."""
        return list(cls._instances)

    def active(self) -> list[JobHandle]:
        return list(self._jobs)

    def cancel_all(self, owner: QObject | None = None) -> None:
        """Ask every job (or every job of ``owner``) to stop."""
        for handle in self._jobs:
            if owner is None or handle.owner is owner:
                handle.cancel()

    def wait_all(self, timeout_ms: int = 5000) -> bool:
        """Wait, serving the GUI's events, until no job runs; False if some still run."""
        if not self._jobs:
            return True
        loop = QEventLoop()
        self.jobsChanged.connect(loop.quit)
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        timer.start(max(0, timeout_ms))
        try:
            while self._jobs and timer.isActive():
                loop.exec()
        finally:
            timer.stop()
            self.jobsChanged.disconnect(loop.quit)
        if self._jobs:
            log.warning("Jobs still running after %d ms: %s", timeout_ms, [h.name for h in self._jobs])
        return not self._jobs
