"""The Train pane offscreen on a tiny model: the estimate before Start, a run with live plots that
is stopped, resumed from its checkpoint and finished, the trained model asked at once, and the
run's history and checkpoints shown again after a restart (an interrupted run too)."""

from __future__ import annotations

import pytest

from core import project as projects
from core.finetune import runs
from core.models import sources
from desktop.panes.train_pane import TrainPane
from desktop.session import Session
from tests.core.test_finetune_train import write_alpaca

JOB_TIMEOUT_MS = 180_000


@pytest.fixture
def pane(open_pane):
    return open_pane(TrainPane, (1280, 980))


def load(qtbot, session, folder):
    with qtbot.waitSignal(session.modelChanged, timeout=JOB_TIMEOUT_MS):
        session.load_model(sources.resolve(str(folder)))


def configure(session, data, **values):
    s = session.finetune_settings
    s.dataset, s.max_length, s.learning_rate, s.batch_size = str(data), 64, 5e-3, 4
    s.method = {"method": "lora", "rank": 4}
    for key, value in {"max_steps": 8, "eval_every": 2, "save_every": 2, **values}.items():
        setattr(s, key, value)


def test_without_a_model_or_project_start_is_disabled(pane):
    assert not pane.start_button.isEnabled() and pane.go_load_button.isVisible()
    assert "Load a model first" in pane.plan_label.text()


def test_estimate_then_stop_resume_finish_ask_and_reopen(qtbot, pane, tiny_model_dir, tmp_path, runner):
    session = pane.session
    session.new_project("trained")
    load(qtbot, session, tiny_model_dir)
    configure(session, write_alpaca(tmp_path / "rows.jsonl", 60))
    pane.settings_box.set_settings(session.finetune_settings)
    pane.estimate()
    qtbot.waitUntil(lambda: not pane.plan_job.busy, timeout=JOB_TIMEOUT_MS)
    text = pane.estimate_label.text()
    assert "Peak memory about" in text and "fits" in text and "Time about" in text

    # start, and stop once the first steps are in the plots
    handle = pane.start()
    assert handle is not None and runs.find(session.project, pane._run_id)["status"] == "running"
    qtbot.waitUntil(lambda: len(pane.plots.series["loss"][0]) >= 2, timeout=JOB_TIMEOUT_MS)
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        pane.stop_button.click()
    record = session.project.train_runs[-1]
    assert record["status"] == "stopped" and "a checkpoint was saved" in pane.status_label.text()
    assert pane.runs_view.checkpoints.rowCount() >= 1 and pane.runs_view.resume_button.isEnabled()
    stopped_at = runs.checkpoints(session.project, record)[-1][0]

    # resume from the latest checkpoint and finish
    with qtbot.waitSignal(pane.trained, timeout=JOB_TIMEOUT_MS) as done:
        pane.runs_view.resume_button.click()
    report = done.args[0]
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    assert report.steps == 8 and record["status"] == "finished" and record["summary"]["steps"] == 8
    steps = pane.plots.series["loss"][0]
    assert steps == sorted(steps) and steps[-1] == 8 and stopped_at < 8
    assert pane.plots.series["val_loss"][0][-1] == 8
    assert pane.plots.series["memory_mb"][0][-1] == 8 and pane.plots.last("memory_mb") > 50
    assert (
        pane.try_stack.ask_box._model is not None and pane.try_stack.currentWidget() is pane.try_stack.ask_box
    )
    assert session.project.step_status["train"] == "done"
    session.flush()

    # a new session on the same project: the run, its checkpoints and its curves are back
    record["status"] = "running"  # as if the app had been killed while it ran
    projects.save_project(session.project)
    again = Session(runner)
    again.open_project(session.project.folder)
    reopened = TrainPane(again)
    reopened.resize(1280, 980)
    reopened.show()
    try:
        assert reopened.runs_view.runs.item(0, 1).text() == "interrupted (resumable)"
        assert reopened.runs_view.checkpoints.rowCount() == len(runs.checkpoints(again.project, record))
        assert reopened.plots.series["loss"][0][-1] == 8
    finally:
        reopened.close()


def test_settings_that_cannot_train_are_refused_and_no_run_is_recorded(qtbot, pane, tiny_model_dir, tmp_path):
    session = pane.session
    session.new_project("refused")
    load(qtbot, session, tiny_model_dir)
    configure(session, write_alpaca(tmp_path / "rows.jsonl", 60), validation_ratio=0.45, test_ratio=0.45)
    assert pane.start() is None
    assert "leave under 10%" in pane.error_panel.message.text() and session.project.train_runs == []


def test_feature_extraction_trains_a_classifier_that_answers_with_labels(
    qtbot, pane, tiny_model_dir, tmp_path
):
    session = pane.session
    session.new_project("classifier")
    load(qtbot, session, tiny_model_dir)
    data = tmp_path / "labels.csv"
    words = {"billing": "invoice charge refund", "bug": "crash error broken"}
    rows = [f"{words[label].split()[i % 3]} please help {i},{label}" for i in range(60) for label in words]
    data.write_text("text,label\n" + "\n".join(rows), encoding="utf-8")
    configure(session, data, max_steps=6, learning_rate=1e-2)
    session.finetune_settings.task = "classification"
    session.finetune_settings.method = {"method": "feature"}
    with qtbot.waitSignal(pane.trained, timeout=JOB_TIMEOUT_MS) as done:
        assert pane.start() is not None
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    assert done.args[0].trainable_parameters == 2 * session.model.model.config.hidden_size
    assert pane.plots.series["val_accuracy"][0] and not pane.plots.plots["val_accuracy"].isHidden()
    assert pane.try_stack.currentWidget() is pane.try_stack.classify_box
    with qtbot.waitSignal(pane.try_stack.classify_box.classified, timeout=JOB_TIMEOUT_MS) as answer:
        pane.try_stack.classify_box.classify()
    labels = [label for label, _p in answer.args[0]]
    assert sorted(labels) == ["billing", "bug"] and "%" in pane.try_stack.classify_box.result.text()


def test_quantization_aware_training_plots_s_and_z_and_compares_with_plain_quantization(
    qtbot, pane, tiny_model_dir, tmp_path
):
    session = pane.session
    session.new_project("qat")
    load(qtbot, session, tiny_model_dir)
    configure(session, write_alpaca(tmp_path / "rows.jsonl", 60), max_steps=4)
    session.finetune_settings.method = {"method": "qat", "rank": 4, "qat_bits": 4, "qat_group_size": 32}
    with qtbot.waitSignal(pane.trained, timeout=JOB_TIMEOUT_MS) as done:
        assert pane.start() is not None
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    report = done.args[0]
    assert set(report.qat) >= {"qat", "ptq", "base", "scheme"}
    assert "with the learned scales" in pane.status_label.text()
    assert len(pane.plots.series["qat_scale"][0]) == 4 and not pane.plots.plots["qat_scale"].isHidden()
    assert (report.output / "quantized").is_dir()


def test_another_project_clears_the_previous_ones_run(qtbot, pane, tiny_model_dir, tmp_path):
    session = pane.session
    session.new_project("first")
    load(qtbot, session, tiny_model_dir)
    configure(session, write_alpaca(tmp_path / "rows.jsonl", 60), max_steps=2)
    with qtbot.waitSignal(pane.trained, timeout=JOB_TIMEOUT_MS):
        pane.start()
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    assert pane.try_stack.ask_box._model is not None and pane.plots.series["loss"][0]
    session.new_project("second")
    assert pane.try_stack.ask_box._model is None and not pane.plots.series["loss"][0]
    assert pane.status_label.text() == "" and pane.runs_view.runs.rowCount() == 0
