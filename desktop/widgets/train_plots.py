"""Live plots of a training run: training and validation loss on one chart, learning rate,
gradient norm, tokens per second, process memory; validation accuracy for a classifier and the
watched layer's scale and zero point for quantization-aware training, when the run has them.

Curves are made once; incoming points are buffered and drawn on a 50 ms timer, so a fast run
costs one redraw per tick, not one per point. Long series are downsampled by pyqtgraph; NaN
points (a diverged loss) are skipped. Importing this module imports pyqtgraph.
"""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QGridLayout, QWidget

from desktop.widgets import weight_plots

REDRAW_MS = 50
TRAIN_PEN = pg.mkPen("#1f6fd1", width=2)
VAL_PEN = pg.mkPen("#e07b00", width=2)
OTHER_PEN = pg.mkPen("#2c3e50", width=1.5)
# metric name -> (plot key, curve label, pen); the plot keys are laid out in PLOTS' order
CURVES = {
    "loss": ("loss", "training", TRAIN_PEN),
    "val_loss": ("loss", "validation", VAL_PEN),
    "learning_rate": ("learning_rate", "", OTHER_PEN),
    "grad_norm": ("grad_norm", "", OTHER_PEN),
    "tokens_per_second": ("tokens_per_second", "", OTHER_PEN),
    "memory_mb": ("memory_mb", "", OTHER_PEN),
    "val_accuracy": ("val_accuracy", "", VAL_PEN),
    "qat_scale": ("qat_scale", "", OTHER_PEN),
    "qat_zero_point": ("qat_zero_point", "", VAL_PEN),
}
PLOTS = {  # plot key -> (title, y label); the last three show only when their run reports them
    "loss": ("Loss (training, validation)", "loss"),
    "learning_rate": ("Learning rate", "rate"),
    "grad_norm": ("Gradient norm (before clipping)", "norm"),
    "tokens_per_second": ("Tokens per second", "tokens/s"),
    "memory_mb": ("Process memory", "MB"),
    "val_accuracy": ("Validation accuracy", "accuracy"),
    "qat_scale": ("Scale S of the watched layer", "S"),
    "qat_zero_point": ("Zero point Z of the watched layer", "Z"),
}
OPTIONAL = ("val_accuracy", "qat_scale", "qat_zero_point")
COLUMNS = 3


class TrainPlots(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plots = {key: weight_plots._plot(title, "step", y) for key, (title, y) in PLOTS.items()}
        self.plots["loss"].getPlotItem().addLegend(offset=(-10, 10))
        self.curves = {}
        for name, (key, label, pen) in CURVES.items():
            symbol = "o" if name in ("val_loss", "val_accuracy") else None
            self.curves[name] = self.plots[key].getPlotItem().plot(
                [], [], pen=pen, name=label or None, symbol=symbol, symbolSize=5,
                symbolBrush=pen.color(), connect="finite",
            )  # fmt: skip
            # downsampled to the pixels, not clipped to the view: a plot filled while its tab was
            # hidden has a stale view range, and clipping to it drew nothing
            self.curves[name].setDownsampling(auto=True, method="peak")
        self.series: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in CURVES}
        self._dirty: set[str] = set()
        self._timer = QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self._redraw)
        self._timer.start()
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self._layout()

    def _layout(self) -> None:
        shown = [k for k in PLOTS if k not in OPTIONAL or self.series[_first_curve(k)][0]]
        for key, plot in self.plots.items():
            plot.setVisible(key in shown)
        for i, key in enumerate(shown):
            self.grid.addWidget(self.plots[key], i // COLUMNS, i % COLUMNS)

    def add(self, name: str, step: float, value: float) -> None:
        if name not in self.series:
            return
        xs, ys = self.series[name]
        if xs and step <= xs[-1]:
            # a resumed run repeats steps: keep the history up to where it continued
            keep = next((i for i, x in enumerate(xs) if x >= step), len(xs))
            del xs[keep:], ys[keep:]
        first = not xs
        xs.append(float(step))
        ys.append(float(value) if value is not None and math.isfinite(value) else math.nan)
        self._dirty.add(name)
        if first and CURVES[name][0] in OPTIONAL:
            self._layout()

    def set_history(self, records: list[dict]) -> None:
        """A saved run's metrics log (core.finetune.runlog.read_metrics), replacing what is shown."""
        self.clear()
        for record in records:
            for name, value in record.items():
                if name != "step" and value is not None:
                    self.add(name, record["step"], value)
        self._redraw()

    def clear(self) -> None:
        for name, (xs, ys) in self.series.items():
            xs.clear()
            ys.clear()
            self._dirty.add(name)
        self._layout()
        self._redraw()

    def _redraw(self) -> None:
        for name in self._dirty:
            xs, ys = self.series[name]
            self.curves[name].setData(xs, ys)
        self._dirty.clear()

    def last(self, name: str) -> float | None:
        ys = self.series[name][1]
        return ys[-1] if ys else None


def _first_curve(key: str) -> str:
    return next(name for name, (plot, _label, _pen) in CURVES.items() if plot == key)
