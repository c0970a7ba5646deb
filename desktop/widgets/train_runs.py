"""The project's training runs and the checkpoints of the chosen one: status, steps, losses and
time, with the actions on a run (show its curves, resume from a checkpoint, load it to ask,
delete it). A run recorded as running that no job is running was interrupted (a crash, a kill)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTableWidgetItem, QVBoxLayout, QWidget

from desktop.formatting import format_seconds
from desktop.widgets.tables import read_only_table

RUN_COLUMNS = ("Run", "Status", "Steps", "Final loss", "Best validation loss", "Time", "Started")
CHECKPOINT_COLUMNS = ("Step", "Loss", "Saved")
ID_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_TEXT = {"running": "running", "finished": "finished", "stopped": "stopped (resumable)",
               "failed": "failed", "interrupted": "interrupted (resumable)"}  # fmt: skip


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, (int, float)) else "—"


class TrainRuns(QWidget):
    """Signals: ``runSelected(str)``; ``resumeRequested(str, Path)`` (run id, checkpoint folder);
    ``loadRequested(str)``; ``deleteRequested(str)``."""

    runSelected = Signal(str)
    resumeRequested = Signal(str, object)
    loadRequested = Signal(str)
    deleteRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runs = read_only_table(RUN_COLUMNS)
        self.checkpoints = read_only_table(CHECKPOINT_COLUMNS)
        self.runs.itemSelectionChanged.connect(self._on_run_selected)
        self.checkpoints.itemSelectionChanged.connect(self._update_buttons)
        self.resume_button = QPushButton("Resume from this checkpoint")
        self.resume_button.setObjectName("primary")
        self.load_button = QPushButton("Load this model to ask it")
        self.delete_button = QPushButton("Delete run…")
        self.resume_button.clicked.connect(self._on_resume)
        self.load_button.clicked.connect(lambda: self._emit_for_run(self.loadRequested))
        self.delete_button.clicked.connect(lambda: self._emit_for_run(self.deleteRequested))
        buttons = QHBoxLayout()
        for button in (self.resume_button, self.load_button, self.delete_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.checkpoint_label = QLabel("Checkpoints of the chosen run", objectName="hint")
        layout = QVBoxLayout(self)
        layout.addWidget(self.runs, 3)
        layout.addWidget(self.checkpoint_label)
        layout.addWidget(self.checkpoints, 2)
        layout.addLayout(buttons)
        self._records: list[dict] = []
        self._checkpoints: list[tuple] = []
        self._finished: set[str] = set()
        self.busy = False  # a training job runs: no resume, load or delete meanwhile
        self._update_buttons()

    def set_runs(self, records: list[dict], finished: set[str], select: str | None = None) -> None:
        """``finished``: ids of runs whose final model exists."""
        keep = select or self.selected_id()
        self._records, self._finished = list(reversed(records)), finished  # newest first
        self.runs.blockSignals(True)
        self.runs.setRowCount(len(self._records))
        for row, r in enumerate(self._records):
            s = r.get("summary") or {}
            cells = (r["label"], STATUS_TEXT.get(r["status"], r["status"]), str(s.get("steps") or "—"),
                     _number(s.get("final_train_loss")), _number(s.get("best_validation_loss")),
                     format_seconds(s["seconds"]) if s.get("seconds") else "—",
                     r["created"].replace("T", " ")[:16])  # fmt: skip
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(ID_ROLE, r["id"])
                self.runs.setItem(row, col, item)
        rows = [i for i, r in enumerate(self._records) if r["id"] == keep]
        if self._records:
            self.runs.selectRow(rows[0] if rows else 0)
        self.runs.blockSignals(False)
        self._on_run_selected()  # the selected run's checkpoints may have changed, if not the run

    def set_checkpoints(self, checkpoints: list[tuple[int, float, float, Path]]) -> None:
        self._checkpoints = list(checkpoints)
        self.checkpoints.setRowCount(len(checkpoints))
        for row, (step, loss, saved, _path) in enumerate(checkpoints):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved))
            for col, text in enumerate((str(step), _number(loss), when)):
                self.checkpoints.setItem(row, col, QTableWidgetItem(text))
        if checkpoints:
            self.checkpoints.selectRow(len(checkpoints) - 1)  # the latest
        self._update_buttons()

    def selected_id(self) -> str | None:
        rows = self.runs.selectionModel().selectedRows()
        return self.runs.item(rows[0].row(), 0).data(ID_ROLE) if rows else None

    def selected_checkpoint(self) -> Path | None:
        rows = self.checkpoints.selectionModel().selectedRows()
        return self._checkpoints[rows[0].row()][3] if rows else None

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self._update_buttons()

    @Slot()
    def _on_run_selected(self) -> None:
        run_id = self.selected_id()
        if run_id is None:
            self.set_checkpoints([])
        self._update_buttons()
        if run_id is not None:
            self.runSelected.emit(run_id)

    def _update_buttons(self) -> None:
        run_id = self.selected_id()
        idle = run_id is not None and not self.busy
        self.resume_button.setEnabled(idle and self.selected_checkpoint() is not None)
        self.load_button.setEnabled(idle and run_id in self._finished)
        self.delete_button.setEnabled(idle)

    def _emit_for_run(self, signal: Any) -> None:
        run_id = self.selected_id()
        if run_id is not None:
            signal.emit(run_id)

    @Slot()
    def _on_resume(self) -> None:
        run_id, checkpoint = self.selected_id(), self.selected_checkpoint()
        if run_id is not None and checkpoint is not None:
            self.resumeRequested.emit(run_id, checkpoint)
