"""The histogram of one quantization block with its calibrated range, min and max, and grid.

Importing this module imports pyqtgraph: the Scales view imports it when the first block shows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

if TYPE_CHECKING:
    from core.quant.explain import WorkedExample

MAX_TICKS = 64  # grid points drawn along a block's histogram


# -- the block plot (pyqtgraph, imported when the first block shows) ---------------------------
class BlockPlot(QWidget):
    """A block's histogram with its calibrated range [lo, hi] (solid), its own min and max
    (dashed) and the quantization grid S·(q − Z) as ticks along the bottom."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import pyqtgraph as pg

        from desktop.widgets import weight_plots  # the plots' shared look

        self.plot = weight_plots._plot("", "weight value", "count")
        item = self.plot.getPlotItem()
        range_pen = pg.mkPen("#1f6fd1", width=2.5)
        minmax_pen = pg.mkPen("#e07b00", width=1.5, style=Qt.PenStyle.DashLine)
        grid_pen = pg.mkPen("#222222", width=1.5)
        self.bars = item.plot(
            [], [], stepMode="center", fillLevel=0, pen=weight_plots.BAR_PEN, brush=weight_plots.BAR_BRUSH
        )
        self.range_lines = tuple(self._vline(pg, range_pen, text, 0.93) for text in ("lo", "hi"))
        self.minmax_lines = tuple(self._vline(pg, minmax_pen, text, 0.78) for text in ("min", "max"))
        self.grid = pg.ScatterPlotItem(symbol="|", size=10, pen=grid_pen, brush=None)
        item.addItem(self.grid)
        # A caption, not a pyqtgraph legend: a legend row never wraps and would widen the scene
        # past a narrow pane, cutting off the right end of the range.
        self.caption = QLabel(wordWrap=True)
        self.grid_step = 1  # every grid_step-th grid point is drawn
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.caption)
        self.caption.setContentsMargins(8, 0, 8, 4)
        self.clear()

    def _vline(self, pg, pen, text: str, position: float):
        opts = {"position": position, "color": pen.color()}
        line = pg.InfiniteLine(angle=90, movable=False, pen=pen, label=text, labelOpts=opts)
        self.plot.getPlotItem().addItem(line, ignoreBounds=True)
        return line

    def clear(self) -> None:
        self.bars.setData([0.0, 1.0], [0.0])
        self.grid.setData([], [])
        for line in (*self.range_lines, *self.minmax_lines):
            line.hide()

    def show_example(self, e: WorkedExample) -> None:
        import numpy as np

        counts = np.asarray(e.hist_counts, float)
        self.bars.setData(np.asarray(e.hist_edges, float), counts)
        self._mark(e.lo, e.hi, e.grid, (e.block_min, e.block_max))
        self.plot.getPlotItem().showAxis("left")
        self._fit(float(e.hist_edges[0]), float(e.hist_edges[-1]), max(float(counts.max()), 1.0))

    def show_range(self, lo: float, hi: float, grid) -> None:
        """The range and grid alone: without the weights there is nothing to count."""
        self.bars.setData([lo, hi], [0.0])
        self._mark(lo, hi, grid, None)
        self.plot.getPlotItem().hideAxis("left")  # no counts to read
        self._fit(lo, hi, 1.0)

    def _mark(self, lo: float, hi: float, grid, minmax: tuple[float, float] | None) -> None:
        for line, value in zip(self.range_lines, (lo, hi), strict=True):
            line.setValue(value)
            line.show()
        for i, line in enumerate(self.minmax_lines):
            line.setVisible(minmax is not None)
            if minmax is not None:
                line.setValue(minmax[i])
        # 255 ticks of INT8 would merge into a bar: past MAX_TICKS, every k-th, and the caption says so.
        self.grid_step = max(1, math.ceil(len(grid) / MAX_TICKS))
        shown = [float(g) for g in grid[:: self.grid_step]]
        self.grid.setData(shown, [0.0] * len(shown))
        every = f" (one in {self.grid_step} of {len(grid)})" if self.grid_step > 1 else ""
        self.caption.setText(
            "<span style='color:#1f6fd1'>━━ calibrated range [lo, hi]</span> &nbsp; "
            "<span style='color:#e07b00'>╍╍ block min, max</span> &nbsp; "
            f"<b>|</b> grid points S·(q − Z){every}, the values the codes stand for"
        )

    def _fit(self, x_lo: float, x_hi: float, top: float) -> None:
        # Room below zero, so that the grid ticks centred on y = 0 show whole; room at the sides,
        # so that lines at the block's extremes stand clear of the axes.
        item = self.plot.getPlotItem()
        item.setXRange(x_lo, x_hi, padding=0.03)
        item.setYRange(-0.08 * top, 1.08 * top, padding=0)
