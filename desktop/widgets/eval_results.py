"""The Evaluate step's results: one row per variant with the task's metrics and the cost columns
(size, memory, tokens per second), the best value of each metric in bold; a bar chart of one
metric across the variants; for classification, the confusion matrix of the chosen variant
(desktop.widgets.confusion_view).

Rows arrive one by one while the job runs (``add_variant``) or all at once from a saved
evaluation (``set_evaluation``); the table and chart are redrawn on a 50 ms timer, so a burst of
arrivals costs one redraw. Importing this module imports pyqtgraph: the pane imports it when it
first shows (ARCHITECTURE.md practice 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSplitter,
    QStackedWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.learn import format_bytes
from desktop.widgets import weight_plots
from desktop.widgets.confusion_view import ConfusionView
from desktop.widgets.tables import read_only_table

REDRAW_MS = 50
ERROR_COLOR = QColor("#b03a2e")
KIND_COLORS = {"base": "#7f8c8d", "quantized": "#1f6fd1", "finetuned": "#27ae60",
               "finetuned+quantized": "#16a085", "qat": "#8e44ad", "zero-shot": "#e07b00",
               "few-shot": "#d35400", "rag": "#c0392b"}  # fmt: skip
FIXED_COLUMNS = ("Variant", "Kind")
EMPTY = ("No evaluation yet. Run evaluation scores each chosen variant and baseline on the test split; "
         "the rows appear here as each one finishes.")  # fmt: skip


@dataclass(frozen=True)
class Column:
    """A number column of the table and a choice of the chart: a metric or a cost."""

    key: str
    title: str
    hover: str
    higher_is_better: bool
    cost: bool = False
    factor: float = 1.0  # the chart's unit: fractions in %, bytes in MB
    unit: str = ""

    def value(self, result: Any) -> float | None:
        """The number the chart draws (in ``unit``); None when there is none."""
        value = getattr(result, self.key) if self.cost else result.scores.get(self.key)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value) * self.factor

    def text(self, result: Any) -> str:
        value = getattr(result, self.key) if self.cost else result.scores.get(self.key)
        if value is None:
            return "—"
        if self.key in ("size_bytes", "peak_memory_bytes"):
            return format_bytes(value)
        if self.key == "tokens_per_second":
            return f"{value:.1f}"
        return _format_metric(self.key, value)


COST_COLUMNS = (
    Column("size_bytes", "Size", "The variant's weights: on disk for a saved model, in memory for the base "
           "model (baselines use the base model). Lower is cheaper to ship.", False, True, 1e-6, "MB"),
    Column("peak_memory_bytes", "Memory", "What the variant's weights take in memory while it runs here. "
           "Integer (RTN, GPTQ, AWQ, QAT) models run with their weights decoded to float on this CPU, so "
           "they take what the base takes; bitsandbytes models stay 4- or 8-bit. Lower is cheaper to run.",
           False, True, 1e-6, "MB"),
    Column("tokens_per_second", "Tokens/s", "Tokens per second while scoring: generated tokens (batched, "
           "greedy); for classification, tokens read. Baselines read longer prompts. Higher is faster.",
           True, True),
)  # fmt: skip


def metric_columns(keys: list[str]) -> list[Column]:
    """The metric columns of ``keys`` (core.evaluate.metrics keys), titled and explained."""
    from core.evaluate import metrics

    out = []
    for key in keys:
        m = metrics.METRICS.get(key)
        if m is None:  # a metric this version does not know (an evaluation saved by another)
            out.append(Column(key, key, "", True))
        elif m.scale == "fraction":  # shown as a percentage, drawn as one
            out.append(Column(key, m.title, m.hover, m.higher_is_better, factor=100.0, unit="%"))
        else:
            out.append(Column(key, m.title, m.hover, m.higher_is_better))
    return out


def _format_metric(key: str, value: float) -> str:
    from core.evaluate import metrics

    return metrics.format_value(key, value)


def best_rows(column: Column, results: list[Any]) -> set[int]:
    """Rows holding the best value of ``column`` (ties all count); none when fewer than two have a
    value or when all are equal."""
    values = [(i, column.value(r)) for i, r in enumerate(results) if not r.error]
    values = [(i, v) for i, v in values if v is not None]
    if len(values) < 2:
        return set()
    pick = max if column.higher_is_better else min
    best = pick(v for _i, v in values)
    rows = {i for i, v in values if math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12)}
    return rows if len(rows) < len(values) else set()  # all equal: none is best


class EvalResults(QWidget):
    """Signals: ``variantSelected(str)``: the variant id of the row the user (or ``select``) chose,
    once per change (``link_training_runs`` shows a fine-tuned variant's curves with it)."""

    variantSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.results: list[Any] = []  # VariantResult, in arrival order
        self.columns: list[Column] = []
        self.evaluation: Any = None  # the whole Evaluation once known (examples, labels)
        self._dirty = False
        self._selected: str | None = None  # the id variantSelected last named
        self.table = read_only_table(FIXED_COLUMNS)
        self.table.itemSelectionChanged.connect(self._on_selected)
        self.note = QLabel(wordWrap=True, objectName="hint")
        self.chart = BarChart()
        self.chart.metric_combo.currentIndexChanged.connect(self._mark_dirty)
        self.confusion = ConfusionView()
        self._layout()
        self._timer = QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()
        self.confusion.setVisible(False)

    def _layout(self) -> None:
        # the table spans the width (a task has up to eight metrics besides the three costs);
        # the chart and, for classification, the confusion matrix share the space below it
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        upper = QWidget()
        column = QVBoxLayout(upper)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.table, 1)
        column.addWidget(self.note)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.chart)
        lower.addWidget(self.confusion)
        lower.setStretchFactor(0, 3)
        lower.setStretchFactor(1, 2)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(upper)
        splitter.addWidget(lower)
        splitter.setSizes([220, 360])
        self.placeholder = QLabel(EMPTY, wordWrap=True, objectName="hint")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.pages = QStackedWidget()
        self.pages.addWidget(self.placeholder)
        self.pages.addWidget(splitter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pages)

    # -- filling ----------------------------------------------------------------------------
    def begin(self, metrics: list[str]) -> None:
        """A run starts: empty rows, the columns of its metrics."""
        self.evaluation, self.results, self._selected = None, [], None
        self._set_columns(metrics)
        self.pages.setCurrentIndex(1 if metrics else 0)  # no metrics: cleared, nothing to show
        self.note.setText("")
        self.confusion.setVisible(False)
        self._mark_dirty()

    def add_variant(self, result: Any) -> None:
        """One variant scored (replaces a row of the same id)."""
        self.results = [r for r in self.results if r.id != result.id] + [result]
        self._mark_dirty()

    def set_evaluation(self, evaluation: Any) -> None:
        """A whole evaluation (finished, or restored from the project)."""
        self.evaluation, self._selected = evaluation, None
        self.results = list(evaluation.variants)
        self._set_columns(evaluation.metrics)
        self.pages.setCurrentIndex(1)
        why = [f"{_title(key)}: {text}" for key, text in evaluation.unavailable.items()]
        self.note.setText("Not measured — " + "; ".join(why) if why else "")
        self._mark_dirty()
        self._redraw()
        if self.results and not self.table.selectedItems():
            self.table.selectRow(0)

    def clear(self) -> None:
        self.begin([])

    def _set_columns(self, metrics: list[str]) -> None:
        self.columns = [*metric_columns(list(metrics)), *COST_COLUMNS]
        titles = [*FIXED_COLUMNS, *(c.title for c in self.columns)]
        self.table.setColumnCount(len(titles))
        for i, title in enumerate(titles):
            item = QTableWidgetItem(title)
            hover = self.columns[i - len(FIXED_COLUMNS)].hover if i >= len(FIXED_COLUMNS) else ""
            item.setToolTip(hover)
            self.table.setHorizontalHeaderItem(i, item)
        self.chart.set_columns(self.columns)

    @Slot()
    def _mark_dirty(self) -> None:
        self._dirty = True

    @Slot()
    def _redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        self._fill_table()
        self.chart.draw(self.results)
        self._on_selected()

    def _fill_table(self) -> None:
        keep = self.selected_id()
        self.table.blockSignals(True)
        self.table.clearSpans()
        self.table.setRowCount(len(self.results))
        best = {c.key: best_rows(c, self.results) for c in self.columns}
        for row, result in enumerate(self.results):
            self._set(row, 0, result.label, result.id)
            self._set(row, 1, result.kind, result.id)
            if result.error:
                self._error_row(row, result)
                continue
            for col, column in enumerate(self.columns, start=len(FIXED_COLUMNS)):
                item = self._set(row, col, column.text(result), result.id)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if row in best[column.key]:
                    font = QFont(item.font())
                    font.setBold(True)
                    item.setFont(font)
                    item.setToolTip("Best of the variants on this measure")
        self.table.blockSignals(False)
        if keep is not None:
            self.select(keep)

    def _error_row(self, row: int, result: Any) -> None:
        item = self._set(row, len(FIXED_COLUMNS), f"Not scored: {result.error}", result.id)
        item.setForeground(QBrush(ERROR_COLOR))
        item.setToolTip(result.error)
        self.table.setSpan(row, len(FIXED_COLUMNS), 1, len(self.columns))

    def _set(self, row: int, col: int, text: str, variant_id: str) -> QTableWidgetItem:
        item = QTableWidgetItem(text)
        item.setData(Qt.ItemDataRole.UserRole, variant_id)
        self.table.setItem(row, col, item)
        return item

    # -- selection and the confusion matrix --------------------------------------------------
    def selected_id(self) -> str | None:
        items = self.table.selectedItems()
        return items[0].data(Qt.ItemDataRole.UserRole) if items else None

    def select(self, variant_id: str) -> None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.ItemDataRole.UserRole) == variant_id:
                self.table.selectRow(row)

    def cell(self, variant_id: str, title: str) -> QTableWidgetItem | None:
        """The table's cell of a variant under a column title (for tests and the report)."""
        titles = [self.table.horizontalHeaderItem(c).text() for c in range(self.table.columnCount())]
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.ItemDataRole.UserRole) == variant_id and title in titles:
                return self.table.item(row, titles.index(title))
        return None

    @Slot()
    def _on_selected(self) -> None:
        variant_id = self.selected_id()
        ev = self.evaluation
        result = ev.variant(variant_id) if ev is not None and variant_id else None
        show = bool(
            ev is not None and ev.labels and result is not None and not result.error and result.outputs
        )
        self.confusion.setVisible(show)
        if show:
            self.confusion.show_result(ev, result)
        if variant_id is not None and variant_id != self._selected:  # a redraw re-selects: no news
            self._selected = variant_id
            self.variantSelected.emit(variant_id)


def _title(key: str) -> str:
    columns = metric_columns([key])
    return columns[0].title if columns else key


def train_run_of(variant_id: str) -> str | None:
    """The fine-tuning run behind a variant id ("train:<run>", "train+quant:<run>:<quant run>")."""
    kind, _, rest = variant_id.partition(":")
    return rest.split(":")[0] if kind in ("train", "train+quant") and rest else None


def link_training_runs(results: EvalResults, curves: Any) -> None:
    """One fine-tuning run across two tabs: choosing its variant in the results shows its training
    curves (``curves``: desktop.widgets.eval_curves.CurvesView), and choosing a run there selects its
    fine-tuned variant here."""

    def show_curves(variant_id: str) -> None:
        run_id = train_run_of(variant_id)
        index = curves.run_box.findData(run_id) if run_id else -1
        if index >= 0:
            curves.run_box.setCurrentIndex(index)

    def select_variant(run_id: str) -> None:
        if train_run_of(results.selected_id() or "") != run_id:  # its quantized variant stays chosen
            results.select(f"train:{run_id}")

    results.variantSelected.connect(show_curves)
    curves.runChosen.connect(select_variant)


class BarChart(QWidget):
    """One measure across the variants as horizontal bars, labelled by variant (long labels fit)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.columns: list[Column] = []
        self.metric_combo = QComboBox()
        self.plot = weight_plots._plot("", "", "")
        self.plot.setMinimumWidth(320)
        self.plot.getPlotItem().setMouseEnabled(x=False, y=False)
        self.bars: pg.BarGraphItem | None = None
        self.labels: list[pg.TextItem] = []
        self.chosen: str | None = None  # the measure the user picked, kept across evaluations
        self.metric_combo.activated.connect(self._on_chosen)
        top = QHBoxLayout()
        top.addWidget(QLabel("Chart"))
        top.addWidget(self.metric_combo, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)

    @Slot(int)
    def _on_chosen(self, _index: int) -> None:
        self.chosen = self.metric_combo.currentData()

    def set_columns(self, columns: list[Column]) -> None:
        keep = self.chosen
        self.columns = list(columns)
        self.metric_combo.blockSignals(True)
        self.metric_combo.clear()
        for column in columns:
            self.metric_combo.addItem(column.title, column.key)
            self.metric_combo.setItemData(
                self.metric_combo.count() - 1, column.hover, Qt.ItemDataRole.ToolTipRole
            )
        index = self.metric_combo.findData(keep) if keep is not None else -1
        self.metric_combo.setCurrentIndex(max(0, index))  # the task's first metric by default
        self.metric_combo.blockSignals(False)

    def current(self) -> Column | None:
        key = self.metric_combo.currentData()
        return next((c for c in self.columns if c.key == key), None)

    def draw(self, results: list[Any]) -> None:
        item = self.plot.getPlotItem()
        for thing in [self.bars, *self.labels]:
            if thing is not None:
                item.removeItem(thing)
        self.bars, self.labels = None, []
        column = self.current()
        n = len(results)
        item.getAxis("left").setTicks([[(n - 1 - i, r.label) for i, r in enumerate(results)]])
        if column is None or not results:
            return
        values = [None if r.error else column.value(r) for r in results]
        widths = [v if v is not None else 0.0 for v in values]
        self.bars = pg.BarGraphItem(
            x0=[min(0.0, w) for w in widths], y=[n - 1 - i for i in range(n)], height=0.6,
            width=[abs(w) for w in widths], brushes=[KIND_COLORS.get(r.kind, "#7f8c8d") for r in results],
            pen=pg.mkPen("#ffffff"),
        )  # fmt: skip
        item.addItem(self.bars)
        for i, (result, value) in enumerate(zip(results, values, strict=True)):
            text = column.text(result) if value is not None else ("error" if result.error else "n/a")
            label = pg.TextItem(text, color="#2c3e50", anchor=(0, 0.5))
            label.setPos(max(0.0, widths[i]), n - 1 - i)
            item.addItem(label)
            self.labels.append(label)
        top = max((w for w in widths), default=0.0)
        unit = f" ({column.unit})" if column.unit else ""
        better = "higher is better" if column.higher_is_better else "lower is better"
        item.setLabel("bottom", f"{column.title}{unit} — {better}")
        empty = 100.0 if column.unit == "%" else 1.0  # every bar at 0: the scale's natural width
        item.setXRange(min(0.0, *widths), (top or empty) * 1.25, padding=0)
        item.setYRange(-0.6, n - 0.4, padding=0)
