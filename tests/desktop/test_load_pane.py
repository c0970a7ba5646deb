"""The Load pane on tiny real models: load, card, refusals, ask with streaming, cancel."""

from __future__ import annotations

import shutil
import time
from itertools import pairwise

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from core import project as projects
from core.errors import NotAModel, UnsafeModel
from core.models.sources import ModelRef
from desktop.panes.load_pane import REFUSED_FIX, LoadPane
from desktop.session import Session

LOAD_TIMEOUT_MS = 120_000  # the first load in a test run imports transformers


@pytest.fixture
def session(runner):
    return Session(runner)


@pytest.fixture
def pane(qtbot, session):
    widget = LoadPane(session)
    widget.resize(1200, 900)
    widget.show()
    yield widget
    session.runner.wait_all(10_000)  # the cache scan started on show ends by itself
    widget.close()
    widget.deleteLater()


def load_and_wait(qtbot, session, start) -> object:
    """Run ``start()`` (which begins a load) and wait until the load job has finished."""
    with qtbot.waitSignal(session.modelLoading, timeout=5000) as started:
        start()
    handle = started.args[0]
    if handle.running:
        qtbot.waitSignal(handle.finished, timeout=LOAD_TIMEOUT_MS).wait()
    return handle


def test_open_model_folder_loads_it_and_shows_the_card(
    qtbot, pane, session, tiny_model_dir, scripted_dialogs
):
    scripted_dialogs.answer("choose_folder", tiny_model_dir)
    load_and_wait(qtbot, session, pane.folder_button.click)
    assert session.model is not None and session.model.ref.kind == "folder"
    card = pane.card
    assert card.text_of("name") == "tiny-llama"
    assert card.text_of("architecture") == "LlamaForCausalLM"
    assert f"({session.model.model.num_parameters():,})" in card.text_of("parameters")
    assert card.text_of("layers") == "2"
    assert card.text_of("hidden_size") == "32"
    assert card.text_of("vocab_size").endswith("tokens")
    assert card.text_of("dtype") == "float32"
    assert card.text_of("device") == "cpu"
    assert card.text_of("context_length") == "4,096 tokens"
    assert card.memory_text("FP32").endswith("KB") and card.memory_text("INT4").endswith("KB")
    assert "<|assistant|>" in card.template.toPlainText()
    assert "tiny-llama" in pane.learn.html()
    assert pane.error_panel.isHidden() and pane.job_bar.isHidden()
    assert pane.ask_box.ask_button.isEnabled()
    assert [r.name for r in pane.sources.refs("recent")] == ["tiny-llama"]


def test_folder_without_config_is_refused_with_a_clear_message(
    qtbot, pane, session, no_config_dir, scripted_dialogs
):
    scripted_dialogs.answer("choose_folder", no_config_dir)
    load_and_wait(qtbot, session, pane.folder_button.click)
    assert session.model is None
    assert not pane.error_panel.isHidden()
    assert "config.json" in pane.error_panel.message.text()
    assert pane.error_panel.fix.text()
    assert "NotAModel" in pane.error_panel.details.toPlainText()  # traceback behind the toggle


def test_pickle_only_model_is_refused_unless_the_user_allows_it(
    qtbot, pane, session, pickle_model_dir, scripted_dialogs
):
    scripted_dialogs.answer("confirm", False)
    load_and_wait(qtbot, session, lambda: pane.load_path(pickle_model_dir))
    kind, title, question = scripted_dialogs.asked[-1]
    assert kind == "confirm" and "pickle" in question and "weights_only=True" in question
    assert session.model is None
    assert "pickle" in pane.error_panel.message.text()
    assert pane.error_panel.fix.text() == REFUSED_FIX["allow_pickle"]

    scripted_dialogs.answer("confirm", True)
    with qtbot.waitSignal(session.modelChanged, timeout=LOAD_TIMEOUT_MS):
        pane.load_path(pickle_model_dir)  # refused, asked, then loaded again with consent
    assert session.runner.wait_all(10_000)
    assert session.model.card.name == "pickle-llama"
    assert pane.error_panel.isHidden()


def test_model_with_its_own_code_asks_before_running_it(
    qtbot, pane, session, tiny_model_dir, tmp_path, scripted_dialogs
):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "custom-code")
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(
        config.replace("{", '{"auto_map": {"AutoModelForCausalLM": "my_model.Mine"},', 1)
    )
    scripted_dialogs.answer("confirm", False)
    load_and_wait(qtbot, session, lambda: pane.load_path(folder))
    assert "code" in scripted_dialogs.asked[-1][2]
    assert session.model is None
    assert "my_model.py" in pane.error_panel.message.text()
    assert pane.error_panel.fix.text() == REFUSED_FIX["trust_remote_code"]


def test_unknown_path_is_explained_inline(qtbot, pane, tmp_path):
    with qtbot.assertNotEmitted(pane.session.modelLoading):
        assert pane.load_path(tmp_path / "nowhere") is None
    assert "No model" in pane.error_panel.message.text()


def test_dropping_a_folder_loads_it(qtbot, pane, session, tiny_model_dir):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tiny_model_dir))])
    event = QDropEvent(
        QPointF(50, 50),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    load_and_wait(qtbot, session, lambda: pane.dropEvent(event))
    assert session.model.card.name == "tiny-llama"


def test_models_in_the_hugging_face_cache_are_listed_and_load(qtbot, runner, empty_hf_cache, tiny_model_dir):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_cache / "models--tiny-org--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    session = Session(runner)
    pane = LoadPane(session)
    with qtbot.waitSignal(pane.runner.jobsChanged, timeout=5000):
        pane.show()  # the scan starts on first show
    scan = pane._scan_handle
    qtbot.waitSignal(scan.finished, timeout=60_000).wait()
    refs = pane.sources.refs("found")
    assert refs == [ModelRef("hf_cache", "tiny-org/tiny-llama", "tiny-org/tiny-llama")]
    pane.sources.tree.setCurrentItem(pane.sources.found.child(0))
    load_and_wait(qtbot, session, pane.sources.load_button.click)
    assert session.model.ref.kind == "hf_cache"
    assert pane.card.text_of("name") == "tiny-org/tiny-llama"
    pane.close()


def test_ask_streams_the_answer_token_by_token(qtbot, pane, session, tiny_model_dir):
    load_and_wait(qtbot, session, lambda: pane.load_path(tiny_model_dir))
    box = pane.ask_box
    assert box.prompt.text() == "What is the capital of France?"
    box.max_tokens.setValue(24)
    seen = []
    with qtbot.waitSignal(box.answerStarted):
        box.ask_button.click()
    box.handle.event.connect(lambda event: seen.append(box.answer()))
    with qtbot.waitSignal(box.answerFinished, timeout=30_000) as done:
        pass
    assert done.args == ["done"]
    assert len(seen) > 5  # many pieces, each shown as it arrived
    assert all(len(a) < len(b) for a, b in pairwise(seen))  # the text grew piece by piece
    assert box.answer() and box.status.text().startswith("Answered in")


def test_cancel_stops_an_answer_within_a_second(qtbot, pane, session, tiny_model_dir):
    load_and_wait(qtbot, session, lambda: pane.load_path(tiny_model_dir))
    box = pane.ask_box
    box.max_tokens.setValue(2000)
    box.ask_button.click()
    qtbot.waitSignal(box.handle.event, timeout=30_000).wait()  # it is answering
    handle = box.handle
    started = time.monotonic()
    with qtbot.waitSignal(box.answerFinished, timeout=1000) as done:
        box.cancel_button.click()
    assert time.monotonic() - started < 1.0
    assert done.args == ["cancelled"] and not handle.running
    assert box.status.text() == "Stopped." and box.ask_button.isEnabled()


def test_choosing_a_device_is_written_into_the_project(qtbot, pane, session):
    project = projects.create_project("Devices")
    session.open_project(project.folder)
    handle = session.detect_devices()
    qtbot.waitSignal(handle.finished, timeout=60_000).wait()
    assert pane.device_combo.isEnabled() and pane.device_combo.count() >= 1
    assert pane.device_combo.currentText().startswith("CPU — ")
    with qtbot.waitSignal(session.saveStateChanged, check_params_cb=lambda s: s == "saved", timeout=3000):
        pane.device_combo.activated.emit(0)
    assert projects.load_project(project.folder).load.device == "cpu"


def test_opening_a_project_loads_its_saved_model(qtbot, pane, session, tiny_model_dir):
    project = projects.create_project("Saved model")
    project.load.model = ModelRef("folder", str(tiny_model_dir), "tiny-llama").to_dict()
    projects.save_project(project)
    load_and_wait(qtbot, session, lambda: session.open_project(project.folder))
    assert pane.card.text_of("name") == "tiny-llama"
    assert session.apply_project_model() is None  # already loaded: nothing to do


def test_a_new_project_records_the_model_already_loaded(qtbot, pane, session, tiny_model_dir):
    load_and_wait(qtbot, session, lambda: pane.load_path(tiny_model_dir))
    project = session.new_project("Keeps the model")
    assert project.folder == session.project.folder
    assert session.project.load.model["location"] == str(tiny_model_dir)
    assert session.project.step_status["load"] == "done"
    assert session.flush()
    assert projects.load_project(project.folder).load.model["name"] == "tiny-llama"


def test_error_types_are_core_errors():
    # The refusals above are core's own messages, shown as they are.
    assert issubclass(UnsafeModel, Exception) and issubclass(NotAModel, Exception)
