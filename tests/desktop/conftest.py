"""Fixtures for the desktop suite: offscreen Qt, a private QUANTTUNE_HOME, scripted dialogs,
and a check that no test leaves a job thread running."""

from __future__ import annotations

import gc
import os
from collections import defaultdict, deque

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["QUANTTUNE_NO_AUTOLOAD"] = "1"
# Read once, at import, by huggingface_hub and transformers: nothing may reach the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

from desktop import dialogs, jobs  # noqa: E402
from desktop.gui_gc import GuiThreadCollector  # noqa: E402


@pytest.fixture(autouse=True)
def quanttune_home(tmp_path, monkeypatch):
    """Every test gets its own data and cache folders."""
    home = tmp_path / "qt-home"
    monkeypatch.setenv("QUANTTUNE_HOME", str(home))
    return home


@pytest.fixture(scope="session", autouse=True)
def gui_thread_gc(qapp):
    """As in the app: cycles are collected in the GUI thread only (see desktop.gui_gc)."""
    collector = GuiThreadCollector()
    yield collector
    collector.stop()


@pytest.fixture(autouse=True)
def no_stray_threads(qapp, gui_thread_gc):
    """Fail a test that leaves a job thread running (it would abort the process later)."""
    yield
    gc.collect()  # the test's widgets die here, in the GUI thread, not in a later job thread
    left = jobs.live_thread_count()
    if left == 0:
        return
    for runner in jobs.JobRunner.instances():
        runner.cancel_all()
        runner.wait_all(10_000)
    pytest.fail(f"{left} job thread(s) still running when the test ended")


class ScriptedDialogs:
    """Answers modal dialogs from queued answers; an unexpected dialog fails the test."""

    def __init__(self) -> None:
        self.answers: dict[str, deque] = defaultdict(deque)
        self.asked: list[tuple[str, str, str]] = []

    def answer(self, kind: str, *values) -> None:
        self.answers[kind].extend(values)

    def fake(self, kind: str):
        def reply(parent, title, text="", *args, **kwargs):
            self.asked.append((kind, title, text))
            if not self.answers[kind]:
                raise AssertionError(f"unexpected {kind} dialog: {title!r} {text!r}")
            return self.answers[kind].popleft()

        return reply


@pytest.fixture(autouse=True)
def scripted_dialogs(monkeypatch):
    fake = ScriptedDialogs()
    for kind in ("confirm", "ask_text", "choose_folder", "choose_file", "choose_save_file", "show_error"):
        monkeypatch.setattr(dialogs, kind, fake.fake(kind))
    return fake


@pytest.fixture
def runner(qapp):
    return jobs.JobRunner()


# -- tiny models -----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def empty_hf_cache(tmp_path, monkeypatch):
    """The Load pane scans the Hugging Face cache: give it an empty, private one."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tests import tiny_models

    return tiny_models.save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def pickle_model_dir(tmp_path_factory):
    from tests import tiny_models

    return tiny_models.save_pickle_only_model(tmp_path_factory.mktemp("models") / "pickle-llama")


@pytest.fixture(scope="session")
def no_config_dir(tmp_path_factory):
    from tests import tiny_models

    return tiny_models.save_folder_without_config(tmp_path_factory.mktemp("models") / "no-config")


# -- panes -------------------------------------------------------------------------------------
@pytest.fixture
def session(runner):
    from desktop.session import Session

    return Session(runner)


@pytest.fixture
def open_pane(qtbot, session):
    """``open_pane(PaneClass, (w, h))``: the pane on this test's session, shown; on teardown its
    jobs are cancelled and waited for, then it is closed."""
    opened = []

    def open_(cls, size=(1200, 900)):
        widget = cls(session)
        widget.resize(*size)
        widget.show()
        opened.append(widget)
        return widget

    yield open_
    session.runner.cancel_all()
    session.runner.wait_all(10_000)
    for widget in opened:
        widget.close()
        widget.deleteLater()
