"""The Session: debounced autosave, device choice, and the PySide6 signal guard."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from core import project as projects
from core import settings as app_settings
from desktop import session as session_module
from desktop.session import Session


def test_a_burst_of_edits_is_saved_once(qtbot, runner, monkeypatch):
    session = Session(runner)
    project = projects.create_project("Burst")
    session.open_project(project.folder)
    writes = []
    real_save = projects.save_project
    monkeypatch.setattr(session_module.projects, "save_project", lambda p: (writes.append(p), real_save(p)))
    with qtbot.waitSignal(session.saveStateChanged, check_params_cb=lambda s: s == "saved", timeout=3000):
        for note in range(10):
            session.project.notes = f"edit {note}"
            session.mark_dirty()
    assert len(writes) == 1
    assert projects.load_project(project.folder).notes == "edit 9"


def test_device_choice_without_a_project_goes_to_the_app_settings(runner):
    session = Session(runner)
    session.set_device("cpu")
    assert session.device == "cpu"
    assert app_settings.load_settings().last_device == "cpu"


def test_closing_a_project_flushes_pending_edits(runner):
    session = Session(runner)
    project = projects.create_project("Flush")
    session.open_project(project.folder)
    session.project.notes = "keep me"
    session.mark_dirty()
    session.close_project()
    assert projects.load_project(project.folder).notes == "keep me"
    assert session.save_state == "none"


class _Pinger(QObject):
    ping = Signal(object)


def test_many_signal_emits_do_not_exhaust_true(qtbot):
    """PySide6 6.12.0 drops a reference to True per emit and aborts Python < 3.12 within a
    thousand emits (hence the pin in pyproject.toml); a streamed answer emits that many."""
    pinger = _Pinger()
    received = []
    pinger.ping.connect(received.append)
    for i in range(20_000):
        pinger.ping.emit(i)
    assert len(received) == 20_000
