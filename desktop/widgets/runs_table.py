"""The project's quantize runs side by side: scheme and method, size, bits per weight, perplexity
before and after, time. The best perplexity and the smallest size are shown in bold."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.formatting import format_bytes, format_seconds
from desktop.widgets.tables import read_only_table

COLUMNS = ("Run", "Size", "Bits/weight", "Perplexity before", "Perplexity after", "Change", "Time", "When")
ID_ROLE = Qt.ItemDataRole.UserRole + 1


class RunsTable(QWidget):
    """Signals: ``showRequested(str)`` (run id: show its report), ``deleteRequested(str)``,
    ``loadRequested(str)`` (load that quantized model into the app, e.g. to ask it),
    ``exportRequested(str)`` (copy the saved model to a folder of the user's choice)."""

    showRequested = Signal(str)
    deleteRequested = Signal(str)
    loadRequested = Signal(str)
    exportRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = read_only_table(COLUMNS)
        self.table.doubleClicked.connect(self._on_show)
        self.show_button = QPushButton("Show report")
        self.load_button = QPushButton("Load this model")
        self.load_button.setToolTip(
            "Load it from disk to see its scales and ask it (checks its outputs against the recorded ones)"
        )
        self.export_button = QPushButton("Save a copy…")
        self.export_button.setToolTip(
            "Copy this quantized model (weights, scales, config, tokenizer) to a folder"
        )
        self.delete_button = QPushButton("Delete run…")
        for button, slot in (
            (self.show_button, self._on_show),
            (self.load_button, self._on_load),
            (self.export_button, self._on_export),
            (self.delete_button, self._on_delete),
        ):
            button.clicked.connect(slot)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        buttons = QHBoxLayout()
        for button in (self.show_button, self.load_button, self.export_button, self.delete_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self._update_buttons()

    def set_runs(self, runs: list[dict[str, Any]]) -> None:
        self.table.setRowCount(len(runs))
        best = _best(runs)
        for row, run in enumerate(runs):
            s = run.get("summary", {})
            before, after = s.get("perplexity_before"), s.get("perplexity_after")
            cells = (
                run.get("label", run["id"]),
                format_bytes(s.get("size_after_bytes") or 0),
                f"{s.get('bits_per_weight') or 0:.2f}",
                f"{before:.2f}" if before else "—",
                f"{after:.2f}" if after else "—",
                f"{100 * (after - before) / before:+.1f}%" if before and after else "—",
                format_seconds(s.get("seconds") or 0),
                run.get("created", "").replace("T", " ")[:16],
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(ID_ROLE, run["id"])
                if column:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if (column == 1 and run["id"] == best.get("size")) or (
                    column == 4 and run["id"] == best.get("ppl")
                ):
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(row, column, item)
        self._update_buttons()

    def selected_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        return self.table.item(rows[0].row(), 0).data(ID_ROLE) if rows else None

    def select(self, run_id: str) -> None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(ID_ROLE) == run_id:
                self.table.selectRow(row)
                return

    @Slot()
    def _update_buttons(self) -> None:
        chosen = self.selected_id() is not None
        for button in (self.show_button, self.load_button, self.export_button, self.delete_button):
            button.setEnabled(chosen)

    @Slot()
    def _on_show(self, *_: Any) -> None:
        if (run_id := self.selected_id()) is not None:
            self.showRequested.emit(run_id)

    @Slot()
    def _on_load(self) -> None:
        if (run_id := self.selected_id()) is not None:
            self.loadRequested.emit(run_id)

    @Slot()
    def _on_export(self) -> None:
        if (run_id := self.selected_id()) is not None:
            self.exportRequested.emit(run_id)

    @Slot()
    def _on_delete(self) -> None:
        if (run_id := self.selected_id()) is not None:
            self.deleteRequested.emit(run_id)


def _best(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Run ids of the smallest model and of the lowest perplexity after quantizing."""
    best: dict[str, str] = {}
    sized = [r for r in runs if r.get("summary", {}).get("size_after_bytes")]
    if sized:
        best["size"] = min(sized, key=lambda r: r["summary"]["size_after_bytes"])["id"]
    measured = [r for r in runs if r.get("summary", {}).get("perplexity_after")]
    if measured:
        best["ppl"] = min(measured, key=lambda r: r["summary"]["perplexity_after"])["id"]
    return best
