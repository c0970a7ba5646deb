"""Training monitoring in the Evaluate step: for a chosen fine-tuning run, training loss (raw and
smoothed) and validation loss against step, validation accuracy when the run logged it, a line
where validation started to diverge, and core.evaluate.curves' note in plain words.

The runs are finished history, not live: curves are made once and only their data changes when
another run is chosen. Importing this module imports pyqtgraph.
"""

from __future__ import annotations

import math
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QStackedWidget, QVBoxLayout, QWidget

from core.evaluate.curves import Curves, run_curves
from desktop.widgets import weight_plots

NO_RUNS = "No fine-tuning runs yet: train one in the Train step."
NO_STEPS = "This run logged no training steps yet."
RAW_PEN = pg.mkPen(QColor(31, 111, 209, 70), width=1)  # faint: the noise, under the trend
SMOOTH_PEN = pg.mkPen("#1f6fd1", width=2.5)
VAL_PEN = pg.mkPen("#e07b00", width=2)
ACC_PEN = pg.mkPen("#2e8b57", width=2)
DIVERGE_PEN = pg.mkPen("#c0392b", width=1.5, style=Qt.PenStyle.DashLine)


def _finite(values: list[float | None]) -> list[float]:
    return [v if v is not None and math.isfinite(v) else math.nan for v in values]


class CurvesView(QWidget):
    """``show_project(project)`` lists its training runs (newest first) and draws the chosen one;
    ``runChosen(str)`` is emitted with the run id the user picks."""

    runChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project: Any = None
        self.curves: Curves | None = None
        self._records: list[dict] = []
        self.run_box = QComboBox()
        self.run_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.run_box.currentIndexChanged.connect(self._on_run_chosen)
        self.note = QLabel(wordWrap=True, textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
        self.empty = QLabel(NO_RUNS, wordWrap=True, alignment=Qt.AlignmentFlag.AlignTop)
        self.empty.setMargin(12)
        self.loss_plot = weight_plots._plot("Loss", "step", "loss")
        self.accuracy_plot = weight_plots._plot("Validation accuracy", "step", "accuracy")
        self.accuracy_plot.setMaximumHeight(180)
        self.accuracy_plot.setXLink(self.loss_plot)
        self._make_items()
        self.pages = QStackedWidget()
        self.pages.addWidget(self.empty)
        self.pages.addWidget(self._runs_page())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pages)
        self.show_project(None)

    def _make_items(self) -> None:
        loss = self.loss_plot.getPlotItem()
        loss.addLegend(offset=(-10, 10))
        self.raw_curve = loss.plot([], [], pen=RAW_PEN, name="training (each step)", connect="finite")
        self.smooth_curve = loss.plot(
            [], [], pen=SMOOTH_PEN, name="training (moving average)", connect="finite"
        )
        self.val_curve = loss.plot([], [], pen=VAL_PEN, name="validation", symbol="o", symbolSize=7,
                                   symbolBrush=VAL_PEN.color(), connect="finite")  # fmt: skip
        self.accuracy_curve = self.accuracy_plot.getPlotItem().plot(
            [], [], pen=ACC_PEN, symbol="o", symbolSize=6, symbolBrush=ACC_PEN.color(), connect="finite"
        )
        for curve in (self.raw_curve, self.smooth_curve):
            curve.setDownsampling(auto=True, method="peak")  # a long run: one point per pixel
        self.diverge_line = pg.InfiniteLine(
            angle=90, movable=False, pen=DIVERGE_PEN, label="validation diverges from here",
            labelOpts={"position": 0.7, "color": "#c0392b", "anchors": [(0, 1), (0, 1)]},
        )  # fmt: skip
        loss.addItem(self.diverge_line, ignoreBounds=True)

    def _runs_page(self) -> QWidget:
        page = QWidget()
        top = QHBoxLayout()
        top.addWidget(QLabel("Training run"))
        top.addWidget(self.run_box)
        top.addStretch(1)
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.note)
        layout.addWidget(self.loss_plot, 3)
        layout.addWidget(self.accuracy_plot, 1)
        return page

    # -- showing --------------------------------------------------------------------------
    def show_project(self, project: Any, select: str | None = None) -> None:
        """The project's training runs (None: no project), keeping the chosen one (or ``select``)."""
        keep = select or self.selected_id()
        self.project = project
        self._records = list(reversed(project.train_runs)) if project is not None else []
        self.pages.setCurrentIndex(1 if self._records else 0)
        self.run_box.blockSignals(True)
        self.run_box.clear()
        for r in self._records:
            when = str(r.get("created", "")).replace("T", " ")[:16]
            self.run_box.addItem(f"{r.get('label', r['id'])} · {when}", r["id"])
        found = self.run_box.findData(keep) if keep else -1
        self.run_box.setCurrentIndex(max(found, 0) if self._records else -1)
        self.run_box.blockSignals(False)
        self._draw_selected()

    def selected_id(self) -> str | None:
        return self.run_box.currentData()

    @Slot(int)
    def _on_run_chosen(self, _index: int) -> None:
        self._draw_selected()
        if self.selected_id():
            self.runChosen.emit(self.selected_id())

    def _draw_selected(self) -> None:
        record = next((r for r in self._records if r["id"] == self.selected_id()), None)
        self.show_curves(run_curves(self.project, record) if record is not None else None)

    def show_curves(self, curves: Curves | None) -> None:
        """Draw one run's curves (None: clear)."""
        self.curves = curves
        c = curves or Curves("", "")
        self.raw_curve.setData(c.train_steps, _finite(c.train_loss))
        self.smooth_curve.setData(c.train_steps, _finite(c.train_loss_smooth))
        self.val_curve.setData(c.val_steps, _finite(c.val_loss))
        has_accuracy = any(a is not None for a in c.val_accuracy)
        self.accuracy_curve.setData(c.val_steps if has_accuracy else [], _finite(c.val_accuracy))
        self.accuracy_plot.setVisible(has_accuracy)
        self.diverge_line.setVisible(c.diverges_at is not None)
        if c.diverges_at is not None:
            self.diverge_line.setValue(c.diverges_at)
        self.note.setText(c.note if c.train_steps or c.val_steps else NO_STEPS)
        for plot in (self.loss_plot, self.accuracy_plot):
            plot.getPlotItem().enableAutoRange()


def _preview_project(folder: Any) -> Any:
    """A project with two made-up runs: one that overfits (a classifier), one still improving."""
    import json
    import random

    from core.project import create_project

    project = create_project("Curves preview", folder)
    rng = random.Random(0)
    for n, (name, steps, turn) in enumerate((("LoRA r8 · classification-support", 200, 90),
                                             ("LoRA r8 · instructions-units", 120, None))):  # fmt: skip
        run = project.artifacts / "train" / f"run{n}"
        run.mkdir(parents=True)
        lines = []
        for step in range(1, steps + 1):
            record = {"step": step, "loss": 2.5 * math.exp(-step / 40) + 0.3 + rng.gauss(0, 0.12)}
            if step % 20 == 0:
                rise = 0.004 * (step - turn) if turn and step > turn else 0.0
                record["val_loss"] = 2.5 * math.exp(-step / 45) + 0.55 + rise
                if turn:
                    record["val_accuracy"] = min(0.95, 0.3 + step / 250) - rise / 2
            lines.append(json.dumps(record))
        (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        project.train_runs.append({"id": f"run{n}", "created": f"2025-01-0{n + 1}T10:00:00", "label": name,
                                   "folder": f"artifacts/train/run{n}", "settings": {}, "status": "finished",
                                   "summary": {}})  # fmt: skip
    return project


if __name__ == "__main__":  # preview: python -m desktop.widgets.eval_curves
    import sys
    import tempfile

    from desktop.preview import preview

    def _make(_session: Any, folder: str) -> CurvesView:
        view = CurvesView()
        view.show_project(_preview_project(folder))
        return view

    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(preview(lambda session: _make(session, tmp), (1000, 700)))
