"""The confusion matrix of one classifier variant in the Evaluate step's results: rows are the true
labels, columns the predicted ones (and "other" for an output that is no label), each cell tinted
by its count — right answers blue on the diagonal, confusions red."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

RIGHT_HUE, WRONG_HUE = "#2e86c1", "#c0392b"


def confusion(
    labels: list[str], references: list[str], outputs: list[str]
) -> tuple[list[str], list[list[int]]]:
    """(predicted columns, counts[true][predicted]); an output that is no label counts as "other".

    Counted here rather than with scikit-learn: the outputs are already label strings, and the
    table is drawn in the GUI thread, where scikit-learn's import would cost half a second.
    """
    columns = list(labels)
    if any(o.strip() not in labels for o in outputs):
        columns.append("other")
    index = {label: i for i, label in enumerate(columns)}
    counts = [[0] * len(columns) for _ in labels]
    for ref, out in zip(references, outputs, strict=False):
        if ref in index and index[ref] < len(labels):
            counts[index[ref]][index.get(out.strip(), len(columns) - 1)] += 1
    return columns, counts


class ConfusionView(QWidget):
    """``show_result(evaluation, result)``: the matrix of one variant's outputs on the evaluation's
    examples (the caller hides the view where the task has no labels)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel("Confusion matrix", objectName="sectionTitle")
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.table, 1)

    def show_result(self, evaluation: Any, result: Any) -> None:
        labels = list(evaluation.labels)
        references = [e.reference for e in evaluation.examples]
        columns, counts = confusion(labels, references, result.outputs)
        self.title.setText(f"Confusion matrix of {result.label} (rows: true label; columns: predicted)")
        self.table.setRowCount(len(labels))
        self.table.setColumnCount(len(columns))
        self.table.setVerticalHeaderLabels(labels)
        self.table.setHorizontalHeaderLabels(columns)
        peak = max((n for row in counts for n in row), default=0) or 1
        for i, row in enumerate(counts):
            for j, n in enumerate(row):
                item = QTableWidgetItem(str(n))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                color = QColor(RIGHT_HUE if i == j else WRONG_HUE)
                color.setAlphaF(0.08 + 0.6 * n / peak if n else 0.0)
                item.setBackground(QBrush(color))
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
