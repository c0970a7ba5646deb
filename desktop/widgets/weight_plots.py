"""The Inspect step's plots, drawn with pyqtgraph.

Importing this module imports pyqtgraph (about 0.7 s), so panes import it when they first show,
never at window start (ARCHITECTURE.md practice 12). Items are created once and only their data
changes afterwards (practice 8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

pg.setConfigOptions(background="w", foreground="#3a3f47", antialias=True)

BAR_PEN, BAR_BRUSH = pg.mkPen("#7d93ad", width=1), pg.mkBrush("#b7c7da")
MEAN_PEN = pg.mkPen("#222222", width=2)
STD_PEN = pg.mkPen("#8e44ad", width=1.5, style=Qt.PenStyle.DashLine)
SYM_PEN = pg.mkPen("#1f6fd1", width=2.5)
ASYM_PEN = pg.mkPen("#e07b00", width=2.5, style=Qt.PenStyle.DashDotLine)
MEDIAN_PEN = pg.mkPen("#8e44ad", width=1.5, style=Qt.PenStyle.DashLine)
CHANNEL_PEN = pg.mkPen("#1f6fd1", width=1)
MISSING_CELL = "#e4e6ea"


class CountAxis(pg.AxisItem):
    """A count axis whose log scale labels only the powers of ten.

    Over two decades or less pyqtgraph makes every 2…9·10ⁿ a labelled tick, and the labels
    overlap; here the decades are the labelled level and the rest are unlabelled minor ticks.
    """

    def logTickValues(self, minVal, maxVal, size, stdTicks):  # noqa: N802, N803 - pyqtgraph's names
        ticks = super().logTickValues(minVal, maxVal, size, stdTicks)
        if not ticks or ticks[0][0] is not None:
            return ticks  # pyqtgraph found decade spacing itself
        decades = [
            float(v) for v in range(math.floor(minVal), math.ceil(maxVal) + 1) if minVal <= v <= maxVal
        ]
        if len(decades) < 2:
            return ticks  # under a decade in view: the few 2…9·10ⁿ labels are all there is
        return [(1.0, decades), (None, [v for v in ticks[0][1] if v not in decades])]


def _plot(title: str, x_label: str, y_label: str, left: pg.AxisItem | None = None) -> pg.PlotWidget:
    widget = pg.PlotWidget(axisItems={"left": left} if left is not None else None)
    item = widget.getPlotItem()
    item.setTitle(title, size="10pt")
    item.setLabel("bottom", x_label)
    item.setLabel("left", y_label)
    item.showGrid(x=True, y=True, alpha=0.15)
    item.setMenuEnabled(False)
    for side in ("bottom", "left"):
        # Plain numbers: an axis scaled "(x0.001)" is easy to misread for weights.
        item.getAxis(side).enableAutoSIPrefix(False)
    widget.setMinimumHeight(110)
    return widget


class HistogramPlot(QWidget):
    """A tensor's histogram with its mean, ±k·std and both clipping ranges over it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = _plot("", "weight value", "count", CountAxis("left"))
        item = self.plot.getPlotItem()
        self.legend = self._legend_in_title_row(item)
        self.bars = item.plot([], [], stepMode="center", fillLevel=0, pen=BAR_PEN, brush=BAR_BRUSH)
        self.mean_line = self._vline(MEAN_PEN)
        self.std_lines = (self._vline(STD_PEN), self._vline(STD_PEN))
        self.sym_lines = (self._vline(SYM_PEN), self._vline(SYM_PEN))
        self.asym_lines = (self._vline(ASYM_PEN), self._vline(ASYM_PEN))
        # InfiniteLines have no legend entry of their own: empty curves in the same pens give one.
        for pen, name in (
            (MEAN_PEN, "mean"),
            (STD_PEN, "± k·std"),
            (SYM_PEN, "symmetric range"),
            (ASYM_PEN, "asymmetric range"),
        ):
            self.legend.addItem(item.plot([], [], pen=pen), name)
        self.detail: Any = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self.clear()

    @staticmethod
    def _legend_in_title_row(item: pg.PlotItem) -> pg.LegendItem:
        # A legend inside the view would cover the tails, where outliers are: it takes the
        # title's row above the view instead (the pane names the tensor above the plot).
        legend = pg.LegendItem(colCount=4, labelTextSize="8pt", horSpacing=14)
        item.layout.removeItem(item.titleLabel)
        item.titleLabel.setVisible(False)
        item.layout.addItem(legend, 0, 1, alignment=Qt.AlignmentFlag.AlignHCenter)
        item.layout.setRowFixedHeight(0, 22)
        return legend

    def _vline(self, pen) -> pg.InfiniteLine:
        line = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.plot.getPlotItem().addItem(line, ignoreBounds=True)
        return line

    def _lines(self) -> tuple[pg.InfiniteLine, ...]:
        return (self.mean_line, *self.std_lines, *self.sym_lines, *self.asym_lines)

    def clear(self) -> None:
        self.detail = None
        self.bars.setData([0.0, 1.0], [0.0])
        for line in self._lines():
            line.hide()

    def set_detail(self, detail: Any, k: float) -> None:
        """Draw ``detail`` (core.weights.detail.TensorDetail)."""
        self.detail = detail
        edges, counts = np.asarray(detail.edges, float), np.asarray(detail.counts, float)
        self.bars.setData(edges, counts)
        s = detail.stats
        self.sym_lines[0].setValue(detail.symmetric.lo)
        self.sym_lines[1].setValue(detail.symmetric.hi)
        self.asym_lines[0].setValue(detail.asymmetric.lo)
        self.asym_lines[1].setValue(detail.asymmetric.hi)
        finite = math.isfinite(s.mean) and math.isfinite(s.std)
        for line in self._lines():
            line.setVisible(finite)
        self.mean_line.setValue(s.mean if finite else 0.0)
        self.set_k(k)
        self._fit_x()

    def set_k(self, k: float) -> None:
        if self.detail is None:
            return
        s = self.detail.stats
        if math.isfinite(s.mean) and math.isfinite(s.std):
            self.std_lines[0].setValue(s.mean - k * s.std)
            self.std_lines[1].setValue(s.mean + k * s.std)

    def set_log(self, on: bool) -> None:
        self.plot.getPlotItem().setLogMode(y=on)
        # Decades only: minor labels (2, 3 … 9·10ⁿ) would overlap on a short axis.
        self.plot.getPlotItem().getAxis("left").setStyle(maxTextLevel=0 if on else 2)
        self.plot.getPlotItem().setLabel("left", "count (log scale)" if on else "count")
        self.plot.getPlotItem().enableAutoRange(y=True)

    def _fit_x(self) -> None:
        # The clipping ranges can reach past the data (a symmetric range mirrors the larger
        # side), and InfiniteLines do not count for auto-range: show data and ranges together.
        d = self.detail
        xs = [d.edges[0], d.edges[-1], d.symmetric.lo, d.symmetric.hi, d.asymmetric.lo, d.asymmetric.hi]
        xs = [x for x in xs if math.isfinite(x)]
        lo, hi = min(xs), max(xs)
        pad = 0.04 * (hi - lo or 1.0)
        self.plot.getPlotItem().setXRange(lo - pad, hi + pad, padding=0)
        self.plot.getPlotItem().enableAutoRange(y=True)


class ChannelPlot(QWidget):
    """Per-output-channel abs-max of a tensor, with the median across channels."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = _plot("Per-channel abs-max", "output channel (row)", "abs-max")
        item = self.plot.getPlotItem()
        item.setClipToView(True)
        item.setDownsampling(auto=True, mode="peak")
        self.curve = item.plot([], [], pen=CHANNEL_PEN)
        self.median_line = pg.InfiniteLine(angle=0, movable=False, pen=MEDIAN_PEN)
        item.addItem(self.median_line, ignoreBounds=True)
        self.values = np.zeros(0)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self.clear()

    def clear(self) -> None:
        self.values = np.zeros(0)
        self.curve.setData([], [])
        self.median_line.hide()

    def set_values(self, values: list[float], spread: float | None, one_dimensional: bool = False) -> None:
        self.values = np.asarray(values, float)
        self.curve.setData(np.arange(len(self.values)), self.values)
        if len(self.values):
            self.median_line.setValue(float(np.median(self.values)))
            self.median_line.show()
        else:
            self.median_line.hide()
        item = self.plot.getPlotItem()
        if one_dimensional:  # a norm weight or a bias: no rows, so |x| of each element
            item.setTitle("|value| of each element (a 1-D tensor has no channels)", size="10pt")
            item.setLabel("bottom", "element")
            item.setLabel("left", "|value|")
        else:
            note = f"spread (max / median) {spread:.3g}" if spread else "spread n/a"
            item.setTitle(f"Per-channel abs-max — {note}; dashed: median", size="10pt")
            item.setLabel("bottom", "output channel (row)")
            item.setLabel("left", "abs-max")
        self.plot.getPlotItem().autoRange()


@dataclass(frozen=True)
class HeatStat:
    title: str
    worse_high: bool  # which end is the warning sign (the colour map runs to it)

    def value(self, t: Any, k: float) -> float:
        s, best = t.stats, t.recommendation.best
        raw = {
            "Excess kurtosis": s.kurtosis,
            "Skewness": s.skew,
            "|mean| / std": abs(s.mean) / s.std if s.std else math.nan,
            "Outliers beyond k·std (%)": 100 * s.outlier_share(k),
            "Channel spread": s.channel_spread,
            "Best SQNR (dB)": best.sqnr_db if best is not None else math.nan,
        }[self.title]
        return math.nan if raw is None else float(raw)

    def badness(self, value: float) -> float:
        if math.isnan(value):
            return -math.inf
        if self.title == "Skewness":
            return abs(value)
        return value if self.worse_high else -value


HEAT_STATS = (
    HeatStat("Excess kurtosis", True),
    HeatStat("Skewness", True),
    HeatStat("|mean| / std", True),
    HeatStat("Outliers beyond k·std (%)", True),
    HeatStat("Channel spread", True),
    HeatStat("Best SQNR (dB)", False),
)


def symlog(x):
    """sign(x)·log10(1 + |x|): a log scale that keeps the sign and passes through 0."""
    return np.sign(x) * np.log10(1 + np.abs(x))


def _symlog_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Colour-bar ticks at round values (0, ±1, ±3, ±10…), placed on the symlog scale and at
    least an eighth of the bar apart."""
    values = [0.0] + [s * m * 10.0**e for e in range(-3, 7) for m in (1, 3) for s in (1, -1)]
    inside = sorted((v for v in values if lo <= symlog(v) <= hi), key=abs)  # 0 first, then outwards
    gap, kept = (hi - lo) / 8, []
    for v in inside:
        if all(abs(symlog(v) - symlog(k)) >= gap for k in kept):
            kept.append(v)
    return [(float(symlog(v)), f"{v:g}") for v in sorted(kept)]


MODULE_ORDER = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down", "norm")
MODEL_ROW = "model"  # tensors outside the layers: embeddings, head, final norm


def grid_of(report: Any, stat: HeatStat, k: float) -> tuple[list[str], list[str], np.ndarray, list]:
    """(row labels, column labels, values[rows, cols], names[rows][cols]) for a heatmap.

    A cell holding several tensors (the two norms of a layer) shows the worst of them.
    """
    layers = sorted({t.stats.layer for t in report.tensors if t.stats.layer is not None})
    has_model_row = any(t.stats.layer is None for t in report.tensors)
    rows = ([MODEL_ROW] if has_model_row else []) + [str(n) for n in layers]
    modules = {t.stats.module for t in report.tensors}
    cols = [m for m in MODULE_ORDER if m in modules] + sorted(modules - set(MODULE_ORDER))
    values = np.full((len(rows), len(cols)), np.nan)
    names: list[list[str | None]] = [[None] * len(cols) for _ in rows]
    for t in report.tensors:
        r = rows.index(MODEL_ROW if t.stats.layer is None else str(t.stats.layer))
        c = cols.index(t.stats.module)
        value = stat.value(t, k)
        if names[r][c] is None or stat.badness(value) > stat.badness(values[r, c]):
            values[r, c], names[r][c] = value, t.stats.name
    return rows, cols, values, names


class ModelHeatmap(QWidget):
    """Layers × module types coloured by a chosen statistic. ``tensorClicked(name)``."""

    tensorClicked = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stat_combo = QComboBox()
        for stat in HEAT_STATS:
            self.stat_combo.addItem(stat.title)
        self.log_check = QCheckBox("Log colour scale")
        self.log_check.setChecked(True)  # a few heavy-tailed tensors would leave the rest black
        self.log_check.setToolTip(
            "Colour by sign(x)·log10(1 + |x|); the bar is labelled in the statistic's units"
        )
        self.hover_label = QLabel("Click a cell to select its tensor. Grey: no such tensor, or no value.")
        self.hover_label.setObjectName("hint")
        self.plot = _plot("", "module type", "layer")
        item = self.plot.getPlotItem()
        item.showGrid(x=False, y=False)
        item.invertY(True)
        item.setMouseEnabled(x=False, y=False)
        item.hideButtons()
        item.getViewBox().setBackgroundColor(MISSING_CELL)
        self.image = pg.ImageItem(axisOrder="row-major")
        item.addItem(self.image)
        self.color_bar = pg.ColorBarItem(values=(0, 1), colorMap="inferno", interactive=False, width=14)
        self.color_bar.setImageItem(self.image, insert_in=item)
        self.report: Any = None
        self.k = 3.0
        self.rows: list[str] = []
        self.cols: list[str] = []
        self.values = np.zeros((0, 0))
        self.names: list = []
        top = QHBoxLayout()
        top.addWidget(QLabel("Colour by:"))
        top.addWidget(self.stat_combo)
        top.addWidget(self.log_check)
        top.addSpacing(12)
        top.addWidget(self.hover_label, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        self.stat_combo.currentIndexChanged.connect(self._redraw)
        self.log_check.toggled.connect(self._redraw)
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        self.plot.scene().sigMouseMoved.connect(self._on_move)

    @property
    def stat(self) -> HeatStat:
        return HEAT_STATS[self.stat_combo.currentIndex()]

    def set_stat(self, title: str) -> None:
        self.stat_combo.setCurrentIndex([s.title for s in HEAT_STATS].index(title))

    def set_report(self, report: Any | None, k: float) -> None:
        self.report, self.k = report, k
        self._redraw()

    def set_k(self, k: float) -> None:
        self.k = k
        if self.stat.title.startswith("Outliers"):
            self._redraw()

    @Slot()
    def _redraw(self, *_: Any) -> None:
        item = self.plot.getPlotItem()
        if self.report is None or not self.report.tensors:
            self.rows, self.cols, self.values, self.names = [], [], np.zeros((0, 0)), []
            self.image.clear()
            return
        stat = self.stat
        self.rows, self.cols, self.values, self.names = grid_of(self.report, stat, self.k)
        shown = symlog(self.values) if self.log_check.isChecked() else self.values
        finite = shown[np.isfinite(shown)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        # skipCache: reverse() changes the map in place, and get() would hand out a shared one.
        cmap = pg.colormap.get("inferno", skipCache=True)
        if not stat.worse_high:
            cmap.reverse()
        self.image.setImage(shown, autoLevels=False)
        self.color_bar.setColorMap(cmap)
        self.color_bar.setLevels((lo, hi))
        ticks = _symlog_ticks(lo, hi) if self.log_check.isChecked() else None
        self.color_bar.axis.setTicks([ticks] if ticks else None)
        item.getAxis("bottom").setTicks([[(i + 0.5, c) for i, c in enumerate(self.cols)]])
        item.getAxis("left").setTicks(self._row_ticks())
        item.setTitle(f"{stat.title} across the model", size="10pt")
        item.getViewBox().setRange(xRange=(0, len(self.cols)), yRange=(0, len(self.rows)), padding=0)

    def _row_ticks(self) -> list:
        # Label every layer while they fit, else every few (0, 2, 4…; the rest as minor ticks).
        step = max(1, math.ceil(len(self.rows) / 16))
        labelled = [r == MODEL_ROW or int(r) % step == 0 for r in self.rows]
        major = [(i + 0.5, r) for i, r in enumerate(self.rows) if labelled[i]]
        minor = [(i + 0.5, "") for i, r in enumerate(self.rows) if not labelled[i]]
        return [major, minor]

    def cell_at(self, scene_pos) -> tuple[int, int] | None:
        if not self.rows:
            return None
        pos = self.image.mapFromScene(scene_pos)
        col, row = math.floor(pos.x()), math.floor(pos.y())
        if 0 <= row < len(self.rows) and 0 <= col < len(self.cols):
            return row, col
        return None

    def cell_center(self, row: int, col: int):
        """Scene position of a cell's centre (for tests and keyboard-free scripting)."""
        from PySide6.QtCore import QPointF

        return self.image.mapToScene(QPointF(col + 0.5, row + 0.5))

    def name_at(self, row: int, col: int) -> str | None:
        return self.names[row][col] if self.rows else None

    @Slot(object)
    def _on_click(self, event) -> None:
        cell = self.cell_at(event.scenePos())
        if cell is not None and self.name_at(*cell):
            self.tensorClicked.emit(self.name_at(*cell))

    @Slot(object)
    def _on_move(self, scene_pos) -> None:
        cell = self.cell_at(scene_pos)
        if cell is None or not self.name_at(*cell):
            return
        row, col = cell
        value = self.values[row, col]
        shown = "no value" if math.isnan(value) else f"{value:.4g}"
        where = "model" if self.rows[row] == MODEL_ROW else f"layer {self.rows[row]}"
        self.hover_label.setText(f"{where} · {self.cols[col]}: {shown} ({self.name_at(row, col)})")
