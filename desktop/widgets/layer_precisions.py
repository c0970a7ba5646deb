"""Per-layer precision: every linear layer with its weight count and the precision it will get,
and buttons that keep the selected layers at another precision (a sensitive layer at 8 or 16 bits).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.formatting import format_count

OVERRIDE_CHOICES = (("int8", "INT8"), ("fp16", "FP16"), ("fp32", "FP32 (leave as is)"))
NAMES = {"fp32": "FP32", "fp16": "FP16", "bf16": "BF16", "nf4": "NF4", "fp4": "FP4"}


def precision_name(precision: str) -> str:
    return NAMES.get(precision, precision.upper())


class LayerPrecisionTable(QWidget):
    """Signal ``overridesChanged(dict)``: the new {layer name: precision} after a button press."""

    overridesChanged = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layers: dict[str, tuple[int, ...]] = {}
        self._overrides: dict[str, str] = {}
        self._default = "int4"
        self._hidden: set[str] = set()  # layers not quantized at all (e.g. the LM head when not chosen)
        self.filter_edit = QLineEdit(placeholderText="Filter layers (e.g. down_proj, layers.0.)")
        self.filter_edit.setClearButtonEnabled(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Layer", "Weights", "Precision"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.buttons: dict[str, QPushButton] = {}
        row = QHBoxLayout()
        row.addWidget(QLabel("Keep the selected layers at"))
        for key, text in OVERRIDE_CHOICES:
            self.buttons[key] = QPushButton(text)
            self.buttons[key].clicked.connect(lambda _=False, k=key: self.set_selected(k))
            row.addWidget(self.buttons[key])
        self.reset_button = QPushButton("Default")
        self.reset_button.setToolTip("The selected layers follow the model's precision again")
        self.reset_button.clicked.connect(lambda: self.set_selected(None))
        row.addWidget(self.reset_button)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.table, 1)
        layout.addLayout(row)
        self.filter_edit.textChanged.connect(self._apply_filter)

    def set_layers(self, layers: dict[str, tuple[int, ...]]) -> None:
        """Layer name -> weight shape, in model order."""
        self._layers = dict(layers)
        self.table.setRowCount(len(layers))
        for i, (name, shape) in enumerate(layers.items()):
            numel = 1
            for d in shape:
                numel *= d
            weights = QTableWidgetItem(format_count(numel))
            weights.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(i, 0, QTableWidgetItem(name))
            self.table.setItem(i, 1, weights)
            self.table.setItem(i, 2, QTableWidgetItem())
        self._refresh()
        self._apply_filter(self.filter_edit.text())

    def set_values(self, default: str, overrides: dict[str, str]) -> None:
        self._default, self._overrides = default, dict(overrides)
        self._refresh()

    def set_hidden(self, names: list[str]) -> None:
        if set(names) != self._hidden:
            self._hidden = set(names)
            self._apply_filter(self.filter_edit.text())

    def overrides(self) -> dict[str, str]:
        return dict(self._overrides)

    def selected_names(self) -> list[str]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.table.item(r, 0).text() for r in rows]

    def select(self, names: list[str]) -> None:
        self.table.clearSelection()
        mode = self.table.selectionModel()
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).text() in names:
                index = self.table.model().index(row, 0)
                mode.select(index, mode.SelectionFlag.Select | mode.SelectionFlag.Rows)

    @Slot()
    def set_selected(self, precision: str | None) -> None:
        for name in self.selected_names():
            if precision is None or precision == self._default:
                self._overrides.pop(name, None)
            else:
                self._overrides[name] = precision
        self._refresh()
        self.overridesChanged.emit(self.overrides())

    def _refresh(self) -> None:
        for row in range(self.table.rowCount()):
            name = self.table.item(row, 0).text()
            chosen = self._overrides.get(name)
            item = self.table.item(row, 2)
            item.setText(precision_name(chosen or self._default) + ("  (kept)" if chosen else ""))
            font = item.font()
            font.setBold(chosen is not None)
            item.setFont(font)

    @Slot(str)
    def _apply_filter(self, text: str) -> None:
        text = text.strip().lower()
        for row in range(self.table.rowCount()):
            name = self.table.item(row, 0).text()
            self.table.setRowHidden(row, name in self._hidden or (bool(text) and text not in name.lower()))
