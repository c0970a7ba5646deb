"""The Evaluate step's k-fold cross-validation: k and the training steps per fold, Run / Cancel,
progress across the folds, a per-fold plot of one metric with a line at its mean, and a table of
each metric's mean ± standard deviation with every fold's value.

Run asks the pane (``runRequested``), which calls ``start(project, loaded)`` when nothing else
runs: the job (core.evaluate.kfold) goes through the one job runner, each "fold" event adds a
fold, and the result, finished or cancelled with the folds that finished, is recorded in the
project (core.evaluate.runs.record_kfold). A cancelled job returns nothing: its result is read back
from the kfold.json it wrote (with its settings), as the pane does for a stopped evaluation. The plot
is redrawn on a 50 ms timer. Importing this module imports pyqtgraph.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.errors import QuantTuneError
from core.evaluate.kfold import MAX_K
from core.evaluate.results import KFOLD_FILE, KFoldResult
from desktop.jobs import JobHandle, JobRunner
from desktop.widgets import weight_plots
from desktop.widgets.eval_results import metric_columns
from desktop.widgets.tables import read_only_table

REDRAW_MS = 50
POINT_BRUSH = pg.mkBrush("#1f6fd1")
MEAN_PEN = pg.mkPen("#e07b00", width=2, style=Qt.PenStyle.DashLine)


def _kfold_job(params: Any, ctx: Any) -> Any:
    from core.evaluate import kfold

    return kfold.run(params, ctx)


class KFoldView(QWidget):
    """Signals: ``runRequested()``; ``cancelRequested()``; ``settingsEdited()`` after k or the steps
    were changed in the project's EvaluateSettings (the receiver saves the project);
    ``problem(message, fix)`` when a run cannot start; ``failed(exc, traceback)``; ``recorded(project)``
    when a result was added to that project (the receiver saves it)."""

    runRequested = Signal()
    cancelRequested = Signal()
    settingsEdited = Signal()
    problem = Signal(str, str)
    failed = Signal(object, str)
    recorded = Signal(object)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.result: Any = None  # core.evaluate.results.KFoldResult shown (finished folds so far)
        self.project: Any = None  # whose EvaluateSettings k and the steps edit
        self._run: tuple[Any, Any] | None = None  # (params, project) of the running job
        self._dirty = False
        self._build()
        self.k_spin.valueChanged.connect(self._on_edited)
        self.steps_spin.valueChanged.connect(self._on_edited)
        self.run_button.clicked.connect(self.runRequested)
        self.cancel_button.clicked.connect(self.cancelRequested)
        self.metric_combo.currentIndexChanged.connect(self._mark_dirty)
        self._timer = QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()
        self.set_busy(False)

    def _build(self) -> None:
        self.k_spin = QSpinBox(minimum=2, maximum=MAX_K, suffix=" folds")
        self.k_spin.setToolTip(
            "The rows are cut into k parts; each part is the test set once, the others train."
        )
        self.steps_spin = QSpinBox(minimum=0, maximum=100_000, suffix=" steps")
        self.steps_spin.setSpecialValueText("epochs")  # shown at 0
        self.steps_spin.setToolTip(
            "Training steps in each fold: k models are trained, so keep it small on a CPU. "
            '0 ("epochs") trains each fold for the Train step\'s epochs.'
        )
        self.method_label = QLabel(wordWrap=True, minimumWidth=420)
        self.run_button = QPushButton("Run cross-validation")
        self.run_button.setObjectName("primary")
        self.cancel_button = QPushButton("Cancel")
        form = QFormLayout()
        form.addRow("Folds (k)", self.k_spin)
        form.addRow("Training per fold", self.steps_spin)
        form.addRow("Method", self.method_label)
        buttons = QVBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addStretch(1)
        self.k_spin.setMinimumWidth(140)
        top = QHBoxLayout()
        top.addLayout(form)
        top.addStretch(1)
        top.addLayout(buttons)
        self.progress_label = QLabel(wordWrap=True)
        self.progress_bar = QProgressBar(textVisible=False, maximumHeight=12)
        self.note = QLabel(wordWrap=True, objectName="hint")
        self.metric_combo = QComboBox()
        self.plot = weight_plots._plot("Score of each fold", "fold", "")
        self.plot.getPlotItem().setMouseEnabled(x=False, y=False)
        self.points = pg.ScatterPlotItem(size=10, brush=POINT_BRUSH, pen=pg.mkPen("#ffffff"))
        self.plot.getPlotItem().addItem(self.points)
        # the label at the left end: at the right it was cut off by the view's edge
        label_options = {"position": 0.05, "color": "#e07b00", "anchors": [(0, 1), (0, 1)]}
        self.mean_line = pg.InfiniteLine(angle=0, movable=False, pen=MEAN_PEN, label="mean {value:.4g}",
                                         labelOpts=label_options)  # fmt: skip
        self.plot.getPlotItem().addItem(self.mean_line, ignoreBounds=True)
        self.table = read_only_table(("Metric", "Mean ± std"))
        chart = QVBoxLayout()
        pick = QHBoxLayout()
        pick.addWidget(QLabel("Plot"))
        pick.addWidget(self.metric_combo, 1)
        chart.addLayout(pick)
        chart.addWidget(self.plot, 1)
        lower = QHBoxLayout()
        lower.addWidget(self.table, 3)
        lower.addLayout(chart, 2)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.note)
        layout.addLayout(lower, 1)

    # -- settings --------------------------------------------------------------------------
    def show_project(self, project: Any) -> None:
        """Show (and from now on edit) the project's k and steps, and name its method."""
        from core.finetune.methods import METHODS

        self.project = project
        if project is None:
            self.method_label.setText("")
            return
        key = project.finetune.method.get("method", "lora")
        title = METHODS[key].title if key in METHODS else key
        e = project.evaluate
        for spin, value in ((self.k_spin, e.kfold_k), (self.steps_spin, e.kfold_max_steps)):
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)
        self.method_label.setText(f"{title} (chosen in the Fine-tuning method step)")

    @Slot()
    def _on_edited(self) -> None:
        if self.project is not None:
            e = self.project.evaluate
            e.kfold_k, e.kfold_max_steps = self.k_spin.value(), self.steps_spin.value()
            self.settingsEdited.emit()

    def set_busy(self, busy: bool, can_run: bool = True) -> None:
        self.run_button.setEnabled(not busy and can_run)
        self.cancel_button.setEnabled(busy)
        self.k_spin.setEnabled(not busy)
        self.steps_spin.setEnabled(not busy)
        self.progress_bar.setVisible(busy)

    # -- a run -----------------------------------------------------------------------------
    def start(self, project: Any, loaded: Any) -> JobHandle | None:
        """Cross-validate the project's data and method with the k and steps shown."""
        from core.evaluate import kfold, metrics, runs

        project.evaluate.kfold_k, project.evaluate.kfold_max_steps = (
            self.k_spin.value(),
            self.steps_spin.value(),
        )
        try:
            params = runs.kfold_params(project, loaded)
        except QuantTuneError as exc:
            self.failed.emit(exc, "")
            return None
        if problems := params.validate():
            self.problem.emit("Cross-validation cannot start: " + "; ".join(problems) + ".",
                              "Change the settings named above.")  # fmt: skip
            return None
        handle = self.runner.start(
            _kfold_job, params, name=f"Cross-validating over {params.k} folds", owner=self
        )
        handle.progress.connect(self.set_progress)
        handle.event.connect(self._on_event)
        handle.succeeded.connect(self._keep)
        handle.cancelled.connect(self._on_cancelled)
        handle.failed.connect(self._on_failed)
        self._run = (params, project)
        self.begin(KFoldResult(k=params.k, task=params.task, method=params.method.method,
                               metrics=kfold.metric_keys(params.task, metrics)))  # fmt: skip
        return handle

    @Slot(object)
    def _on_event(self, event: Any) -> None:
        if event.kind == "fold":
            self.add_fold(event.data["index"], event.data["scores"], event.data["sizes"])

    @Slot()
    def _on_cancelled(self) -> None:
        # a cancelled job's result does not come back: it wrote the folds that finished, with the
        # settings they ran with, to kfold.json; no file: none finished
        params, _project = self._run
        result = read_kfold(params.output)
        if result is None:
            result = KFoldResult(k=params.k, task=self.result.task, method=self.result.method,
                                 metrics=list(self.result.metrics), cancelled=True)  # fmt: skip
            with contextlib.suppress(OSError):  # nothing kept: no empty folder left behind
                Path(params.output).rmdir()
        self._keep(result)

    @Slot(object)
    def _keep(self, result: Any) -> None:
        from core.evaluate import runs

        params, project = self._run
        if result.folds:
            runs.record_kfold(project, result, params.output)
            self.recorded.emit(project)
        self.set_result(result)
        done = result_note(result) or f"All {result.k} folds finished."
        self.finish(done if result.folds else "Cancelled before the first fold finished: nothing was kept.")

    @Slot(object, str)
    def _on_failed(self, exc: BaseException, tb: str) -> None:
        self.finish("Cross-validation failed: see the message above.")
        self.failed.emit(exc, tb)

    def begin(self, result: Any) -> None:
        """A run starts: ``result`` is its empty KFoldResult (k, task, method, metrics)."""
        self.set_result(result)
        self.note.setText("")
        self.progress_label.setText(f"Fold 1 of {result.k}: starting")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)

    def set_progress(self, data: dict) -> None:
        """The job's progress report: ``done`` of ``total`` folds (fractional), a message."""
        done, total = data.get("done") or 0, data.get("total") or 0
        if data.get("message"):
            self.progress_label.setText(str(data["message"]))
        if total > 0:
            self.progress_bar.setValue(round(1000 * min(1.0, done / total)))

    def add_fold(self, index: int, scores: dict, sizes: tuple[int, int]) -> None:
        if self.result is None:
            return
        self.result.folds.append(dict(scores))
        self.result.fold_sizes.append(tuple(sizes))
        self._mark_dirty()

    def finish(self, text: str) -> None:
        self.progress_label.setText(text)
        self._redraw()

    def set_result(self, result: Any) -> None:
        """Show a KFoldResult (a finished, cancelled or restored run); None clears."""
        self.result = result
        keep = self.metric_combo.currentData()
        self.metric_combo.blockSignals(True)
        self.metric_combo.clear()
        for column in metric_columns(list(result.metrics) if result is not None else []):
            self.metric_combo.addItem(column.title, column.key)
        index = self.metric_combo.findData(keep) if keep is not None else -1
        self.metric_combo.setCurrentIndex(max(0, index))
        self.metric_combo.blockSignals(False)
        self.note.setText(result_note(result) if result is not None else "")
        if result is None:
            self.progress_label.setText("")
        self._mark_dirty()
        self._redraw()

    @Slot()
    def _mark_dirty(self) -> None:
        self._dirty = True

    @Slot()
    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._fill_table()
        self._draw_plot()

    def _fill_table(self) -> None:
        result = self.result
        folds = result.folds if result is not None else []
        columns = metric_columns(list(result.metrics)) if result is not None else []
        titles = ["Metric", "Mean ± std", *(f"Fold {i + 1}" for i in range(len(folds)))]
        self.table.setColumnCount(len(titles))
        self.table.setHorizontalHeaderLabels(titles)
        self.table.setRowCount(len(columns))
        summary = result.summary() if result is not None else {}
        for row, column in enumerate(columns):
            cells = [column.title, mean_std_text(column.key, summary.get(column.key))]
            cells += [_format(column.key, fold.get(column.key)) for fold in folds]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(column.hover if col == 0 else "")
                if col:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)

    def _draw_plot(self) -> None:
        key = self.metric_combo.currentData()
        column = next((c for c in metric_columns([key])), None) if key else None
        folds = self.result.folds if self.result is not None else []
        points = [(i + 1, f.get(key)) for i, f in enumerate(folds)] if column is not None else []
        points = [
            (x, y * column.factor) for x, y in points if isinstance(y, (int, float)) and math.isfinite(y)
        ]
        self.points.setData([x for x, _ in points], [y for _, y in points])
        item = self.plot.getPlotItem()
        unit = f" ({column.unit})" if column is not None and column.unit else ""
        item.setLabel("left", self.metric_combo.currentText() + unit)
        k = self.result.k if self.result is not None else 2
        item.getAxis("bottom").setTicks([[(i, str(i)) for i in range(1, k + 1)]])
        item.setXRange(0.5, k + 0.5, padding=0)
        self.mean_line.setVisible(bool(points))
        if points:
            self.mean_line.setValue(sum(y for _, y in points) / len(points))
            self.mean_line.label.setFormat("mean {value:.4g}" + (f" {column.unit}" if column.unit else ""))


def mean_std_text(key: str, pair: tuple[float, float] | None) -> str:
    if pair is None:
        return "—"
    return f"{_format(key, pair[0])} ± {_format(key, pair[1])}"


def result_note(result: Any) -> str:
    """Why a run has fewer folds than k (cancelled, or a fold failed); "" when every fold finished."""
    if result.cancelled:
        return (f"Cancelled: {len(result.folds)} of {result.k} folds finished; the mean ± std covers "
                "those only.")  # fmt: skip
    if error := result.settings.get("error"):
        return f"{error} The mean ± std covers the {len(result.folds)} of {result.k} folds that finished."
    return ""


def read_kfold(folder: Path) -> KFoldResult | None:
    """The k-fold result a job wrote in ``folder`` (None: none written, or unreadable)."""
    try:
        return KFoldResult.from_dict(json.loads((Path(folder) / KFOLD_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _format(key: str, value: Any) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "—"
    from core.evaluate import metrics

    return metrics.format_value(key, value) if key in metrics.METRICS else f"{value:.4g}"
