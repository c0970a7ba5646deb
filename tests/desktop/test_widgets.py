"""The small shared widgets: job bar, error panel, learn panel, sidebar, formatting."""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.errors import ModelNotFound
from desktop import formatting
from desktop.widgets.error_panel import BUG_FIX, ErrorPanel
from desktop.widgets.job_bar import JobBar
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.sidebar import LATER, Sidebar, SidebarStep


@dataclass(frozen=True)
class Ticks:
    n: int

    def validate(self) -> list[str]:
        return []


def ticking(params: Ticks, ctx) -> int:
    for i in range(params.n):
        ctx.progress(i + 1, params.n, "ticking")
        time.sleep(0.01)
    return params.n


def spinning(params: Ticks, ctx) -> None:
    while True:
        ctx.progress(1, 1000, "spinning")
        time.sleep(0.005)


def test_job_bar_follows_a_job_and_hides_when_it_ends(qtbot, runner):
    bar = JobBar()
    qtbot.addWidget(bar)
    handle = runner.start(ticking, Ticks(30), name="Ticking")
    bar.bind(handle)
    assert not bar.isHidden() and bar.message.text() == "Ticking…"
    qtbot.waitSignal(handle.progress, timeout=5000).wait()
    assert bar.bar.maximum() > 0
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    assert bar.isHidden() and bar.handle is None


def test_job_bar_cancel_button_cancels_the_job(qtbot, runner):
    bar = JobBar()
    qtbot.addWidget(bar)
    handle = runner.start(spinning, Ticks(0), name="Spinning")
    bar.bind(handle)
    qtbot.waitSignal(handle.progress, timeout=5000).wait()
    with qtbot.waitSignals([handle.cancelled, handle.finished], timeout=1000):
        bar.cancel_button.click()
    assert bar.isHidden()


def test_error_panel_shows_message_fix_and_details_on_demand(qtbot):
    panel = ErrorPanel()
    qtbot.addWidget(panel)
    panel.show_error(ModelNotFound("No model at /x.", "Pick another folder."), "Traceback: here")
    assert panel.message.text() == "No model at /x."
    assert panel.fix.text() == "Pick another folder."
    assert panel.details.isHidden()
    panel.details_button.click()
    assert not panel.details.isHidden() and "Traceback" in panel.details.toPlainText()
    with qtbot.waitSignal(panel.dismissed):
        panel.dismiss_button.click()
    assert panel.isHidden()


def test_error_panel_names_unexpected_errors_as_bugs(qtbot):
    panel = ErrorPanel()
    qtbot.addWidget(panel)
    panel.show_error(ZeroDivisionError("division by zero"))
    assert panel.message.text() == "ZeroDivisionError: division by zero"
    assert panel.fix.text() == BUG_FIX
    assert panel.details_button.isHidden()  # no traceback given, no toggle


def test_learn_panel_renders_the_step_text_and_fills_in_numbers(qtbot):
    panel = LearnPanel("load")
    qtbot.addWidget(panel)
    assert "memory" in panel.html().lower()
    assert not panel.section.is_expanded()
    panel.section.button.click()
    assert panel.section.is_expanded() and not panel.browser.isHidden()
    panel.set_numbers({"name": "tiny", "parameters": 1000, "memory_bytes": {"FP32": 4000, "INT8": 1032}})
    assert "tiny" in panel.html() and "4.0 KB" in panel.html()


def test_sidebar_disables_steps_that_are_not_built(qtbot):
    bar = Sidebar([SidebarStep("load", "Load model", True), SidebarStep("train", "Train", False)])
    qtbot.addWidget(bar)
    assert bar.is_enabled("load") and not bar.is_enabled("train")
    assert bar.tooltip("train") == LATER
    with qtbot.assertNotEmitted(bar.stepChosen):
        assert bar.choose("train") is False
    with qtbot.waitSignal(bar.stepChosen) as blocker:
        assert bar.choose("load")
    assert blocker.args == ["load"] and bar.current() == "load"
    bar.set_status("load", "done", "tiny-llama")
    assert bar.status_text("load") == "tiny-llama"


def test_formatting():
    assert formatting.format_eta(None) == ""
    assert formatting.format_eta(12.4) == "about 12 s left"
    assert formatting.format_eta(150) == "about 2 min left"
    assert formatting.format_count(134_515_008) == "134.5 M"

    @dataclass
    class Device:
        name: str
        total_memory_bytes: int | None
        kind: str

    assert formatting.format_device(Device("Intel Xeon", 24 * 2**30, "cpu")) == "CPU — 24 GB"
    assert formatting.format_device(Device("NVIDIA H100", 80 * 2**30, "cuda")) == "NVIDIA H100 — 80 GB"
    assert formatting.format_device(Device("NVIDIA X", None, "cuda")) == "NVIDIA X"
