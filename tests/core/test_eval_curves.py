"""Training monitoring: overfitting is flagged where validation rises while training falls, noise is
not, and the curves read what the Train job wrote."""

import math

import pytest

from core import project as projects
from core.evaluate import curves
from core.evaluate.curves import moving_average, overfitting_note
from core.finetune import runs, train
from core.jobs import JobContext
from tests.core.test_finetune_train import write_alpaca

STEPS = list(range(1, 101))
FALLING = [2.0 - 0.012 * s for s in STEPS]  # training loss going steadily down: 1.988 -> 0.8
VAL_STEPS = [20, 40, 60, 80, 100]


def test_a_clear_overfit_is_flagged_at_the_best_step():
    note, at = overfitting_note(STEPS, FALLING, VAL_STEPS, [0.90, 0.71, 0.76, 0.83, 0.88])
    assert at == 40
    assert note.startswith(
        "Validation loss rose from 0.71 at step 40 to 0.88 at step 100 while training loss kept falling"
    )
    assert "overfitting" in note and "checkpoint at step 40" in note


def test_a_rise_that_stops_is_reported_to_its_last_high_point():
    # 0.71 best, then two evaluations well above it, then back near the best
    note, at = overfitting_note(STEPS, FALLING, VAL_STEPS, [0.90, 0.71, 0.79, 0.83, 0.715])
    assert at == 40 and "to 0.83 at step 80" in note


def test_a_healthy_run_is_not_flagged():
    note, at = overfitting_note(STEPS, FALLING, VAL_STEPS, [1.2, 1.0, 0.9, 0.85, 0.82])
    assert at is None
    assert note == "Validation loss fell from 1.20 at step 20 to 0.82 at step 100: no sign of overfitting."


def test_noise_around_the_best_is_not_flagged():
    # within 2 % of the best (0.80 -> limit 0.816), and single blips above it are not a rise
    note, at = overfitting_note(STEPS, FALLING, VAL_STEPS, [0.80, 0.81, 0.815, 0.805, 0.812])
    assert at is None and "no clear sign of overfitting" in note
    steps = [10 * i for i in range(1, 11)]
    # blips well above the best (0.79 at step 40), but never two evaluations in a row
    note, at = overfitting_note(STEPS, FALLING, steps[:8], [1.0, 0.8, 0.85, 0.79, 0.86, 0.795, 0.87, 0.80])
    assert at is None and "best 0.79 at step 40" in note


def test_validation_and_training_rising_together_is_instability_not_overfitting():
    rising = [0.5 + 0.01 * s for s in STEPS]
    note, at = overfitting_note(STEPS, rising, VAL_STEPS, [0.9, 0.7, 0.9, 1.2, 1.5])
    assert at == 40 and "training loss rose too" in note and "Lower the learning rate" in note
    assert "memorise" not in note


def test_too_few_or_no_validation_points():
    assert overfitting_note(STEPS, FALLING, [50, 100], [0.8, 0.9]) == (curves.TOO_FEW, None)
    assert "evaluate every N steps" in curves.TOO_FEW
    assert overfitting_note(STEPS, FALLING, [], []) == (curves.NO_VALIDATION, None)
    # unusable points (NaN from a diverged step, None) do not count
    assert overfitting_note(STEPS, FALLING, [20, 40, 60], [0.8, math.nan, None])[0] == curves.TOO_FEW


def test_moving_average_is_trailing_and_keeps_the_length():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([5.0], 3) == [5.0]
    assert moving_average([], 3) == []


def test_curves_from_log_rows_keep_accuracy_aligned_with_validation():
    rows = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3} for s in range(1, 7)]
    for row, (val, acc) in zip(rows[1::2], [(0.9, 0.5), (0.8, None), (0.7, 0.75)], strict=True):
        row.update(val_loss=val, val_accuracy=acc)
    rows[3]["loss"] = None  # a NaN the log wrote as null
    c = curves.curves_from_history("r1", "LoRA r8 · rows", rows)
    assert c.train_steps == [1, 2, 3, 5, 6] and len(c.train_loss_smooth) == 5
    assert c.val_steps == [2, 4, 6] and c.val_loss == [0.9, 0.8, 0.7]
    assert c.val_accuracy == [0.5, None, 0.75]
    assert c.diverges_at is None and c.note.startswith("Validation loss fell")
    assert curves.Curves.from_dict(c.to_dict()) == c
    assert curves.curves_from_history("r", "", [{"step": 1, "loss": 2.0}]).val_accuracy == []


@pytest.mark.usefixtures("single_thread")
def test_run_curves_read_what_training_wrote(tmp_path, tiny_loaded):
    project = projects.create_project("curves", root=tmp_path)
    settings = projects.FinetuneSettings(
        dataset=str(write_alpaca(tmp_path / "rows.jsonl", 40)), method={"method": "lora", "rank": 4},
        max_length=64, max_steps=4, learning_rate=5e-3, eval_every=1, save_every=0, validation_ratio=0.1,
    )  # fmt: skip
    run_id, folder = runs.new_train_run(project, settings)
    report = train.run(runs.train_params(settings, tiny_loaded, folder), JobContext())
    c = curves.run_curves(project, runs.find(project, run_id))
    assert c.run_id == run_id and c.label == runs.find(project, run_id)["label"]
    assert c.train_steps == [1, 2, 3, 4] and c.train_loss == pytest.approx(report.losses)
    assert c.val_steps == [1, 2, 3, 4] and min(c.val_loss) == pytest.approx(report.best_validation_loss)
    assert c.val_accuracy == []  # an instruction run has no accuracy
    assert c.note  # four evaluations: enough to judge, whatever the verdict
    assert c.note not in (curves.TOO_FEW, curves.NO_VALIDATION)
