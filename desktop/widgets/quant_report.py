"""The report of one quantize run: size and perplexity before and after, and the error each
layer took, as a plot (SQNR per layer, in model order, one colour per module kind) and a table.

pyqtgraph is imported when the first report is shown (``ensure_plot``), never at window start.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QLabel,
    QSplitter,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.formatting import format_bytes, format_seconds
from desktop.widgets.tables import read_only_table

COLUMNS = ("Layer", "Bits", "MSE", "SQNR (dB)")
KIND_COLOURS = {
    "q_proj": "#1f6fd1",
    "k_proj": "#5aa0f0",
    "v_proj": "#8e44ad",
    "o_proj": "#c0392b",
    "gate_proj": "#e07b00",
    "up_proj": "#27ae60",
    "down_proj": "#2c3e50",
}
OTHER_COLOUR = "#7f8c8d"


class _SortableItem(QTableWidgetItem):
    """Sorts by the number in UserRole where there is one, else by text."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        mine, theirs = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        if isinstance(mine, float) and isinstance(theirs, float):
            return mine < theirs
        return self.text() < other.text()


def _number_item(value: float, text: str) -> QTableWidgetItem:
    item = _SortableItem(text)
    item.setData(Qt.ItemDataRole.UserRole, value)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def sqnr_value(value: Any) -> float:
    """SQNR from a report: a float, or "inf" (exact layers) after a JSON round trip."""
    return float(value)


def perplexity_text(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "perplexity not measured"
    change = 100.0 * (after - before) / before
    return f"perplexity <b>{before:.2f} → {after:.2f}</b> ({change:+.1f}%)"


def summary_html(report: dict[str, Any]) -> str:
    before, after = report["size_before_bytes"], report["size_after_bytes"]
    label = report.get("label", "")
    return (
        (f"<b>{label}</b><br>" if label else "")
        + f"Size <b>{format_bytes(before)} → {format_bytes(after)}</b> ({before / max(after, 1):.1f}× "
        f"smaller, {report['bits_per_weight']:.2f} bits per weight) · "
        + perplexity_text(report.get("perplexity_before"), report.get("perplexity_after"))
        + f" · {format_seconds(report['seconds'])}"
    )


class QuantReportView(QWidget):
    """Signal ``layerSelected(str)`` when a layer is picked in the table or on the plot."""

    layerSelected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.report: dict[str, Any] | None = None
        self.summary = QLabel(wordWrap=True, objectName="summary")
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = read_only_table(COLUMNS)
        header = self.table.horizontalHeader()
        header.setSortIndicator(0, Qt.SortOrder.AscendingOrder)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self.plot_holder = QWidget()
        QVBoxLayout(self.plot_holder).setContentsMargins(0, 0, 0, 0)
        self.plot: Any = None
        splitter = QSplitter(Qt.Orientation.Horizontal, childrenCollapsible=False)
        splitter.addWidget(self.plot_holder)
        splitter.addWidget(self.table)
        splitter.setSizes([560, 560])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.summary)
        layout.addWidget(splitter, 1)

    def ensure_plot(self) -> None:
        if self.plot is not None:
            return
        import pyqtgraph as pg

        from desktop.widgets import weight_plots  # noqa: F401 - sets pyqtgraph's colours

        self.plot = pg.PlotWidget()
        item = self.plot.getPlotItem()
        item.setTitle("Error per layer (higher SQNR = closer to the original)", size="10pt")
        item.setLabel("bottom", "layer, in model order")
        item.setLabel("left", "SQNR (dB)")
        item.showGrid(x=True, y=True, alpha=0.15)
        item.setMenuEnabled(False)
        item.addLegend(offset=(10, 5), labelTextSize="8pt", colCount=4)
        self.plot_holder.layout().addWidget(self.plot)
        if self.report is not None:
            self._draw()

    def set_report(self, report: dict[str, Any] | None) -> None:
        """A QuantizeReport as a dict (report.to_dict() or a run's report.json)."""
        self.report = report
        self.table.setSortingEnabled(False)
        layers = report["layers"] if report else []
        self.table.setRowCount(len(layers))
        for row, layer in enumerate(layers):
            name = _SortableItem(layer["name"])
            name.setData(Qt.ItemDataRole.UserRole, float(row))  # sorting by name keeps model order
            name.setToolTip(layer["name"])
            self.table.setItem(row, 0, name)
            bits = layer["bits"]
            self.table.setItem(row, 1, _number_item(float(bits), f"{bits}"))
            self.table.setItem(row, 2, _number_item(float(layer["mse"]), f"{layer['mse']:.3g}"))
            sqnr = sqnr_value(layer["sqnr_db"])
            text = "exact" if math.isinf(sqnr) else f"{sqnr:.1f}"
            self.table.setItem(row, 3, _number_item(sqnr, text))
        self.table.setSortingEnabled(True)
        self.summary.setText(summary_html(report) if report else "")
        if self.plot is not None:
            self._draw()

    def _draw(self) -> None:
        import pyqtgraph as pg

        item = self.plot.getPlotItem()
        item.clear()
        item.legend.clear()
        layers = self.report["layers"] if self.report else []
        for kind, xs, ys in _series(layers):
            colour = KIND_COLOURS.get(kind, OTHER_COLOUR)
            points = pg.ScatterPlotItem(xs, ys, size=7, brush=pg.mkBrush(colour), pen=None, name=kind)
            points.sigClicked.connect(self._on_points_clicked)
            item.addItem(points)
        item.enableAutoRange()
        ys = [y for _, _, values in _series(layers) for y in values]
        if ys:  # room above the points for the legend's row
            low, high = min(ys), max(ys)
            item.setYRange(low - 0.05 * (high - low or 1), high + 0.35 * (high - low or 1), padding=0)

    @Slot(object, object)
    def _on_points_clicked(self, _item: Any, points: Any) -> None:
        if len(points) and self.report:
            index = int(round(points[0].pos().x()))
            self.select(self.report["layers"][index]["name"])

    def select(self, name: str) -> None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).text() == name:
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
                return

    @Slot()
    def _on_table_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.layerSelected.emit(self.table.item(rows[0].row(), 0).text())


def _series(layers: list[dict[str, Any]]) -> list[tuple[str, list[float], list[float]]]:
    """(module kind, x = layer index, y = SQNR) per kind; exact layers are left out of the plot."""
    groups: dict[str, tuple[list[float], list[float]]] = {}
    for index, layer in enumerate(layers):
        sqnr = sqnr_value(layer["sqnr_db"])
        if not math.isfinite(sqnr):
            continue
        kind = layer["name"].rsplit(".", 1)[-1]
        kind = kind if kind in KIND_COLOURS else "other"
        xs, ys = groups.setdefault(kind, ([], []))
        xs.append(float(index))
        ys.append(sqnr)
    return [(kind, xs, ys) for kind, (xs, ys) in groups.items()]
