"""The token length of each row as a histogram, with the maximum length as a line: the rows to
its right would be cut. Importing this module imports pyqtgraph (the Data box does so on first use)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from desktop.widgets import weight_plots

BINS = 40
CUT_PEN = pg.mkPen("#c0392b", width=2)


class LengthHistogram(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = weight_plots._plot("", "tokens per row", "rows")
        item = self.plot.getPlotItem()
        self.bars = item.plot(
            [], [], stepMode="center", fillLevel=0, pen=weight_plots.BAR_PEN, brush=weight_plots.BAR_BRUSH
        )
        self.cut_line = pg.InfiniteLine(
            angle=90, pen=CUT_PEN, label="max length", labelOpts={"position": 0.9}
        )
        item.addItem(self.cut_line)
        self.summary = QLabel(wordWrap=True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.plot, 1)
        self._lengths: list[int] = []

    def set_lengths(self, lengths: list[int], max_length: int) -> None:
        self._lengths = list(lengths)
        if lengths:
            top = max(max(lengths), max_length) + 1
            counts, edges = np.histogram(lengths, bins=BINS, range=(0, top))
            self.bars.setData(edges, counts)
        else:
            self.bars.setData([], [])
        self.set_max_length(max_length)

    def set_max_length(self, max_length: int) -> None:
        self.cut_line.setValue(max_length)
        lengths = self._lengths
        if not lengths:
            self.summary.setText("Token lengths appear once a model is loaded and the data is read.")
            return
        over = sum(n > max_length for n in lengths)
        median = int(np.median(lengths))
        cut = (f"<b>{over}</b> of {len(lengths)} rows are longer than {max_length} tokens and would be cut"
               if over else f"every row fits in {max_length} tokens")  # fmt: skip
        self.summary.setText(f"Median {median} tokens, longest {max(lengths)}; {cut}.")

    def over_length(self, max_length: int) -> int:
        return sum(n > max_length for n in self._lengths)
