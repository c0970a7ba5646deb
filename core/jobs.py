"""The one shape of every long job: ``run(params, ctx) -> result``.

``params`` is a frozen dataclass with ``validate() -> list[str]``; ``ctx`` is a
:class:`JobContext` that reports progress, metrics and other events to whoever runs the job
(the desktop job runner or the CLI) and carries a thread-safe cancel flag that the job checks
at every step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import Cancelled, InvalidSettings


@dataclass(frozen=True)
class JobEvent:
    """One report from a running job.

    kind: "progress" (data: done, total, message, eta_s), "metric" (data: name, value, step),
    "log" (data: message) or a job-specific kind such as "token".
    """

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


EventSink = Callable[[JobEvent], None]


class Params(Protocol):
    def validate(self) -> list[str]: ...


class JobContext:
    """Progress reporting and cooperative cancellation for one job run.

    Safe to call from the worker thread; ``cancel()`` is safe from any thread.
    """

    def __init__(self, sink: EventSink | None = None) -> None:
        self._sink = sink
        self._cancel = threading.Event()
        self._started = time.monotonic()
        self._stage_started = self._started

    # -- cancellation -------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Cancelled` if the user asked to stop; call it at every step."""
        if self._cancel.is_set():
            raise Cancelled()

    # -- reporting ----------------------------------------------------------------------
    def emit(self, kind: str, **data: Any) -> None:
        if self._sink is not None:
            self._sink(JobEvent(kind, data))

    def stage(self, message: str) -> None:
        """Start a new phase: progress and ETA restart from zero."""
        self._stage_started = time.monotonic()
        self.emit("progress", done=0, total=0, message=message, eta_s=None)

    def progress(self, done: float, total: float, message: str = "") -> None:
        """Report ``done`` of ``total`` units in the current stage (total 0: unknown)."""
        self.check_cancelled()
        self.emit("progress", done=done, total=total, message=message, eta_s=self._eta(done, total))

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self.emit("metric", name=name, value=value, step=step)

    def log(self, message: str) -> None:
        self.emit("log", message=message)

    def _eta(self, done: float, total: float) -> float | None:
        if total <= 0 or done <= 0:
            return None
        elapsed = time.monotonic() - self._stage_started
        return max(0.0, elapsed * (total - done) / done)


def run_job(job: Callable[[Any, JobContext], Any], params: Params, ctx: JobContext) -> Any:
    """Validate ``params`` (all problems at once), then run the job."""
    problems = params.validate()
    if problems:
        raise InvalidSettings(problems)
    ctx.check_cancelled()
    return job(params, ctx)
