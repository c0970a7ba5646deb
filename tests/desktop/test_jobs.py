"""The job runner: results, failures with tracebacks, fast cancel, GUI-thread delivery."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
from PySide6.QtCore import QThread
from PySide6.QtWidgets import QApplication

from core.errors import InvalidSettings, ModelNotFound
from desktop import jobs


@dataclass(frozen=True)
class Steps:
    n: int
    pause_s: float = 0.0

    def validate(self) -> list[str]:
        return [] if self.n >= 0 else ["n must not be negative"]


def count(params: Steps, ctx) -> int:
    for i in range(params.n):
        time.sleep(params.pause_s)
        ctx.progress(i + 1, params.n, f"step {i + 1}")
    return params.n


def spam_tokens(params: Steps, ctx) -> int:
    for i in range(params.n):
        ctx.progress(i + 1, params.n)
        ctx.emit("token", text=f"t{i} ")
    return params.n


def fail(params: Steps, ctx) -> None:
    raise ModelNotFound("No model at /nowhere.", "Pick another folder.")


def loop_forever(params: Steps, ctx) -> None:
    while True:
        ctx.progress(0, 0, "spinning")
        time.sleep(0.001)


class Recorder:
    """Records what a handle emits, and in which thread each slot ran."""

    def __init__(self, handle: jobs.JobHandle) -> None:
        self.seen: list[str] = []
        self.threads: set = set()
        self.progress: list[dict] = []
        self.tokens: list[str] = []
        self.result = self.error = self.traceback = None
        handle.progress.connect(self.on_progress)
        handle.event.connect(self.on_event)
        handle.succeeded.connect(self.on_success)
        handle.failed.connect(self.on_failure)
        handle.cancelled.connect(lambda: self.note("cancelled"))
        handle.finished.connect(lambda: self.note("finished"))

    def note(self, what: str) -> None:
        self.seen.append(what)
        self.threads.add(QThread.currentThread())

    def on_progress(self, data: dict) -> None:
        self.progress.append(data)
        self.note("progress")

    def on_event(self, event) -> None:
        if event.kind == "token":
            self.tokens.append(event.data["text"])
        self.note("event")

    def on_success(self, result) -> None:
        self.result = result
        self.note("succeeded")

    def on_failure(self, exc, tb: str) -> None:
        self.error, self.traceback = exc, tb
        self.note("failed")


def test_success_delivers_result_and_progress_in_the_gui_thread(qtbot, runner):
    handle = runner.start(count, Steps(50), name="count")
    rec = Recorder(handle)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert rec.result == 50
    assert rec.seen[-2:] == ["succeeded", "finished"]
    assert rec.progress[-1]["done"] == 50  # coalesced, but the last report always arrives
    assert rec.threads == {QApplication.instance().thread()}
    assert not handle.running and handle.elapsed > 0
    assert runner.active() == []


def test_failure_carries_the_error_and_its_traceback(qtbot, runner):
    handle = runner.start(fail, Steps(1))
    rec = Recorder(handle)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert isinstance(rec.error, ModelNotFound)
    assert rec.error.fix == "Pick another folder."
    assert "def fail" in rec.traceback or "in fail" in rec.traceback
    assert rec.seen[-2:] == ["failed", "finished"]


def test_invalid_params_fail_before_the_job_runs(qtbot, runner):
    handle = runner.start(count, Steps(-1))
    rec = Recorder(handle)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert isinstance(rec.error, InvalidSettings)


def test_cancel_stops_a_looping_job_within_a_second(qtbot, runner):
    handle = runner.start(loop_forever, Steps(0), name="spin")
    rec = Recorder(handle)
    qtbot.waitSignal(handle.progress, timeout=5000).wait()
    started = time.monotonic()
    with qtbot.waitSignal(handle.finished, timeout=1000):
        handle.cancel()
    assert time.monotonic() - started < 1.0
    assert rec.seen[-2:] == ["cancelled", "finished"]
    assert rec.result is None and rec.error is None


def test_token_events_are_never_dropped(qtbot, runner):
    handle = runner.start(spam_tokens, Steps(2000))
    rec = Recorder(handle)
    with qtbot.waitSignal(handle.finished, timeout=10_000):
        pass
    assert rec.tokens == [f"t{i} " for i in range(2000)]
    assert len(rec.progress) <= 2000


def test_cancel_all_and_wait_all_end_every_job(qtbot, runner):
    handles = [runner.start(loop_forever, Steps(0), name=f"spin {i}") for i in range(3)]
    for handle in handles:
        if not handle.last_progress:
            qtbot.waitSignal(handle.progress, timeout=5000).wait()
    assert len(runner.active()) == 3
    runner.cancel_all()
    assert runner.wait_all(2000)
    assert runner.active() == [] and jobs.live_thread_count() == 0


def test_wait_all_reports_a_job_that_will_not_stop(qtbot, runner):
    handle = runner.start(count, Steps(40, pause_s=0.01))
    assert runner.wait_all(0) is False
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert runner.wait_all(0) is True


@pytest.mark.parametrize("owner_matches", [True, False])
def test_cancel_all_can_target_one_owner(qtbot, runner, owner_matches):
    owner, other = jobs.JobRunner(), jobs.JobRunner()
    handle = runner.start(loop_forever, Steps(0), owner=owner)
    qtbot.waitSignal(handle.progress, timeout=5000).wait()
    runner.cancel_all(owner if owner_matches else other)
    assert handle.cancel_requested is owner_matches
    handle.cancel()
    with qtbot.waitSignal(handle.finished, timeout=2000):
        pass
