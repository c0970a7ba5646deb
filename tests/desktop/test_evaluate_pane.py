"""The Evaluate pane offscreen on a tiny model: what it says before there is anything to score, a
run that fills the results as each variant is scored, a run that is stopped (what was scored is
kept), the exported report, the evaluation shown again in a new session, the models the user
unchecked (kept in the project, and the next run scores exactly the checked ones), and k-fold
cross-validation with mean ± std."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
from PySide6.QtCore import Qt

from core import project as projects
from core.evaluate import job
from core.evaluate.results import read_evaluation
from core.jobs import JobContext, run_job
from core.models import sources
from desktop.panes.evaluate_pane import EvaluatePane
from desktop.session import Session
from desktop.widgets.eval_settings import NO_MODEL, NO_PROJECT, NO_TEST

JOB_TIMEOUT_MS = 120_000
UNITS = [("metres", "feet", 3.28084), ("kilograms", "pounds", 2.20462), ("litres", "pints", 1.75975)]
PHRASES = {"geography": "The capital of France is Paris", "quantization": "Quantization maps weights",
           "food": "Café and jalapeño"}  # fmt: skip


@pytest.fixture
def pane(open_pane):
    return open_pane(EvaluatePane, (1280, 980))


def load(qtbot, session, folder):
    with qtbot.waitSignal(session.modelChanged, timeout=JOB_TIMEOUT_MS):
        session.load_model(sources.resolve(str(folder)))


def write_units(path, n=30):
    rows = []
    for i in range(n):
        unit, other, factor = UNITS[i % 3]
        rows.append({"instruction": f"How many {other} are in {i + 1} {unit}?", "input": "",
                     "output": f"{i + 1} {unit} is {round((i + 1) * factor, 2)} {other}."})  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return path


def write_labelled(path, per_label=6):
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(per_label):
            for label, phrase in PHRASES.items():
                writer.writerow([f"Note {i}: {phrase}", label])
    return path


def open_project(qtbot, pane, name, data, tiny_model_dir, **finetune):
    """A project on ``data`` with small Evaluate settings, opened with the tiny model loaded."""
    session = pane.session
    load(qtbot, session, tiny_model_dir)
    p = session.new_project(name)
    p.finetune = replace(p.finetune, dataset=str(data), test_ratio=0.2, validation_ratio=0.1, max_length=64,
                         batch_size=8, **finetune)  # fmt: skip
    p.evaluate = replace(p.evaluate, max_new_tokens=4, batch_size=4, few_shot=1, rag_top_k=1, max_examples=3,
                         kfold_k=2, kfold_max_steps=2)  # fmt: skip
    projects.save_project(p)
    project = session.open_project(p.folder)
    qtbot.waitUntil(lambda: pane.test_rows is not None, timeout=JOB_TIMEOUT_MS)
    return project


def test_without_a_project_or_model_nothing_can_run_and_the_pane_says_where_to_go(qtbot, pane):
    assert NO_PROJECT in pane.scope_label.text() and not pane.run_button.isEnabled()
    assert not pane.export_button.isEnabled() and "Accuracy" in pane.learn.html()
    pane.session.new_project("empty")  # no dataset chosen: the bundled instruction set, as in Train
    assert pane.scope_label.text() == NO_MODEL and not pane.run_button.isEnabled()
    assert pane.go_load_button.isVisible() and not pane.go_method_button.isVisible()
    base = pane.settings_box.variant_list.item(0)  # no model: the base model cannot be scored
    assert pane.settings_box.variant_list.count() == 1 and not base.flags() & Qt.ItemFlag.ItemIsEnabled
    assert "Load a model" in base.toolTip()
    with qtbot.waitSignal(pane.stepRequested) as asked:
        pane.go_load_button.click()
    assert asked.args == ["load"]
    assert not pane.kfold.run_button.isEnabled()


def test_run_fills_the_results_then_stop_export_and_restore(qtbot, pane, tiny_model_dir, tmp_path,
                                                           scripted_dialogs, runner):  # fmt: skip
    session = pane.session
    project = open_project(qtbot, pane, "units", write_units(tmp_path / "units.jsonl"), tiny_model_dir)
    assert "<b>6</b> test rows, scoring the first <b>3</b>" in pane.scope_label.text()
    assert pane.run_button.isEnabled() and pane.settings_box.checked_ids() == ["base"]
    # instruction rows are their own prompts: the base row is the zero-shot answer, no separate baseline
    assert job.default_variant_ids(project, session.model) == ("base", "few-shot", "rag")

    arrived = []
    with qtbot.waitSignal(pane.evaluated, timeout=JOB_TIMEOUT_MS) as done:
        handle = pane.run()
        handle.event.connect(lambda e: e.kind == "variant" and arrived.append(len(pane.results.results)))
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    evaluation = done.args[0]
    assert arrived == [1, 2, 3]  # a row for each variant as it is scored, before the run ends
    assert evaluation.variants[0].scores["text_perplexity"] > 1.0
    table = pane.results.table
    assert [table.item(r, 0).data(256) for r in range(table.rowCount())] == ["base", "few-shot", "rag"]
    headers = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
    assert headers[:3] == ["Variant", "Kind", "Token F1"] and headers[-3:] == ["Size", "Memory", "Tokens/s"]
    assert "Perplexity (text)" in headers
    assert table.horizontalHeaderItem(2).toolTip()  # the metric explains itself
    f1 = pane.results.cell("few-shot", "Token F1").text()
    assert f1 != "—" and f1 == pane.results.columns[0].text(evaluation.variant("few-shot"))
    assert pane.results.cell("base", "Size").text().endswith("KB")
    assert float(pane.results.cell("rag", "Tokens/s").text()) > 0
    assert len(pane.results.chart.labels) == 3 and pane.export_button.isEnabled()
    assert project.evaluations[-1]["kind"] == "evaluation" and project.step_status["evaluate"] == "done"
    assert pane.outputs.evaluation is evaluation

    # a second run, stopped once its first variant is scored: that variant is kept
    project.evaluate.batch_size = 1  # one row at a time: the stop lands well inside the second variant
    handle = pane.run()
    handle.event.connect(lambda e: e.kind == "variant" and pane.stop_button.click())
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        pass
    assert not pane.busy and len(project.evaluations) == 2
    assert pane.status_label.text() == "Stopped: 1 variant(s) were scored before the stop; they are kept."
    stopped = read_evaluation(project.folder / project.evaluations[-1]["folder"])
    assert [v.id for v in stopped.variants] == ["base"] and len(stopped.variants[0].outputs) == 3
    assert pane.evaluation.variants[0].outputs == stopped.variants[0].outputs
    assert pane.results.table.rowCount() == 1 and "1 variant(s)" in project.evaluations[-1]["summary"]

    # export: HTML, with CSV and JSON beside it
    target = tmp_path / "out" / "report"
    target.parent.mkdir()
    scripted_dialogs.answer("choose_save_file", target)
    pane.show_evaluation(evaluation)
    with qtbot.waitSignal(pane.export().finished, timeout=JOB_TIMEOUT_MS):
        pass
    html = target.with_suffix(".html")
    assert html.is_file() and "<html" in html.read_text(encoding="utf-8")
    assert target.with_suffix(".csv").is_file() and target.with_suffix(".json").is_file()
    assert (tmp_path / "out" / "report-examples.csv").is_file()  # every output, beside the numbers
    assert str(html) in pane.status_label.text()

    # a new session on the same project: the latest evaluation is shown again
    session.flush()
    again = Session(runner)
    again.open_project(project.folder)
    reopened = EvaluatePane(again)
    reopened.resize(1280, 980)
    reopened.show()
    try:
        latest = reopened.evaluation
        assert latest is not None and latest.id == project.evaluations[-1]["id"]
        assert (
            reopened.results.table.rowCount() == len(latest.variants) and reopened.export_button.isEnabled()
        )
    finally:
        reopened.close()


def quantize(project, loaded) -> str:
    """A real INT8 round-to-nearest run of the tiny model in the project; its variant id."""
    from core.quant import job as quant_job
    from core.quant import runs as quant_runs

    run_id, folder = quant_runs.new_run_folder(project, {"precision": "int8", "method": "rtn"})
    params = quant_job.QuantizeParams(loaded, precision="int8", group_size=32, output=str(folder),
                                      measure_perplexity=False)  # fmt: skip
    quant_runs.record_run(project, run_id, run_job(quant_job.run, params, JobContext()).to_dict())
    return f"quant:{run_id}"


def test_unchecked_models_are_kept_in_the_project_and_the_next_run_scores_exactly_the_checked_ones(
    qtbot, pane, tiny_model_dir, tmp_path
):
    session = pane.session
    project = open_project(qtbot, pane, "checks", write_units(tmp_path / "units.jsonl"), tiny_model_dir)
    quant_id = quantize(project, session.model)
    pane.hide()
    pane.show()  # back on the step: the new run is listed, checked
    box = pane.settings_box
    assert box.checked_ids() == ["base", quant_id] and project.evaluate.skipped == []
    first = box.variant_list.item(0)

    box.set_checked("base", False)
    assert project.evaluate.skipped == ["base"] and box.checked_ids() == [quant_id]
    box.set_checked(quant_id, False)  # the last checked model: every model stays unchecked
    assert project.evaluate.skipped == ["base", quant_id] and box.checked_ids() == []
    assert box.variant_list.item(0) is first  # the list was not rebuilt while the user checked
    assert job.default_variant_ids(project, session.model) == ("few-shot", "rag")
    box.few_shot.setValue(2)  # another edit does not bring the models back
    assert box.checked_ids() == [] and project.evaluate.skipped == ["base", quant_id]
    session.flush()
    assert projects.load_project(project.folder).evaluate.skipped == ["base", quant_id]

    box.set_checked(quant_id, True)
    assert project.evaluate.skipped == ["base"]
    with qtbot.waitSignal(pane.evaluated, timeout=JOB_TIMEOUT_MS) as done:
        pane.run()
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    assert [v.id for v in done.args[0].variants] == [quant_id, "few-shot", "rag"]
    assert not done.args[0].variant(quant_id).error
    assert box.checked_ids() == [quant_id]  # the run changed nothing in the checklist


def test_kfold_runs_two_folds_shows_mean_and_std_and_keeps_a_cancelled_runs_folds(
    qtbot, pane, tiny_model_dir, tmp_path
):
    data = write_labelled(tmp_path / "labelled.csv")
    project = open_project(qtbot, pane, "folds", data, tiny_model_dir, task="classification",
                           method={"method": "feature"}, learning_rate=5e-2)  # fmt: skip
    view = pane.kfold
    assert view.k_spin.value() == 2 and "Feature extraction" in view.method_label.text()
    assert view.run_button.isEnabled() and view.k_spin.maximum() == 20
    project.finetune.test_ratio = 0.0  # nothing held out: no evaluation, but k-fold cuts its own folds
    pane.refresh()
    assert pane.scope_label.text() == NO_TEST and not pane.run_button.isEnabled()
    assert view.run_button.isEnabled()
    project.finetune.test_ratio = 0.2
    view.steps_spin.setValue(0)  # 0: the Train step's epochs
    assert project.evaluate.kfold_max_steps == 0 and view.steps_spin.text() == "epochs"
    view.steps_spin.setValue(2)
    folds = []
    view.run_button.click()
    handle = pane._handle
    handle.event.connect(lambda e: folds.append(e.data["index"]) if e.kind == "fold" else None)
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        assert view.cancel_button.isEnabled() and not view.run_button.isEnabled()
    assert folds == [0, 1] and len(view.result.folds) == 2 and not view.result.cancelled
    titles = [view.table.horizontalHeaderItem(c).text() for c in range(view.table.columnCount())]
    assert titles == ["Metric", "Mean ± std", "Fold 1", "Fold 2"]
    assert view.table.item(0, 0).text() == "Accuracy" and "±" in view.table.item(0, 1).text()
    assert len(view.points.data) == 2 and view.mean_line.isVisible()
    assert project.evaluations[-1]["kind"] == "kfold" and "All 2 folds" in view.progress_label.text()

    # three folds, cancelled once the first is in: that fold is kept, and the view says so
    view.k_spin.setValue(3)
    assert project.evaluate.kfold_k == 3
    view.run_button.click()
    handle = pane._handle
    handle.event.connect(lambda e: e.kind == "fold" and view.cancel_button.click())
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        pass
    assert view.result.cancelled and len(view.result.folds) == 1 and view.table.columnCount() == 3
    assert view.result.settings["k"] == 3 and view.result.settings["max_steps"] == 2  # the job's own file
    assert "Cancelled: 1 of 3 folds" in view.note.text()
    assert "(cancelled)" in project.evaluations[-1]["summary"]
    assert view.run_button.isEnabled() and not view.cancel_button.isEnabled()


def test_results_table_bolds_the_best_shows_errors_and_the_confusion_matrix(qtbot):
    from core.evaluate.results import EvalExample, Evaluation, VariantResult
    from desktop.widgets.eval_results import EvalResults

    examples = [EvalExample(i, f"text {i}", label) for i, label in enumerate(["a", "a", "b", "b"])]
    base = VariantResult("base", "Base", "base", {"accuracy": 0.5, "f1_macro": 0.4}, ["a", "b", "b", "a"],
                         size_bytes=2_000_000, peak_memory_bytes=5_000_000,
                         tokens_per_second=10.0)  # fmt: skip
    tuned = VariantResult("train:1", "Tuned", "finetuned", {"accuracy": 0.75, "f1_macro": 0.4},
                          ["a", "a", "b", "maybe"], size_bytes=3_000_000, tokens_per_second=5.0)  # fmt: skip
    broken = VariantResult("quant:1", "Quantized", "quantized", error="The run's folder is gone.")
    evaluation = Evaluation("e1", "now", "classification", "data.csv", ["accuracy", "f1_macro"], examples,
                            [base, tuned, broken], labels=["a", "b"])  # fmt: skip
    view = EvalResults()
    qtbot.addWidget(view)
    view.set_evaluation(evaluation)
    bold = {(v, t): view.cell(v, t).font().bold() for v in ("base", "train:1") for t in ("Accuracy", "Size")}
    assert bold == {("base", "Accuracy"): False, ("train:1", "Accuracy"): True,
                    ("base", "Size"): True, ("train:1", "Size"): False}  # fmt: skip
    assert not view.cell("base", "F1 (macro)").font().bold()  # all equal: none is the best
    assert not view.cell("train:1", "F1 (macro)").font().bold()
    assert view.cell("base", "Size").text() == "2.0 MB" and view.cell("train:1", "Memory").text() == "—"
    error = view.cell("quant:1", "Accuracy")
    assert "folder is gone" in error.text() and view.table.columnSpan(2, 2) == 5
    view.select("train:1")
    matrix = view.confusion.table
    assert view.confusion.isVisibleTo(view) and matrix.columnCount() == 3  # a, b, other
    counts = [[matrix.item(r, c).text() for c in range(3)] for r in range(2)]
    assert counts == [["2", "0", "0"], ["0", "1", "1"]]
    view.chart.metric_combo.setCurrentIndex(view.chart.metric_combo.findData("tokens_per_second"))
    view._redraw()
    assert [label.toPlainText() for label in view.chart.labels] == ["10.0", "5.0", "error"]
