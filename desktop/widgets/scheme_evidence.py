"""The evidence behind one tensor's recommendation: the six measured schemes side by side with
the rule of thumb's reasoning, and whether the two agree."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.widgets.tensor_table import fmt

HEADERS = ("Scheme", "MSE", "SQNR dB", "Scale bits", "Score dB")
BEST_BG = QColor("#dff3e4")
AGREE = "The rule and the measurement agree."
DISAGREE = "They disagree: the measurement decides."


class SchemeEvidence(QWidget):
    """``show_tensor(tensor_report, bits, group_size)`` fills it; ``clear()`` empties it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.title.setObjectName("sectionTitle")
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.context = QLabel()
        self.context.setObjectName("hint")
        self.context.setWordWrap(True)
        self.table = self._make_table()
        self.rule = QLabel(wordWrap=True)
        self.verdict = QLabel(wordWrap=True)
        self.agreement = QLabel(wordWrap=True)
        self.best_row = -1
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.title, self.context, self.table, self.rule, self.verdict, self.agreement):
            layout.addWidget(widget)
        layout.addStretch(1)
        self.clear()

    def _make_table(self) -> QTableWidget:
        table = QTableWidget(0, len(HEADERS))
        table.setHorizontalHeaderLabels(HEADERS)
        table.horizontalHeaderItem(3).setToolTip("bits per weight spent on scales and zero points")
        table.horizontalHeaderItem(4).setToolTip(
            "SQNR less 6.02 dB per scale bit (and less the asymmetric margin): the highest wins"
        )
        table.verticalHeader().hide()
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        row_height = table.fontMetrics().height() + 8
        table.verticalHeader().setDefaultSectionSize(row_height)
        table.setFixedHeight(6 * row_height + header.sizeHint().height() + 4)
        return table

    def clear(self, message: str = "Select a tensor in the table to see its evidence.") -> None:
        self.title.setText("")
        self.context.setText(message)
        self.table.setRowCount(0)
        self.table.hide()
        self.best_row = -1
        for label in (self.rule, self.verdict, self.agreement):
            label.clear()
            label.hide()

    def show_tensor(self, t: Any, bits: int, group_size: int) -> None:
        s, rec = t.stats, t.recommendation
        self.title.setText(s.name)
        shape = "×".join(map(str, s.shape))
        self.context.setText(
            f"{s.module}, {shape}, {s.params:,} weights. Measured at INT{bits}, groups of {group_size}."
        )
        self._fill(rec, f"INT{bits} ")
        self.rule.setText(f"<b>Rule of thumb:</b> {html.escape(rec.rule_reason)}")
        self.rule.show()
        self.verdict.setText(self._verdict(rec, s))
        self.verdict.show()
        self._show_agreement(rec.agree)

    def _fill(self, rec: Any, prefix: str) -> None:
        self.table.setRowCount(len(rec.measured))
        self.table.setVisible(bool(rec.measured))
        self.best_row = -1
        bold = QFont(self.font())
        bold.setBold(True)
        for row, r in enumerate(rec.measured):
            best = rec.best is not None and r.label == rec.best.label
            # The bit width is the same on every row (the line above says it): leave it out.
            cells = (
                r.label.removeprefix(prefix),
                fmt(r.mse, ".3g"),
                fmt(r.sqnr_db, ".2f"),
                fmt(r.overhead_bits, ".3f"),
                fmt(r.score_db, ".2f"),
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if best:
                    item.setBackground(QBrush(BEST_BG))
                    item.setFont(bold)
                self.table.setItem(row, column, item)
            if best:
                self.best_row = row
                self.table.item(row, 0).setToolTip("the best score: the recommendation")

    @staticmethod
    def _verdict(rec: Any, stats: Any) -> str:
        if rec.best is not None:
            return (
                f"<b>Measurement:</b> {html.escape(rec.best.label)} scores best "
                f"(SQNR {fmt(rec.best.sqnr_db, '.1f')} dB, {fmt(rec.best.overhead_bits, '.3f')} "
                "scale bits per weight)."
            )
        why = "; ".join(stats.flags) or "the rule could not judge it"
        return f"<b>Not measured</b> ({html.escape(why)}): recommendation “{html.escape(rec.label)}”."

    def _show_agreement(self, agree: bool | None) -> None:
        if agree is None:
            self.agreement.hide()
            return
        self.agreement.setText(AGREE if agree else DISAGREE)
        self.agreement.setStyleSheet("color: #2e7d46;" if agree else "color: #a65d00; font-weight: 600;")
        self.agreement.show()

    def scheme_labels(self) -> list[str]:
        """The rows' schemes as shown (without the bit width)."""
        return [self.table.item(r, 0).text() for r in range(self.table.rowCount())]
