"""The loaded model's card: what it is, how big, and what it costs in memory per precision."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.formatting import format_bytes, format_count
from desktop.widgets.collapsible import Collapsible

NO_MODEL = "No model is loaded yet: choose one on the left."
PRECISIONS = ("FP32", "FP16", "BF16", "INT8", "INT4")
# (label, card field, formatter): the order the card reads in.
FIELDS = (
    ("Name", "name", str),
    ("Architecture", "architecture", str),
    ("Parameters", "parameters", lambda n: f"{format_count(n)}  ({n:,})"),
    ("Layers", "layers", str),
    ("Hidden size", "hidden_size", str),
    ("Vocabulary", "vocab_size", lambda n: f"{n:,} tokens"),
    ("Weights stored as", "dtype", str),
    ("Size on disk", "size_on_disk_bytes", format_bytes),
    ("Device", "device", str),
    ("Context length", "context_length", lambda n: f"{n:,} tokens"),
)


def _show(value: Any, formatter) -> str:
    return "unknown" if value is None or value == "" else formatter(value)


class ModelCardView(QWidget):
    """``set_card(card)`` with a core.models.card.ModelCard, or None before any model loads."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.none_label = QLabel(NO_MODEL)
        self.none_label.setWordWrap(True)
        self.none_label.setObjectName("hint")
        self.values: dict[str, QLabel] = {}
        self.form = QWidget()
        form = QFormLayout(self.form)
        form.setContentsMargins(0, 0, 0, 0)
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        for label, key, _ in FIELDS:
            value = QLabel(textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
            value.setWordWrap(True)
            self.values[key] = value
            form.addRow(f"{label}:", value)
        self.memory = self._memory_table()
        self.memory_caption = QLabel()
        self.memory_caption.setObjectName("hint")
        self.memory_caption.setWordWrap(True)
        self.template = QPlainTextEdit(readOnly=True)
        self.template.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.template.setMinimumHeight(160)
        self.template_section = Collapsible("Chat template", self.template)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.none_label)
        layout.addWidget(self.form)
        layout.addWidget(self.memory)
        layout.addWidget(self.memory_caption)
        layout.addWidget(self.template_section)
        self.set_card(None)

    def _memory_table(self) -> QTableWidget:
        table = QTableWidget(len(PRECISIONS), 3)
        table.setHorizontalHeaderLabels(["Precision", "Weights in memory", "vs FP32"])
        table.verticalHeader().hide()
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for row, precision in enumerate(PRECISIONS):
            table.setItem(row, 0, QTableWidgetItem(precision))
        rows_height = sum(table.rowHeight(r) for r in range(len(PRECISIONS)))
        table.setFixedHeight(rows_height + table.horizontalHeader().sizeHint().height() + 4)
        return table

    def set_waiting(self, text: str) -> None:
        """What to say while no card is shown (e.g. which model is loading)."""
        self.none_label.setText(text or NO_MODEL)

    def set_card(self, card: Any | None) -> None:
        loaded = card is not None
        self.none_label.setVisible(not loaded)
        for widget in (self.form, self.memory, self.memory_caption, self.template_section):
            widget.setVisible(loaded)
        if not loaded:
            return
        data = card.to_dict()
        for _, key, formatter in FIELDS:
            self.values[key].setText(_show(data.get(key), formatter))
        self._fill_memory(data.get("memory_bytes") or {})
        template = data.get("chat_template")
        self.template.setPlainText(
            template or "This model has no chat template: prompts are sent as plain text."
        )

    def _fill_memory(self, memory: dict[str, int]) -> None:
        full = memory.get("FP32")
        for row, precision in enumerate(PRECISIONS):
            size = memory.get(precision)
            share = f"{size / full:.0%}" if size and full else ""
            for column, text in ((1, format_bytes(size) if size else "unknown"), (2, share)):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.memory.setItem(row, column, item)
        self.memory_caption.setText(
            "Memory for the weights alone; running the model needs more for activations. "
            "INT8 and INT4 include one 16-bit scale per group of 64 weights."
        )

    def text_of(self, key: str) -> str:
        return self.values[key].text()

    def memory_text(self, precision: str) -> str:
        return self.memory.item(PRECISIONS.index(precision), 1).text()
