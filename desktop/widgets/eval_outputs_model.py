"""The Evaluate step's output table model: the shown test examples (rows) × the row of the file,
the input, the reference and each variant's output (columns), served on demand, so 500 examples × 8
variants shows at once. A variant's cell is tinted red where the task's rule calls the output wrong
and green where right; plain-text tasks have no right or wrong, so nothing is tinted there.
Rows are numbered as the app numbers the file's rows: from 1.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor

from core.evaluate import metrics
from core.evaluate.results import Evaluation

FIXED = ("Row", "Input", "Reference")
INPUT, REFERENCE = 1, 2
WRONG_BG, RIGHT_BG = QColor("#f9dcd8"), QColor("#dff1dc")
NO_VERDICT_TASKS = ("text", "causal_lm")  # plain (domain) text: scored by perplexity, never "wrong"
MARK_PREFIX = {"good": "✓ ", "bad": "✗ "}
CELL_CHARS = 300  # a cell shows one line; the tooltip and the detail view show the whole text
TOOLTIP_CHARS = 1500


def _line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= CELL_CHARS else flat[: CELL_CHARS - 1] + "…"


def _tip(text: str) -> str:
    return text if len(text) <= TOOLTIP_CHARS else text[: TOOLTIP_CHARS - 1] + "…"


class OutputsModel(QAbstractTableModel):
    """Shown examples (rows) × Row, Input, Reference and one column per variant."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.evaluation: Evaluation | None = None
        self.shown: list[int] = []  # example indices, in the evaluation's order
        self.wrong: list[list[bool | None]] = []  # [variant][example]: None where there is no score
        self.marks: dict[tuple[int, int], str] = {}  # (variant index, example index) -> "good" | "bad"
        self._lines: list[list[str]] = []  # [example]: input, reference, each variant's output on one line

    def set_evaluation(self, evaluation: Evaluation | None, wrong: list, marks: dict) -> None:
        self.beginResetModel()
        self.evaluation, self.wrong, self.marks = evaluation, wrong, marks
        examples = evaluation.examples if evaluation else []
        self._lines = [
            [_line(e.prompt), _line(e.reference)] + [_line(output_at(v, i)) for v in evaluation.variants]
            for i, e in enumerate(examples)
        ]
        self.shown = list(range(len(examples)))
        self.endResetModel()

    def set_shown(self, shown: list[int]) -> None:
        self.beginResetModel()
        self.shown = shown
        self.endResetModel()

    def set_mark(self, variant: int, example: int, mark: str | None) -> None:
        if mark is None:
            self.marks.pop((variant, example), None)
        else:
            self.marks[(variant, example)] = mark
        if example in self.shown:
            cell = self.index(self.shown.index(example), len(FIXED) + variant)
            self.dataChanged.emit(cell, cell)

    # -- QAbstractTableModel --------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        return 0 if parent.isValid() else len(self.shown)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008, N802
        if parent.isValid() or self.evaluation is None:
            return 0
        return len(FIXED) + len(self.evaluation.variants)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Vertical or self.evaluation is None:
            return None
        variants = self.evaluation.variants
        if role == Qt.ItemDataRole.DisplayRole:
            return FIXED[section] if section < len(FIXED) else variants[section - len(FIXED)].label
        if role == Qt.ItemDataRole.ToolTipRole:
            if section == 0:
                return "The example's row of the dataset file, counting from 1"
            if section >= len(FIXED):
                variant = variants[section - len(FIXED)]
                return f"{variant.label} ({variant.kind})" + (f"\n{variant.error}" if variant.error else "")
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or self.evaluation is None:
            return None
        example, column = self.shown[index.row()], index.column()
        variant = column - len(FIXED)
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return str(self.evaluation.examples[example].row + 1)
            text = self._lines[example][column - 1]
            if variant < 0:
                return text
            return MARK_PREFIX.get(self.marks.get((variant, example), ""), "") + (text or "—")
        if role == Qt.ItemDataRole.ToolTipRole and column > 0:
            return self._tooltip(example, column)
        if role == Qt.ItemDataRole.BackgroundRole and variant >= 0:
            wrong = self.wrong[variant][example]
            return None if wrong is None else QBrush(WRONG_BG if wrong else RIGHT_BG)
        if role == Qt.ItemDataRole.TextAlignmentRole and column == 0:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _tooltip(self, example: int, column: int) -> str:
        e = self.evaluation.examples[example]
        if column == INPUT:
            return _tip(e.prompt)
        if column == REFERENCE:
            return _tip(e.reference)
        variant = self.evaluation.variants[column - len(FIXED)]
        return _tip(output_at(variant, example)) or variant.error or "No output"


def output_at(variant: Any, example: int) -> str:
    """The variant's output for an example ("" when it has none: a variant that failed)."""
    return variant.outputs[example] if example < len(variant.outputs) else ""


def judged(evaluation: Evaluation | None) -> bool:
    """Whether the task says right or wrong: plain text (no question, no answer) has no verdict."""
    return evaluation is not None and evaluation.task not in NO_VERDICT_TASKS


def wrong_of(evaluation: Evaluation, variant: Any, example: int) -> bool | None:
    """The task's verdict on one output; None (no tint) for plain text, and without a reference or
    scores to judge by."""
    scores = variant.example_scores[example] if example < len(variant.example_scores) else None
    if not judged(evaluation) or not scores or example >= len(variant.outputs):
        return None
    if not evaluation.examples[example].reference:
        return None
    return bool(metrics.is_wrong(evaluation.task, scores))
