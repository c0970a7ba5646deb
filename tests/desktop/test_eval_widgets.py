"""The Evaluate pane's widgets offscreen, on results built by hand: the output table, the training
curves (and the results following the same run), and the settings form's checklist and limits."""

from __future__ import annotations

import math

import pytest
from PySide6.QtCore import Qt

from core.evaluate import job
from core.evaluate.results import EvalExample, Evaluation, VariantResult
from core.evaluate.variants import VariantInfo
from core.finetune.runlog import MetricsLog
from core.project import EvaluateSettings, create_project, load_project, save_project
from desktop.widgets.eval_outputs import OutputsView
from desktop.widgets.eval_outputs_model import RIGHT_BG, WRONG_BG
from desktop.widgets.eval_settings import EvalSettingsBox

ROWS = [3, 7, 12, 20, 31]  # dataset rows of the five test examples
REFERENCES = ["Paris", "Mars", "Jupiter", "Neptune", "Neptune"]
OUTPUTS = {  # variant id -> outputs; a case difference is no disagreement, "Pluto" is wrong for all
    "base": ["Paris", "Venus", "Jupiter", "Pluto", "Neptune"],
    "train:run1": ["paris", "Mars", "Jupiter", "Pluto", "Uranus <b>"],
    "few-shot": ["Paris", "Mars", "Jupiter", "Pluto", "Neptune"],
}


def _scores(output: str, reference: str) -> dict[str, float]:
    right = float(output.casefold() == reference.casefold())
    return {"exact_match": right, "token_f1": right}  # all or nothing: no borderline verdicts


def make_evaluation() -> Evaluation:
    prompts = ["Capital of France?", "The red planet?", "The largest planet?",
               "Which planet is blue and far?", "Which planet is the windiest?"]  # fmt: skip
    examples = [EvalExample(r, p, ref) for r, p, ref in zip(ROWS, prompts, REFERENCES, strict=True)]
    variants = [
        VariantResult(vid, label, kind, outputs=list(outs),
                      example_scores=[_scores(o, ref) for o, ref in zip(outs, REFERENCES, strict=True)])
        for (vid, outs), label, kind in zip(OUTPUTS.items(), ("Base model", "LoRA r8", "Few-shot prompting"),
                                            ("base", "finetuned", "few-shot"), strict=True)
    ]  # fmt: skip
    return Evaluation("e1", "2025-01-01T00:00:00", "qa", "bundled:qa-planets.jsonl",
                      ["exact_match", "token_f1"], examples, variants)  # fmt: skip


@pytest.fixture
def project(tmp_path):
    return create_project("Evaluate widgets", tmp_path)


@pytest.fixture
def outputs_view(qtbot, project):
    view = OutputsView()
    qtbot.addWidget(view)
    view.resize(1100, 700)
    view.show()
    view.show_evaluation(make_evaluation(), project)
    return view


def _cell(view: OutputsView, row: int, column: int, role=Qt.ItemDataRole.DisplayRole):
    return view.model.data(view.model.index(view.shown_rows().index(row), column), role)


def test_the_table_shows_every_row_with_its_input_reference_and_outputs(outputs_view):
    model = outputs_view.model
    assert outputs_view.shown_rows() == ROWS
    assert model.columnCount() == 3 + 3
    headers = [model.headerData(c, Qt.Orientation.Horizontal) for c in range(model.columnCount())]
    assert headers == ["Row", "Input", "Reference", "Base model", "LoRA r8", "Few-shot prompting"]
    assert [_cell(outputs_view, 31, c) for c in range(6)] == [
        "32", "Which planet is the windiest?", "Neptune", "Neptune", "Uranus <b>", "Neptune",
    ]  # fmt: skip
    assert outputs_view.count_label.text() == "5 of 5 rows"


def test_wrong_outputs_are_tinted_red_and_right_ones_green(outputs_view):
    background = Qt.ItemDataRole.BackgroundRole
    assert _cell(outputs_view, 7, 3, background).color() == WRONG_BG  # base said Venus
    assert _cell(outputs_view, 7, 4, background).color() == RIGHT_BG
    assert _cell(outputs_view, 7, 1, background) is None  # the input is no verdict


@pytest.mark.parametrize(
    ("key", "rows"),
    [("all", ROWS), ("disagree", [7, 31]), ("any_wrong", [7, 20, 31]), ("wrong:base", [7, 20]),
     ("wrong:train:run1", [20, 31]), ("wrong:few-shot", [20]), ("marked", [])],
)  # fmt: skip
def test_filters_leave_the_right_rows(outputs_view, key, rows):
    outputs_view.set_filter(key)
    assert outputs_view.shown_rows() == rows
    assert outputs_view.count_label.text() == f"{len(rows)} of 5 rows"


def test_search_looks_in_inputs_references_and_outputs_and_combines_with_the_filter(outputs_view):
    outputs_view.search.setText("URANUS")
    assert outputs_view.shown_rows() == [31]
    outputs_view.search.setText("red planet")
    assert outputs_view.shown_rows() == [7]
    outputs_view.search.setText("neptune")
    assert outputs_view.shown_rows() == [20, 31]
    outputs_view.set_filter("disagree")
    assert outputs_view.shown_rows() == [31]


def test_marking_an_output_writes_the_project_and_emits_marked(qtbot, outputs_view, project):
    outputs_view.select(12, "base")
    with qtbot.waitSignal(outputs_view.marked) as signal:
        outputs_view.good_button.click()
    assert signal.args == ["base", 12, "good"]
    assert project.evaluate.marks == {"base|12": {"mark": "good", "output": "Jupiter"}}
    assert _cell(outputs_view, 12, 3) == "✓ Jupiter"
    outputs_view.set_filter("marked")
    assert outputs_view.shown_rows() == [12]
    outputs_view.select(12, "base")
    with qtbot.waitSignal(outputs_view.marked) as signal:
        outputs_view.good_button.click()  # the same mark again clears it
    assert signal.args == ["base", 12, ""] and project.evaluate.marks == {}


def test_key_b_marks_the_selected_output_bad(qtbot, outputs_view, project):
    outputs_view.select(31, "train:run1")
    outputs_view.table.setFocus()
    with qtbot.waitSignal(outputs_view.marked) as signal:
        qtbot.keyClick(outputs_view.table, Qt.Key.Key_B)
    assert signal.args == ["train:run1", 31, "bad"]
    assert project.evaluate.marks["train:run1|31"] == {"mark": "bad", "output": "Uranus <b>"}


def test_the_input_column_cannot_be_marked(outputs_view, project):
    outputs_view.select(12)
    assert not outputs_view.good_button.isEnabled() and not outputs_view.bad_button.isEnabled()
    outputs_view.mark_selected("good")
    assert project.evaluate.marks == {}


def test_a_mark_is_shown_again_after_reloading_the_project(qtbot, outputs_view, project):
    outputs_view.select(31, "train:run1")
    outputs_view.mark_selected("bad")
    save_project(project)
    again = OutputsView()
    qtbot.addWidget(again)
    evaluation = make_evaluation()
    again.show_evaluation(evaluation, load_project(project.folder))
    assert _cell(again, 31, 4) == "✗ Uranus <b>"
    again.set_filter("marked")
    assert again.shown_rows() == [31]
    evaluation.variants[1].outputs[4] = "Uranus"  # a newer evaluation answered otherwise: no mark
    again.show_evaluation(evaluation, load_project(project.folder))
    assert again.shown_rows() == []  # the filter stays; no row is marked any more
    again.set_filter("all")
    assert _cell(again, 31, 4) == "Uranus"


def test_plain_text_has_no_right_or_wrong_so_nothing_is_tinted_and_there_is_no_wrong_filter(qtbot, project):
    evaluation = make_evaluation()
    evaluation.task, evaluation.metrics = "causal_lm", ["perplexity", "distinct_2"]
    for v in evaluation.variants:  # what plain text scores per example: no token F1, no exact match
        v.example_scores = [{"distinct_2": 0.5} for _ in v.outputs]
    view = OutputsView()
    qtbot.addWidget(view)
    view.show_evaluation(evaluation, project)
    background = Qt.ItemDataRole.BackgroundRole
    assert [_cell(view, row, c, background) for row in ROWS for c in (3, 4, 5)] == [None] * 15
    filters = [view.filter_box.itemData(i) for i in range(view.filter_box.count())]
    assert filters == ["all", "disagree", "marked"]


def test_the_detail_view_highlights_words_the_output_added(outputs_view):
    outputs_view.select(31, "train:run1")
    page = outputs_view.detail.toHtml()
    assert "Row 32 of the file" in page  # the file's row 31, counted from 1 as the table's Row column
    assert "Uranus" in page and "&lt;b&gt;" in page  # the output's markup is shown, not rendered
    assert "#fbd5d0" in page  # the added words' background
    assert "Neptune" in page  # the reference, struck through as missing
    assert "Base model" not in page  # one variant's output only


def test_selecting_an_input_shows_every_variants_output(outputs_view):
    outputs_view.select(7)
    page = outputs_view.detail.toHtml()
    for label in ("Base model", "LoRA r8", "Few-shot prompting", "Venus", "The red planet?"):
        assert label in page


def test_no_evaluation_shows_an_empty_table(outputs_view):
    outputs_view.show_evaluation(None, None)
    assert outputs_view.model.rowCount() == 0 and outputs_view.shown_rows() == []
    assert not outputs_view.good_button.isEnabled()


# -- training curves ---------------------------------------------------------------------------
def _add_run(project, run_id: str, val_losses: dict[int, float], accuracy: bool) -> dict:
    folder = project.artifacts / "train" / run_id
    log = MetricsLog(folder)
    for step in range(1, 61):
        values = {"loss": 2.0 * math.exp(-step / 20) + 0.2}
        if step in val_losses:
            values["val_loss"] = val_losses[step]
            if accuracy:
                values["val_accuracy"] = 0.5 + step / 200
        log.write(step, values)
    log.close()
    record = {"id": run_id, "created": "2025-01-02T10:00:00", "label": f"LoRA r8 · {run_id}",
              "folder": f"artifacts/train/{run_id}", "settings": {}, "status": "finished",
              "summary": {}}  # fmt: skip
    project.train_runs.append(record)
    return record


def test_curves_show_the_chosen_runs_losses_note_and_divergence(qtbot, project):
    from core.evaluate.curves import run_curves
    from desktop.widgets.eval_curves import CurvesView

    overfit = _add_run(project, "overfit", {10: 1.2, 20: 0.9, 30: 1.0, 40: 1.1, 50: 1.3}, accuracy=True)
    healthy = _add_run(project, "healthy", {20: 1.0, 40: 0.8, 60: 0.7}, accuracy=False)
    view = CurvesView()
    qtbot.addWidget(view)
    view.show()
    view.show_project(project)
    assert view.selected_id() == "healthy"  # the newest first
    assert view.note.text() == run_curves(project, healthy).note
    assert not view.diverge_line.isVisible()
    assert view.accuracy_plot.isHidden()
    xs, ys = view.val_curve.getData()
    assert list(xs) == [20, 40, 60] and list(ys) == pytest.approx([1.0, 0.8, 0.7])
    with qtbot.waitSignal(view.runChosen) as signal:
        view.run_box.setCurrentIndex(view.run_box.findData("overfit"))
    assert signal.args == ["overfit"]
    assert view.note.text() == run_curves(project, overfit).note and "overfitting" in view.note.text()
    assert view.diverge_line.isVisible() and view.diverge_line.value() == 20
    assert not view.accuracy_plot.isHidden()
    assert len(view.raw_curve.getData()[0]) == 60 and len(view.smooth_curve.getData()[0]) == 60
    view.show_project(project)  # shown again (a run was added elsewhere): the chosen run stays
    assert view.selected_id() == "overfit"


def test_the_results_and_the_curves_follow_the_same_fine_tuning_run(qtbot, project):
    from desktop.widgets.eval_curves import CurvesView
    from desktop.widgets.eval_results import EvalResults, link_training_runs

    for run_id in ("older", "newer"):
        _add_run(project, run_id, {20: 1.0, 40: 0.8}, accuracy=False)
    evaluation = make_evaluation()
    evaluation.variants[1].id = "train:older"
    evaluation.variants.append(
        VariantResult("train+quant:older:q1", "LoRA, then INT4", "finetuned+quantized")
    )
    results, curves = EvalResults(), CurvesView()
    for widget in (results, curves):
        qtbot.addWidget(widget)
    curves.show_project(project)
    results.set_evaluation(evaluation)
    link_training_runs(results, curves)
    assert curves.selected_id() == "newer" and results.selected_id() == "base"
    with qtbot.waitSignal(results.variantSelected) as chosen:
        results.select("train:older")
    assert chosen.args == ["train:older"] and curves.selected_id() == "older"  # its curves are shown
    curves.run_box.setCurrentIndex(curves.run_box.findData("newer"))
    assert results.selected_id() == "train:older"  # "newer" is not in this evaluation: nothing to select
    results.select("base")  # not a fine-tuned variant: the curves stay
    assert curves.selected_id() == "newer"
    results.select("train+quant:older:q1")  # fine-tuned, then quantized: its run's curves
    assert curves.selected_id() == "older" and results.selected_id() == "train+quant:older:q1"
    curves.run_box.setCurrentIndex(curves.run_box.findData("newer"))
    curves.run_box.setCurrentIndex(curves.run_box.findData("older"))
    assert results.selected_id() == "train+quant:older:q1"  # already a variant of that run: it stays
    results.select("base")
    curves.run_box.setCurrentIndex(curves.run_box.findData("newer"))
    curves.run_box.setCurrentIndex(curves.run_box.findData("older"))
    assert results.selected_id() == "train:older"  # a run chosen in the curves selects its variant


def test_curves_without_runs_say_how_to_get_one(qtbot, project):
    from desktop.widgets.eval_curves import NO_RUNS, CurvesView

    view = CurvesView()
    qtbot.addWidget(view)
    view.show_project(project)
    assert view.pages.currentWidget() is view.empty and view.empty.text() == NO_RUNS
    assert view.selected_id() is None


# -- the settings form -------------------------------------------------------------------------
MODELS = [VariantInfo("base", "Base", "base", True), VariantInfo("quant:a", "INT4", "quantized", True),
          VariantInfo("train:b", "LoRA", "finetuned", False, "The run is stopped: resume it.")]  # fmt: skip
BASELINES = [VariantInfo("zero-shot", "Zero-shot prompting", "zero-shot", False, "Instruction rows are "
                         "their own prompts."), VariantInfo("few-shot", "Few-shot", "few-shot", True),
             VariantInfo("rag", "RAG (BM25)", "rag", True)]  # fmt: skip


@pytest.fixture
def settings_box(qtbot):
    box = EvalSettingsBox()
    qtbot.addWidget(box)
    return box


def test_unchecking_models_keeps_them_skipped_and_the_last_one_stays_unchecked(qtbot, settings_box):
    settings = EvaluateSettings()
    settings_box.set_settings(settings)
    settings_box.set_variants(MODELS + BASELINES)
    assert settings_box.checked_ids() == ["base", "quant:a"]  # the stopped run cannot be checked
    first = settings_box.variant_list.item(0)
    with qtbot.waitSignal(settings_box.changed):
        settings_box.set_checked("quant:a", False)
    settings_box.set_checked("base", False)  # the last checked model
    assert settings.skipped == ["quant:a", "base"] and settings_box.checked_ids() == []
    settings_box.set_variants(MODELS + BASELINES)  # the same variants again (the step shown again)
    assert settings_box.variant_list.item(0) is first and settings_box.checked_ids() == []
    made_later = VariantInfo("train:c", "QLoRA", "finetuned", True)
    settings_box.set_variants([*MODELS, made_later, *BASELINES])  # a new run: listed, checked
    assert settings_box.checked_ids() == ["train:c"] and settings.skipped == ["quant:a", "base"]
    settings_box.set_checked("base", True)
    assert settings.skipped == ["quant:a"] and settings_box.checked_ids() == ["base", "train:c"]


def test_editing_a_count_leaves_an_unavailable_zero_shot_setting_alone(settings_box):
    settings = EvaluateSettings(zero_shot=True)
    settings_box.set_settings(settings)
    settings_box.set_variants(MODELS + BASELINES)
    assert not settings_box.zero_shot.isEnabled() and not settings_box.zero_shot.isChecked()
    assert "Instruction rows" in settings_box.zero_shot.toolTip()
    settings_box.few_shot.setValue(5)
    settings_box.max_examples.setValue(12)
    assert (settings.few_shot, settings.max_examples, settings.zero_shot) == (5, 12, True)


def test_the_limits_are_the_jobs(settings_box):
    assert settings_box.max_new_tokens.maximum() == job.MAX_NEW_TOKENS == 512
    assert settings_box.max_examples.maximum() == job.MAX_EXAMPLES == 5000
    settings_box.max_examples.setValue(0)
    assert settings_box.max_examples.text() == "all test rows"
