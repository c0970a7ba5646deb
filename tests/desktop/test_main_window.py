"""The main window: steps, menus, status bar, autosave, and quitting with a job running."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass

import pytest

from core import project as projects
from desktop import jobs
from desktop.main_window import MainWindow
from desktop.steps import STEPS
from desktop.widgets.sidebar import LATER


@dataclass(frozen=True)
class Forever:
    def validate(self) -> list[str]:
        return []


def spin(params: Forever, ctx) -> None:
    while True:
        ctx.progress(0, 0, "spinning")
        time.sleep(0.005)


@pytest.fixture
def window(qtbot):
    win = MainWindow()
    win.show()
    yield win
    # Showing the Load pane starts a short cache scan; let it end on its own (a job that does
    # not end is reported by the no_stray_threads fixture), then close without questions.
    win.runner.wait_all(10_000)
    win.close()
    win.deleteLater()


def test_window_lists_seven_steps_and_the_built_ones_are_enabled(window):
    assert window.sidebar.step_keys() == list(projects.STEPS)
    assert [s.title for s in STEPS] == [
        "Load model", "Inspect weights", "Precision & symmetry", "Calibrate",
        "Fine-tuning method", "Train", "Evaluate",
    ]  # fmt: skip
    built = ["load", "inspect", "precision", "calibrate", "method", "train", "evaluate"]
    assert [k for k in window.sidebar.step_keys() if window.sidebar.is_enabled(k)] == built
    assert all(window.sidebar.tooltip(k) == LATER for k in window.sidebar.step_keys() if k not in built)
    assert window.current_pane() is window.start_screen
    assert window.windowTitle() == "QuantTune"


def test_no_placeholder_panes_exist(window):
    assert set(window.panes) == {"load", "inspect", "precision", "calibrate", "method", "train", "evaluate"}
    assert window.stack.count() == 1 + len(window.panes)  # start screen + the built panes


def test_inspect_step_links_to_load_and_reports_its_status(window):
    pane = window.panes["inspect"]
    window.show_step("inspect")
    assert window.current_pane() is pane and pane.pages.currentIndex() == 0  # no model yet
    pane.go_load_button.click()
    assert window.current_pane() is window.panes["load"] and window.sidebar.current() == "load"
    pane.statusChanged.emit("done", "272 tensors inspected")
    assert window.sidebar.status_text("inspect") == "272 tensors inspected"


def test_new_project_from_the_menu_opens_the_load_step(window, scripted_dialogs):
    scripted_dialogs.answer("ask_text", "Menu project")
    window.new_action.trigger()
    assert window.session.project.name == "Menu project"
    assert window.current_pane() is window.panes["load"]
    assert "Menu project" in window.windowTitle()
    assert "Menu project" in window.project_label.text()
    assert window.sidebar.current() == "load"


def test_file_menu_rename_duplicate_close_and_delete(window, scripted_dialogs):
    project = projects.create_project("Alpha")
    assert window.open_project(project.folder)
    scripted_dialogs.answer("ask_text", "Beta")
    window.rename_action.trigger()
    assert projects.load_project(project.folder).name == "Beta" and "Beta" in window.windowTitle()

    window.duplicate_action.trigger()
    copy = window.session.project
    assert copy.name == "Beta copy" and copy.folder != project.folder

    window.close_action.trigger()
    assert window.session.project is None and window.current_pane() is window.start_screen
    assert not window.rename_action.isEnabled()

    window.open_project(copy.folder)
    scripted_dialogs.answer("confirm", True)
    window.delete_action.trigger()
    assert not copy.folder.exists() and window.session.project is None


def test_open_recent_menu_lists_opened_projects(window):
    project = projects.create_project("Recent one")
    window.open_project(project.folder)
    window.close_project()
    window._fill_recent_menu()
    actions = [a for a in window.recent_menu.actions() if a.data()]
    assert [a.data() for a in actions] == [str(project.folder)]
    actions[0].trigger()
    assert window.session.project.folder == project.folder


def test_opening_a_damaged_project_shows_the_error_on_the_start_screen(window):
    project = projects.create_project("Damaged")
    (project.folder / "project.json").write_text("[1, 2", encoding="utf-8")
    assert window.open_project(project.folder) is False
    assert window.current_pane() is window.start_screen
    assert "damaged" in window.start_screen.error_panel.message.text()


def test_autosave_writes_project_json_atomically_after_an_edit(qtbot, window, monkeypatch):
    project = projects.create_project("Autosave")
    window.open_project(project.folder)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst))[1]
    )
    with qtbot.waitSignal(
        window.session.saveStateChanged, check_params_cb=lambda s: s == "saved", timeout=3000
    ):
        window.session.set_device("cpu")
        assert window.save_label.text() == "Saving…"
    saved = json.loads((project.folder / "project.json").read_text())
    assert saved["load"]["device"] == "cpu"
    target = project.folder / "project.json"
    assert [os.path.dirname(src) for src, dst in replaced if str(dst) == str(target)] == [str(project.folder)]
    assert not list(project.folder.glob(".project.json.*"))  # no temp file left behind
    assert window.save_label.text() == "All changes saved"


def test_project_folder_deleted_while_open_gives_a_clear_message(qtbot, window):
    project = projects.create_project("Vanishing")
    window.open_project(project.folder)
    shutil.rmtree(project.folder)
    with qtbot.waitSignal(window.session.problem, timeout=3000) as blocker:
        window.session.set_device("cpu")
    assert str(project.folder) in blocker.args[0].message
    assert not window.banner.isHidden() and "no longer exists" in window.banner.message.text()
    assert window.save_label.text() == "Not saved!"
    assert window.session.project is not None  # still open: Save As… can rescue it


def test_save_as_rescues_a_project_whose_folder_was_deleted(qtbot, window, scripted_dialogs):
    project = projects.create_project("Rescue")
    window.open_project(project.folder)
    shutil.rmtree(project.folder)
    window.session.set_device("cpu")
    assert window.session.save_now() is False
    scripted_dialogs.answer("ask_text", "Rescued")
    window.save_as_action.trigger()
    rescued = window.session.project
    assert rescued.name == "Rescued" and rescued.load.device == "cpu"
    assert projects.load_project(rescued.folder).load.device == "cpu"
    assert window.banner.isHidden()


def test_devices_fill_the_menu_and_the_status_bar(qtbot, window):
    handle = window.session.detect_devices()
    with qtbot.waitSignal(handle.finished, timeout=60_000):
        pass
    labels = [a.text() for a in window.device_group.actions()]
    assert labels and labels[0].startswith("CPU — ")
    assert window.device_label.text().startswith("CPU — ") and window.device_label.text().endswith("GB")
    checked = [a.data() for a in window.device_group.actions() if a.isChecked()]
    assert checked == [window.session.resolved_device()]


def test_quit_with_a_running_job_asks_and_keeps_working_on_no(qtbot, window, scripted_dialogs):
    handle = window.runner.start(spin, Forever(), name="Spinning job")
    qtbot.waitSignal(handle.progress, timeout=5000).wait()
    scripted_dialogs.answer("confirm", False)
    window.close()
    assert window.isVisible() and handle.running
    assert "Spinning job" in scripted_dialogs.asked[-1][2]
    with qtbot.waitSignal(handle.finished, timeout=2000):
        handle.cancel()


def test_quit_with_a_running_job_cancels_it_cleanly_on_yes(qtbot, window, scripted_dialogs):
    project = projects.create_project("Quitting")
    window.open_project(project.folder)
    handle = window.runner.start(spin, Forever(), name="Spinning job")
    qtbot.waitSignal(handle.progress, timeout=5000).wait()
    window.session.set_device("cpu")  # an edit still waiting for autosave
    scripted_dialogs.answer("confirm", True)
    started = time.monotonic()
    window.close()
    assert time.monotonic() - started < 2.0
    assert not window.isVisible()
    assert not handle.running and jobs.live_thread_count() == 0
    assert projects.load_project(project.folder).load.device == "cpu"  # flushed on close


def test_quit_without_jobs_does_not_ask(window):
    window.close()
    assert not window.isVisible()
