"""W8A8: the static range calibration chose for each layer's input, with S and Z, the histogram of
the input values it saw and the range over it, and the formula worked through with real numbers.

pyqtgraph is imported when the first input is shown (``show_input``)."""

from __future__ import annotations

from html import escape
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QLabel, QSplitter, QTableWidgetItem, QVBoxLayout, QWidget

from desktop.widgets.tables import read_only_table

COLUMNS = ("Input of", "lo", "hi", "S", "Z")
NO_RUN = "Quantize with “Weights and activations (W8A8)” to see the ranges of the layers' inputs."


def scale_zero(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, int]:
    """The affine S and Z of core.quant.affine.scale_zero, for one range, in plain Python."""
    if symmetric:
        return max(abs(lo), abs(hi)) / (2 ** (bits - 1) - 1) or 1e-38, 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2**bits - 1) or 1e-38
    return scale, min(max(round(-lo / scale), 0), 2**bits - 1)


def rows_of(activations: dict[str, Any] | None) -> list[tuple[str, float, float, float, int]]:
    """(layer, lo, hi, S, Z) of every calibrated input."""
    if not activations:
        return []
    bits, symmetric = activations.get("bits", 8), activations.get("symmetric", False)
    return [
        (name, lo, hi, *scale_zero(lo, hi, bits, symmetric))
        for name, (lo, hi) in activations["layers"].items()
    ]


def worked_html(name: str, lo: float, hi: float, bits: int, histogram: dict[str, Any]) -> str:
    """The formulas with this input's numbers, and x → q → x′ for the largest value seen and 0."""
    scale, zero = scale_zero(lo, hi, bits, False)
    top = 2**bits - 1
    biggest = histogram.get("hi", hi)
    lines = [
        f"<b>{escape(name)}</b>: its input, quantized per tensor with a static range",
        f"S = (hi − lo) / (2<sup>{bits}</sup> − 1) = ({hi:.5g} − ({lo:.5g})) / {top} = {scale:.5g}",
        f"Z = round(−lo / S) = round({-lo / scale:.4f}) = {zero}",
    ]
    for label, x in (("the largest value seen", biggest), ("zero", 0.0)):
        shifted = round(x / scale) + zero
        q = min(max(shifted, 0), top)
        lines.append(
            f"{label}: x = {x:.5g} → q = clamp(round({x / scale:.4f}) + {zero}, 0, {top}) = {q} → "
            f"x′ = S·(q − Z) = {scale * (q - zero):.5g}" + (" (clipped)" if q != shifted else "")
        )
    seen = histogram.get("values")
    if seen:
        lines.append(
            f"<span style='color:#6b7078'>Histogram of {seen:,} input values sampled in calibration.</span>"
        )
    return "<br>".join(lines)


class ActivationView(QWidget):
    """Signal ``inputShown(str)`` after an input's histogram and formula are drawn."""

    inputShown = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.activations: dict[str, Any] | None = None
        self.table = read_only_table(COLUMNS)
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.empty = QLabel(NO_RUN, wordWrap=True)
        self.text = QLabel(wordWrap=True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot: Any = None
        self.plot_holder = QWidget()
        QVBoxLayout(self.plot_holder).setContentsMargins(0, 0, 0, 0)
        detail = QWidget()
        detail_layout = QVBoxLayout(detail)
        detail_layout.addWidget(self.plot_holder, 1)
        detail_layout.addWidget(self.text)
        splitter = QSplitter(Qt.Orientation.Horizontal, childrenCollapsible=False)
        splitter.addWidget(self.table)
        splitter.addWidget(detail)
        splitter.setSizes([520, 600])
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addWidget(splitter, 1)
        self.set_activations(None)

    def set_activations(self, activations: dict[str, Any] | None) -> None:
        """A run's activation ranges (QuantizeReport.activations; None: a weight-only run)."""
        self.activations = activations
        rows = rows_of(activations)
        self.empty.setVisible(not rows)
        self.table.setRowCount(len(rows))
        for row, (name, lo, hi, scale, zero) in enumerate(rows):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            for column, value in enumerate((lo, hi, scale, float(zero)), start=1):
                item = QTableWidgetItem(f"{value:.4g}" if column < 4 else str(zero))
                item.setData(Qt.ItemDataRole.UserRole, value)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)
        self.text.setText("")
        if self.plot is not None:
            self.plot.getPlotItem().clear()
        if rows:
            self.table.selectRow(0)

    @Slot()
    def _on_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.show_input(self.table.item(rows[0].row(), 0).text())

    def show_input(self, name: str) -> None:
        lo, hi = self.activations["layers"][name]
        histogram = self.activations.get("histograms", {}).get(name, {})
        self.text.setText(worked_html(name, lo, hi, self.activations.get("bits", 8), histogram))
        self._draw(histogram, lo, hi)
        self.inputShown.emit(name)

    def _draw(self, histogram: dict[str, Any], lo: float, hi: float) -> None:
        import pyqtgraph as pg

        from desktop.widgets import weight_plots

        if self.plot is None:
            self.plot = pg.PlotWidget()
            item = self.plot.getPlotItem()
            item.setLabel("bottom", "input value")
            item.setLabel("left", "count")
            item.setMenuEnabled(False)
            self.plot_holder.layout().addWidget(self.plot)
        item = self.plot.getPlotItem()
        item.clear()
        counts = histogram.get("counts") or []
        if counts:
            left, right = histogram["lo"], histogram["hi"]
            width = (right - left) / len(counts)
            xs = [left + width * (i + 0.5) for i in range(len(counts))]
            bars = pg.BarGraphItem(
                x=xs, height=counts, width=width, brush=weight_plots.BAR_BRUSH, pen=weight_plots.BAR_PEN
            )
            item.addItem(bars)
        for value, label in ((lo, "lo"), (hi, "hi")):
            item.addItem(pg.InfiniteLine(value, angle=90, pen=weight_plots.SYM_PEN, label=label))
        item.setTitle(f"Values seen at this input, with the range [{lo:.4g}, {hi:.4g}]", size="10pt")
