"""The selected tensor, in the Inspect step: its histogram and per-channel plot on the left, the
evidence for its recommendation (SchemeEvidence) on the right.

Drawing the histogram needs the tensor's values, so the view reads the tensor through the job
runner (core.weights.detail.tensor_detail), one short job per selection; a newer request
supersedes an older one. The plots come from desktop.widgets.weight_plots, which imports
pyqtgraph: ``ensure_plots()`` makes them when the pane first shows, not at window start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.jobs import JobHandle, JobRunner
from desktop.widgets.scheme_evidence import SchemeEvidence

NO_SELECTION = "Select a tensor in the table."
READ_DELAY_MS = 80  # coalesces a burst of selection, bin or bit-width changes into one read


@dataclass(frozen=True)
class DetailParams:
    source: str  # the checkpoint: a model folder, a .safetensors or a .gguf file
    name: str
    bins: int
    bits: int

    def validate(self) -> list[str]:
        problems = [] if Path(self.source).exists() else [f"{self.source} does not exist"]
        if self.bins < 1:
            problems.append(f"the histogram needs at least one bin (got {self.bins})")
        return problems


def _detail_job(params: DetailParams, ctx) -> Any:
    from core.weights.detail import tensor_detail

    ctx.stage(f"Reading {params.name}")
    return tensor_detail(params.source, params.name, params.bins, params.bits)


class TensorDetailView(QSplitter):
    """Signals: ``detailShown(name)`` when a tensor's plots are drawn; ``failed(exc, traceback)``
    when reading it failed (the pane shows it)."""

    detailShown = Signal(str)
    failed = Signal(object, str)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)
        self.setChildrenCollapsible(False)
        self.runner = runner
        self.hist: Any = None  # weight_plots.HistogramPlot, made by ensure_plots()
        self.channels: Any = None  # weight_plots.ChannelPlot
        self.detail: Any = None  # the core.weights.detail.TensorDetail drawn
        self.shown: DetailParams | None = None  # what self.detail was read with
        self._wanted: tuple[str, str] | None = None  # (source, name) of the selection
        self._bits, self._k = 4, 3.0
        self._handle: JobHandle | None = None
        self._pending: DetailParams | None = None  # what the running job reads
        self._timer = QTimer(self, singleShot=True, interval=READ_DELAY_MS)
        self._timer.timeout.connect(self.request_detail)
        self.bins_spin = QSpinBox(minimum=10, maximum=400, value=100, singleStep=10, keyboardTracking=False)
        self.log_check = QCheckBox("Log scale")
        self.log_check.setToolTip("Counts on a log scale: the tails (outliers) become visible")
        self.plot_title = QLabel(NO_SELECTION)
        # A long tensor name must not widen the plots at the expense of the evidence beside them.
        self.plot_title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.evidence = SchemeEvidence()
        self.plots_widget = QWidget()  # what "Export plots" saves
        self._plot_box = QVBoxLayout()
        self._layout()
        self.bins_spin.valueChanged.connect(self._timer.start)
        self.log_check.toggled.connect(self._on_log)

    def _layout(self) -> None:
        controls = QHBoxLayout()
        controls.addWidget(self.plot_title, 1)
        controls.addWidget(QLabel("Bins:"))
        controls.addWidget(self.bins_spin)
        controls.addWidget(self.log_check)
        column = QVBoxLayout(self.plots_widget)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(controls)
        column.addLayout(self._plot_box, 1)
        right = QScrollArea(widgetResizable=True)
        right.setWidget(self.evidence)
        right.setMinimumWidth(420)  # the six schemes' table without cut-off labels
        self.addWidget(self.plots_widget)
        self.addWidget(right)
        self.setStretchFactor(0, 1)  # extra width goes to the plots
        self.setSizes([560, 440])

    def ensure_plots(self) -> None:
        if self.hist is not None:
            return
        from desktop.widgets.weight_plots import ChannelPlot, HistogramPlot

        self.hist, self.channels = HistogramPlot(), ChannelPlot()
        self._plot_box.addWidget(self.hist, 3)
        self._plot_box.addWidget(self.channels, 2)
        self.hist.set_log(self.log_check.isChecked())
        if self.detail is not None:
            self._draw()

    # -- what to show ---------------------------------------------------------------------
    def show_tensor(self, source: str, tensor_report: Any, bits: int, group_size: int) -> None:
        """Show one tensor of a report: its evidence at once, its plots once it has been read.
        ``bits``/``group_size``: what the report measured at."""
        self.evidence.show_tensor(tensor_report, bits, group_size)
        self._wanted = (source, tensor_report.stats.name)
        self._timer.start()

    def set_bits(self, bits: int) -> None:
        """The bit width whose clipping ranges the histogram draws."""
        if bits != self._bits:
            self._bits = bits
            if self._wanted is not None:
                self._timer.start()

    def set_k(self, k: float) -> None:
        self._k = k
        if self.hist is not None:
            self.hist.set_k(k)

    def clear(self) -> None:
        self._timer.stop()
        if self._handle is not None:
            self._handle.cancel()
        self._wanted = self.detail = self.shown = None
        self.plot_title.setText(NO_SELECTION)
        self.plot_title.setToolTip("")
        self.evidence.clear()
        if self.hist is not None:
            self.hist.clear()
            self.channels.clear()

    # -- reading --------------------------------------------------------------------------
    @Slot()
    def request_detail(self) -> JobHandle | None:
        """Read the selected tensor for its plots (None when they already show it)."""
        self._timer.stop()
        if self._wanted is None:
            return None
        params = DetailParams(*self._wanted, self.bins_spin.value(), self._bits)
        if params == self.shown or (self._handle is not None and params == self._pending):
            return None
        if self._handle is not None:
            self._handle.cancel()  # superseded: its result is ignored
        handle = self.runner.start(
            _detail_job, params, name=f"Reading {params.name}", owner=self, background=True
        )
        handle.succeeded.connect(self._on_detail)
        handle.failed.connect(self._on_failed)
        handle.finished.connect(self._on_finished)
        self._handle, self._pending = handle, params
        return handle

    @Slot(object)
    def _on_detail(self, detail: Any) -> None:
        if self.sender() is not self._handle:
            return
        self.detail, self.shown = detail, self._pending
        self.ensure_plots()
        self._draw()
        self.detailShown.emit(detail.stats.name)

    @Slot(object, str)
    def _on_failed(self, exc: BaseException, tb: str) -> None:
        if self.sender() is self._handle:
            self.failed.emit(exc, tb)

    @Slot()
    def _on_finished(self) -> None:
        if self.sender() is self._handle:
            self._handle = None

    def _draw(self) -> None:
        s = self.detail.stats
        self.plot_title.setText(f"<b>{s.name}</b> · INT{self.shown.bits} ranges")
        self.plot_title.setToolTip(s.name)
        self.hist.set_detail(self.detail, self._k)
        self.channels.set_values(self.detail.channel_absmax, s.channel_spread, len(s.shape) < 2)

    @Slot(bool)
    def _on_log(self, on: bool) -> None:
        if self.hist is not None:
            self.hist.set_log(on)
