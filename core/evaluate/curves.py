"""Training monitoring: the training and validation curves of a fine-tuning run, and a plain-words
note on whether validation diverged from training (overfitting).

The curves come from the run's metrics log (core.finetune.runlog), which the Train job writes one
line per step: "loss" on every step, "val_loss" (and "val_accuracy" for classifiers) on the steps
that evaluated. The overfitting rule is deliberately conservative so that noise is not flagged:
validation loss must stay more than a small tolerance above its best for at least two evaluations
in a row after that best, while the training loss over the same stretch went down.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MIN_VAL_POINTS = 3  # a best point and two later evaluations: the fewest that can show a rise
RISE_EVALUATIONS = 2  # evaluations in a row above the best that count as a rise, not noise
TOLERANCE = 0.02  # relative: within 2 % of the best validation loss is noise
ABS_TOLERANCE = 1e-3  # losses near zero: a relative tolerance alone would flag rounding

TOO_FEW = "Too few validation points to judge: evaluate more often (Train step: evaluate every N steps)."
NO_VALIDATION = (
    "No validation loss was recorded: give the validation share a value above 0 in the Train step "
    "to see whether the model overfits."
)

# The log's keys; the long names are accepted too in case a log was written by another tool.
_TRAIN_KEYS = ("loss", "train_loss")
_VAL_KEYS = ("val_loss", "validation_loss")
_ACC_KEYS = ("val_accuracy", "validation_accuracy")


@dataclass
class Curves:
    run_id: str
    label: str
    train_steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # raw, one per step
    train_loss_smooth: list[float] = field(default_factory=list)  # trailing moving average of train_loss
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)  # empty when the run logged none
    note: str = ""
    diverges_at: int | None = None  # the step of the best validation loss when validation then rose

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Curves:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def run_curves(project: Any, record: dict[str, Any]) -> Curves:
    """The curves of one recorded training run (a record of ``project.train_runs``)."""
    from core.finetune.runs import history

    return curves_from_history(record.get("id", ""), record.get("label", ""), history(project, record))


def curves_from_history(run_id: str, label: str, rows: Sequence[dict[str, Any]]) -> Curves:
    """Curves from metrics-log rows ({"step", "loss", "val_loss", ...}, one per step)."""
    train_steps, train_loss, val_steps, val_loss, val_acc = [], [], [], [], []
    for row in rows:
        loss = _first_finite(row, _TRAIN_KEYS)
        if loss is not None:
            train_steps.append(int(row["step"]))
            train_loss.append(loss)
        val = _first_finite(row, _VAL_KEYS)
        if val is not None:
            val_steps.append(int(row["step"]))
            val_loss.append(val)
            val_acc.append(_first_finite(row, _ACC_KEYS))
    if all(a is None for a in val_acc):
        val_acc = []
    note, diverges_at = overfitting_note(train_steps, train_loss, val_steps, val_loss)
    return Curves(
        run_id=run_id, label=label, train_steps=train_steps, train_loss=train_loss,
        train_loss_smooth=moving_average(train_loss, smoothing_window(len(train_loss))),
        val_steps=val_steps, val_loss=val_loss, val_accuracy=val_acc, note=note, diverges_at=diverges_at,
    )  # fmt: skip


def smoothing_window(points: int) -> int:
    """About a tenth of the run, so a 20-step run stays readable and a 2,000-step run is smooth."""
    return max(1, min(50, points // 10))


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean of the last ``window`` values at each point (the first points average fewer)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def overfitting_note(
    train_steps: Sequence[int],
    train_loss: Sequence[float | None],
    val_steps: Sequence[int],
    val_loss: Sequence[float | None],
) -> tuple[str, int | None]:
    """A sentence on how validation went, and the step of the best validation loss when validation
    rose after it (the checkpoint to keep), else None."""
    val = [(s, v) for s, v in zip(val_steps, val_loss, strict=True) if _finite(v)]
    if not val:
        return NO_VALIDATION, None
    if len(val) < MIN_VAL_POINTS:
        return TOO_FEW, None
    best = min(range(len(val)), key=lambda i: val[i][1])  # the first best on ties: the earliest checkpoint
    best_step, best_loss = val[best]
    limit = best_loss + max(TOLERANCE * abs(best_loss), ABS_TOLERANCE)
    rise = _rise_after(val[best + 1 :], limit)
    if rise is None:
        return _healthy_note(val, best), None
    end_step, end_loss = rise
    before = _mean_train_loss(train_steps, train_loss, _previous_step(val, best), best_step)
    after = _mean_train_loss(train_steps, train_loss, _previous_step(val, val.index(rise)), end_step)
    rose = (
        f"Validation loss rose from {best_loss:.2f} at step {best_step} to {end_loss:.2f} at step {end_step}"
    )
    if before is not None and after is not None and after >= before:
        return (
            f"{rose} and training loss rose too ({before:.2f} to {after:.2f}): training became unstable. "
            f"Lower the learning rate, or use the checkpoint at step {best_step}.",
            best_step,
        )
    falling = " while training loss kept falling" if before is not None and after is not None else ""
    return (
        f"{rose}{falling}: the model is starting to memorise the training rows (overfitting). "
        f"Use the checkpoint at step {best_step}, stop earlier, or add data/regularisation.",
        best_step,
    )


def _rise_after(later: list[tuple[int, float]], limit: float) -> tuple[int, float] | None:
    """The last evaluation of the first stretch of at least RISE_EVALUATIONS points above ``limit``."""
    streak: list[tuple[int, float]] = []
    for point in later:
        if point[1] > limit:
            streak.append(point)
            continue
        if len(streak) >= RISE_EVALUATIONS:
            break
        streak = []
    return streak[-1] if len(streak) >= RISE_EVALUATIONS else None


def _healthy_note(val: list[tuple[int, float]], best: int) -> str:
    (first_step, first), (last_step, last) = val[0], val[-1]
    best_step, best_loss = val[best]
    if best == len(val) - 1:
        return (
            f"Validation loss fell from {first:.2f} at step {first_step} to {last:.2f} at step {last_step}: "
            "no sign of overfitting."
        )
    return (
        f"Validation loss went from {first:.2f} at step {first_step} to {last:.2f} at step {last_step} "
        f"(best {best_loss:.2f} at step {best_step}); it did not stay above its best for two evaluations "
        "in a row: no clear sign of overfitting."
    )


def _previous_step(val: list[tuple[int, float]], index: int) -> int:
    """The evaluation before ``index`` (0 for the first): the training window that led to it starts there."""
    return val[index - 1][0] if index > 0 else 0


def _mean_train_loss(
    steps: Sequence[int], losses: Sequence[float | None], after: int, upto: int
) -> float | None:
    """Mean training loss over the steps in (after, upto]: per-step losses are too noisy alone."""
    window = [v for s, v in zip(steps, losses, strict=True) if after < s <= upto and _finite(v)]
    return statistics.fmean(window) if window else None


def _first_finite(row: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = row.get(key)
        if _finite(value):
            return float(value)
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
