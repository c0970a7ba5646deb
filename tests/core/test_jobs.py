"""The job shape: validation lists every problem, progress carries an ETA, cancel is honoured."""

import threading
import time
from dataclasses import dataclass

import pytest

from core.errors import Cancelled, InvalidSettings
from core.jobs import JobContext, run_job


@dataclass(frozen=True)
class CountParams:
    steps: int
    step_s: float = 0.0

    def validate(self):
        problems = []
        if self.steps <= 0:
            problems.append("steps must be positive")
        if self.step_s < 0:
            problems.append("step_s must not be negative")
        return problems


def count(params, ctx):
    for i in range(params.steps):
        time.sleep(params.step_s)
        ctx.progress(i + 1, params.steps, "counting")
    return params.steps


def test_every_problem_is_listed_at_once():
    with pytest.raises(InvalidSettings) as info:
        run_job(count, CountParams(steps=0, step_s=-1), JobContext())
    assert len(info.value.problems) == 2


def test_progress_events_carry_eta():
    events = []
    assert run_job(count, CountParams(steps=4, step_s=0.01), JobContext(events.append)) == 4
    progress = [e.data for e in events if e.kind == "progress"]
    assert [p["done"] for p in progress] == [1, 2, 3, 4]
    assert progress[0]["eta_s"] > 0 and progress[-1]["eta_s"] == 0


def test_cancel_from_another_thread_stops_within_a_step():
    ctx = JobContext()
    timer = threading.Timer(0.1, ctx.cancel)
    timer.start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_job(count, CountParams(steps=10_000, step_s=0.01), ctx)
    assert time.monotonic() - started < 1.0
