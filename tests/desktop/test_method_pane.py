"""The Fine-tuning method pane offscreen: the bundled data is read and checked, a user file with
problems lists them by row, an unknown layout is mapped, methods are counted on a tiny model, and
BitFit on a model without biases offers norm-only tuning."""

from __future__ import annotations

import json

import pytest

from core.finetune import runs
from core.models import sources
from desktop.panes.method_pane import MethodPane

JOB_TIMEOUT_MS = 120_000


@pytest.fixture
def pane(open_pane):
    return open_pane(MethodPane, (1280, 980))


def checked(qtbot, pane, action=None):
    with qtbot.waitSignal(pane.data_box.checked, timeout=JOB_TIMEOUT_MS) as result:
        if action is not None:
            action()
    return result.args[0]


def pick_dataset(pane, path):
    box = pane.data_box
    index = box.dataset.findData(path if isinstance(path, str) else str(path))
    if index < 0:  # a user's file: "Choose a file…" answers with it
        index = box.dataset.count() - 1
    box.dataset.setCurrentIndex(index)
    box.dataset.activated.emit(index)


def load(qtbot, session, folder):
    with qtbot.waitSignal(session.modelChanged, timeout=JOB_TIMEOUT_MS):
        session.load_model(sources.resolve(str(folder)))


def counted(qtbot, pane):
    qtbot.waitUntil(lambda: pane.count_job.busy, timeout=5_000)
    qtbot.waitUntil(lambda: not pane.count_job.busy, timeout=JOB_TIMEOUT_MS)
    return pane.picker.counts.text()


def test_the_bundled_instruction_set_is_checked_on_show(qtbot, open_pane, session):
    with qtbot.waitSignal(session.projectChanged):
        session.new_project("tune")
    pane = open_pane(MethodPane, (1280, 980))
    result = checked(qtbot, pane)
    assert result.shape.name == "alpaca" and result.rows == 326
    assert "326 rows" in pane.data_box.shape_label.text() and "alpaca" in pane.data_box.shape_label.text()
    assert pane.data_box.preview.rowCount() == 20 and pane.data_box.split_label.text().startswith("260 train")
    # the classification sample brings its task, and feature extraction becomes available
    support = runs.BUNDLED_PREFIX + "classification-support.csv"
    result = checked(qtbot, pane, lambda: pick_dataset(pane, support))
    assert session.finetune_settings.task == "classification" and len(result.labels) == 5
    feature = next(pane.picker.list.item(i) for i in range(pane.picker.list.count())
                   if pane.picker.list.item(i).text() == "Feature extraction")  # fmt: skip
    assert feature.isSelected() is False and bool(feature.flags() & feature.flags().ItemIsEnabled)
    session.flush()
    assert session.project.finetune.dataset == "bundled:classification-support.csv"


def test_rows_with_problems_are_listed_and_an_unknown_layout_is_mapped(
    qtbot, pane, tmp_path, scripted_dialogs
):
    bad = tmp_path / "bad.jsonl"
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(60)]
    rows[2]["output"] = ""
    bad.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    checked(qtbot, pane)
    scripted_dialogs.answer("choose_file", bad)
    result = checked(qtbot, pane, lambda: pick_dataset(pane, bad))
    assert result.bad_rows == 1 and pane.data_box.problems.item(0, 0).text() == "3"
    assert "rows have problems" in pane.data_box.problems_text()
    pane.data_box.drop_bad.setChecked(True)
    assert pane.data_box.problems_text() == ""

    odd = tmp_path / "odd.jsonl"
    odd.write_text("\n".join(json.dumps({"q": f"x{i}", "a": f"y{i}"}) for i in range(60)), encoding="utf-8")
    scripted_dialogs.answer("choose_file", odd)
    result = checked(qtbot, pane, lambda: pick_dataset(pane, odd))
    assert not result.shape.recognised and pane.data_box.mapping.isVisible()
    mapping = pane.data_box.mapping
    mapping.shape.setCurrentIndex(mapping.shape.findData("prompt_completion"))
    mapping.shape.activated.emit(mapping.shape.currentIndex())
    mapping.combos["prompt"].setCurrentIndex(mapping.combos["prompt"].findData("q"))
    mapping.combos["completion"].setCurrentIndex(mapping.combos["completion"].findData("a"))
    result = checked(qtbot, pane, mapping.apply_button.click)
    assert result.shape.name == "prompt_completion" and result.bad_rows == 0
    assert pane.session.finetune_settings.columns == {"prompt": "q", "completion": "a"}


def test_methods_are_counted_on_the_model_and_bitfit_offers_norm_only(qtbot, pane, tiny_model_dir):
    load(qtbot, pane.session, tiny_model_dir)
    text = counted(qtbot, pane)
    assert "Trains" in text and "%" in text
    assert [k for k, box in pane.picker.editors["target_modules"].boxes.items() if box.isChecked()] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip
    lora = pane.counted.trainable.trainable
    pane.picker.editors["rank"].setValue(16)
    counted(qtbot, pane)
    assert pane.counted.trainable.trainable == 2 * lora  # LoRA's count is linear in the rank
    bitfit = next(i for i in range(pane.picker.list.count()) if pane.picker.list.item(i).text() == "BitFit")
    pane.picker.list.setCurrentRow(bitfit)
    assert "no bias" in counted(qtbot, pane) and pane.norm_button.isVisible()
    pane.norm_button.click()
    assert pane.session.finetune_settings.method["method"] == "ln"
    assert "Trains" in counted(qtbot, pane)


def test_an_unreadable_file_says_what_is_wrong_and_leaves_nothing_of_the_last_one(
    qtbot, pane, tmp_path, scripted_dialogs
):
    checked(qtbot, pane)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "q1", "output": "a1"}\n{"instruction": "q2"\n', encoding="utf-8")
    scripted_dialogs.answer("choose_file", broken)
    with qtbot.waitSignal(
        pane.statusChanged, timeout=JOB_TIMEOUT_MS, check_params_cb=lambda s, t: s == "stale"
    ):
        pick_dataset(pane, broken)
    assert "not valid JSON at line 2" in pane.data_box.error_panel.message.text()
    assert pane.data_box.preview.rowCount() == 0 and pane.data_box.split_label.text() == ""
