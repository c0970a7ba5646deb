"""Scales & zero points of a quantization run: every tensor's (S, Z) at a glance, its blocks on
demand, and one block worked through x → q → x' with a histogram of its weights.

The numbers come from core.quant.explain, which imports torch: this module imports it (and
pyqtgraph, for the block plot) on first use, so the window can open without either
(ARCHITECTURE.md practice 12). The CSV export is a job on the runner: a large model has millions
of blocks (about 1.5 s per 2 M rows), too slow for the GUI thread.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTextBrowser,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop import dialogs
from desktop.jobs import JobHandle, JobRunner
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.worked_example_text import (
    block_label,
    example_html,
    no_weight_html,
    num,
    tensor_texts,
)

if TYPE_CHECKING:
    import torch

    from core.quant.explain import WorkedExample
    from core.quant.qtensor import QuantizedWeight

BLOCK_LIMIT = 256  # block rows listed under a tensor; the CSV holds them all
COLUMNS = ("Tensor / block", "Scheme", "(S, Z) pairs", "S: min · median · max", "Z")
KEY_ROLE = Qt.ItemDataRole.UserRole  # (name, row, group) of a row; group None: a tensor row
NO_DATA = "Quantize the model to see the scales and zero points of every layer."
NO_WEIGHT_HINT = "Load the base model to see a block worked through, x → q → x′, with its real numbers."


@dataclass(frozen=True)
class ExportParams:
    quantized: dict[str, Any]  # name -> QuantizedWeight
    path: Path

    def validate(self) -> list[str]:
        # Only the folder: what the file system says of the file itself (a folder of that name,
        # a name too long, no permission) comes back from the write as a StorageError.
        problems = [] if self.quantized else ["there are no quantized tensors to export"]
        try:
            if not self.path.parent.is_dir():
                problems.append(f"the folder {self.path.parent} does not exist")
        except OSError as exc:
            problems.append(f"the folder {self.path.parent} cannot be used ({exc.strerror or exc})")
        return problems


def export_scales(params: ExportParams, ctx) -> Path:
    from core.quant.explain import write_scales_csv

    ctx.stage(f"Writing {params.path.name}")
    return write_scales_csv(params.quantized, params.path)


# -- the view ----------------------------------------------------------------------------------
class ScalesView(QWidget):
    """Signals: ``blockShown(tensor, row, group)`` once a block is drawn (its worked example, or
    only its S and Z when the base model is not loaded); ``numbersChanged(dict)`` with the Learn
    page's numbers (core.quant.explain.learn_numbers); ``exportFinished(ok, path or message)``."""

    blockShown = Signal(str, int, int)
    numbersChanged = Signal(dict)
    exportFinished = Signal(bool, str)

    def __init__(self, runner: JobRunner | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner if runner is not None else JobRunner(self)
        self.quantized: dict[str, QuantizedWeight] = {}
        self.weight_of: Callable[[str], torch.Tensor] | None = None
        self.current_example: WorkedExample | None = None
        self.current_block: tuple[str, int, int] | None = None
        self.plot: Any = None  # a block_plot.BlockPlot, made when the first block shows (pyqtgraph)
        self._weight: tuple[str, torch.Tensor] | None = None  # the last tensor weight_of gave
        self._export: JobHandle | None = None
        self._export_rows = 0
        self._outcome: tuple[bool, str] = (False, "")
        self._block_failed = False  # the error panel shows why a block could not be drawn
        self._syncing = False  # show_block moving the tree's current item: not a user selection
        self.title_label = QLabel()
        self.filter_edit = QLineEdit(placeholderText="Filter tensors by name…", clearButtonEnabled=True)
        self.export_button = QPushButton("Export S and Z (CSV)…")
        self.export_button.setToolTip("Every (S, Z) of every block: tensor, row, group, columns, scale, zero")
        self.status_label = QLabel(wordWrap=True)
        self.status_label.setObjectName("hint")
        self.error_panel = ErrorPanel()
        self.tree = self._make_tree()
        self.example = QTextBrowser(openLinks=False)
        self._plot_box = QVBoxLayout()
        self._layout()
        self.filter_edit.textChanged.connect(self._apply_filter)
        self.export_button.clicked.connect(self.export_csv)
        self.tree.itemExpanded.connect(self._fill_blocks)
        self.tree.currentItemChanged.connect(self._on_current)
        self.set_data(None)

    def _make_tree(self) -> QTreeWidget:
        tree = QTreeWidget()
        tree.setColumnCount(len(COLUMNS))
        tree.setHeaderLabels(list(COLUMNS))
        tree.setUniformRowHeights(True)  # thousands of block rows stay cheap to lay out
        tree.setAlternatingRowColors(True)
        header = tree.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(False)
        header.resizeSection(0, 320)
        header.resizeSection(1, 190)
        header.resizeSection(2, 100)
        header.resizeSection(3, 220)
        tree.headerItem().setToolTip(0, "Expand a tensor to list its blocks (rows or groups)")
        return tree

    def _layout(self) -> None:
        top = QHBoxLayout()
        top.addWidget(self.title_label)
        top.addWidget(self.filter_edit, 1)
        top.addWidget(self.export_button)
        plots = QWidget()
        plots.setLayout(self._plot_box)
        self._plot_box.setContentsMargins(0, 0, 0, 0)
        bottom = QSplitter(Qt.Orientation.Horizontal, childrenCollapsible=False)
        bottom.addWidget(plots)
        bottom.addWidget(self.example)
        bottom.setSizes([420, 580])
        split = QSplitter(Qt.Orientation.Vertical, childrenCollapsible=False)
        split.addWidget(self.tree)
        split.addWidget(bottom)
        split.setSizes([300, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.error_panel)
        layout.addWidget(self.status_label)
        layout.addWidget(split, 1)

    # -- data ------------------------------------------------------------------------------
    def set_data(
        self,
        quantized: dict[str, QuantizedWeight] | None,
        weight_of: Callable[[str], torch.Tensor] | None = None,
        title: str = "",
    ) -> None:
        """The quantized layers of a run, and the original FP32 weight of a layer by name
        (None: the base model is not loaded). ``quantized`` None clears the view."""
        self.quantized = dict(quantized or {})
        self.weight_of = weight_of if quantized else None
        self._weight = None
        self.current_example = self.current_block = None
        self.tree.clear()
        self.error_panel.dismiss()
        self.status_label.clear()
        self.status_label.hide()
        self.title_label.setText(f"<b>{escape(title)}</b>" if title else "")
        self.title_label.setVisible(bool(title))
        self.export_button.setEnabled(bool(self.quantized) and self._export is None)
        self.filter_edit.setEnabled(bool(self.quantized))
        if not self.quantized:
            self._show_nothing(NO_DATA)
            return
        from core.quant.explain import scale_rows

        for row in scale_rows(self.quantized):
            item = QTreeWidgetItem(tensor_texts(row))
            item.setData(0, KEY_ROLE, (row.name, None, None))
            item.setToolTip(0, f"{row.name}\n{row.shape[0]} × {row.shape[1]}, {row.pairs:,} (S, Z) pairs")
            item.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
            for column in (2, 3, 4):
                item.setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.tree.addTopLevelItem(item)
        self._apply_filter(self.filter_edit.text())
        self.select_tensor(next(iter(self.quantized)))

    def _show_nothing(self, text: str) -> None:
        self.example.setHtml(f"<p>{escape(text)}</p>")
        if self.plot is not None:
            self.plot.clear()
        self.numbersChanged.emit({"hint": text})

    def tensor_item(self, name: str) -> QTreeWidgetItem | None:
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, KEY_ROLE)[0] == name:
                return item
        return None

    @Slot(QTreeWidgetItem)
    def _fill_blocks(self, item: QTreeWidgetItem) -> None:
        """List a tensor's blocks when it is first expanded (at most BLOCK_LIMIT of them)."""
        name, _, group = item.data(0, KEY_ROLE)
        if group is not None or item.childCount():
            return
        from core.quant.explain import blocks_of

        q = self.quantized[name]
        blocks = blocks_of(q, limit=BLOCK_LIMIT)
        children = []
        for block in blocks:
            child = QTreeWidgetItem([block_label(block), "", "", num(block.scale), str(block.zero)])
            child.setData(0, KEY_ROLE, (name, block.row, block.group))
            for column in (3, 4):
                child.setTextAlignment(column, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            children.append(child)
        total = q.scale[:1, :1].numel() if q.scheme.granularity == "tensor" else q.scale.numel()
        if total > len(blocks):
            more = QTreeWidgetItem([f"… {total - len(blocks):,} more — export the CSV to see all"])
            more.setFlags(Qt.ItemFlag.ItemIsEnabled)  # not selectable: it is no block
            children.append(more)
        item.addChildren(children)

    @Slot(str)
    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            item.setHidden(bool(needle) and needle not in item.data(0, KEY_ROLE)[0].lower())

    # -- selection -------------------------------------------------------------------------
    def select_tensor(self, name: str) -> bool:
        """Make ``name``'s row current (clearing a filter that hides it) and show its first
        block; False if there is no such tensor."""
        item = self.tensor_item(name)
        if item is None:
            return False
        if item.isHidden():
            self.filter_edit.clear()
        if self.tree.currentItem() is item:
            self.show_block(name, 0, 0)
        else:
            self.tree.setCurrentItem(item)
        return True

    @Slot(QTreeWidgetItem, QTreeWidgetItem)
    def _on_current(self, current: QTreeWidgetItem | None, previous: QTreeWidgetItem | None) -> None:
        key = current.data(0, KEY_ROLE) if current is not None else None
        if self._syncing or key is None:
            return
        name, row, group = key
        self.show_block(name, row or 0, group or 0)

    def show_block(self, name: str, row: int, group: int) -> None:
        """Draw block (row, group) of ``name``: the worked example, or only S and Z when the
        base model is not loaded. Emits ``blockShown`` (or shows the error in the panel)."""
        q = self.quantized[name]
        self.current_block, self.current_example = (name, row, group), None
        self._sync_tree(name, row, group)
        self._ensure_plot()
        try:
            weight = self._weight_for(name)
            if weight is None:
                self._draw_without_weight(name, q, row, group)
            else:
                self._draw_example(name, q, weight, row, group)
        except Exception as exc:  # noqa: BLE001 - a failed read shows where the user clicked
            self.error_panel.show_error(exc, traceback.format_exc())
            self._block_failed = True
            self._show_nothing(f"Block ({row}, {group}) of {name} could not be shown.")
            return
        if self._block_failed:  # an export's error stays until dismissed
            self._block_failed = False
            self.error_panel.dismiss()
        self.blockShown.emit(name, row, group)

    def _weight_for(self, name: str) -> torch.Tensor | None:
        if self.weight_of is None:
            return None
        if self._weight is None or self._weight[0] != name:
            self._weight = None  # a failed read must not leave the previous tensor in place
            self._weight = (name, self.weight_of(name))
        return self._weight[1]

    def _draw_example(
        self, name: str, q: QuantizedWeight, weight: torch.Tensor, row: int, group: int
    ) -> None:
        from core.quant.explain import learn_numbers, worked_example

        example = worked_example(weight, q, row, group, n_values=6, name=name)
        self.current_example = example
        self.plot.show_example(example)
        self.example.setHtml(example_html(example))
        self.numbersChanged.emit(learn_numbers(example))

    def _draw_without_weight(self, name: str, q: QuantizedWeight, row: int, group: int) -> None:
        import numpy as np

        from core.quant.affine import qrange
        from core.quant.explain import blocks_of

        index = 0 if q.scheme.granularity == "tensor" else row * q.scale.shape[1] + group
        block = blocks_of(q, limit=index + 1)[index]
        qmin, qmax = qrange(q.scheme.bits, q.scheme.symmetric)
        grid = block.scale * (np.arange(qmin, qmax + 1, dtype=np.float64) - block.zero)
        self.plot.show_range(float(grid[0]), float(grid[-1]), grid)
        self.example.setHtml(no_weight_html(name, q, block))
        self.numbersChanged.emit({"hint": NO_WEIGHT_HINT})

    def _sync_tree(self, name: str, row: int, group: int) -> None:
        """Make the block's row current, if it is listed (else its tensor's row)."""
        item = self.tensor_item(name)
        if item is None:
            return
        target = item
        for i in range(item.childCount()):
            if item.child(i).data(0, KEY_ROLE) == (name, row, group):
                target = item.child(i)
                break
        if self.tree.currentItem() is not target:
            self._syncing = True
            try:
                self.tree.setCurrentItem(target)
            finally:
                self._syncing = False

    def _ensure_plot(self) -> None:
        if self.plot is None:
            from desktop.widgets.block_plot import BlockPlot

            self.plot = BlockPlot()
            self._plot_box.addWidget(self.plot)

    # -- export ----------------------------------------------------------------------------
    @Slot()
    def export_csv(self) -> JobHandle | None:
        """Ask where to save, then write every (S, Z) as a job; None when nothing started."""
        if not self.quantized or self._export is not None:
            return None
        path = dialogs.choose_save_file(
            self, "Export scales and zero points", "CSV files (*.csv)", "scales_and_zero_points.csv"
        )
        if path is None:
            return None
        path = Path(path) if Path(path).suffix else Path(path).with_suffix(".csv")
        params = ExportParams(dict(self.quantized), path)
        problems = params.validate()
        if problems:
            message = "Could not export the scales: " + "; ".join(problems) + "."
            self.error_panel.show_message(message, "Choose a file name in a folder that exists.")
            self.exportFinished.emit(False, message)
            return None
        self.error_panel.dismiss()
        self.status_label.setText(f"Writing {path}…")
        self.status_label.show()
        self.export_button.setEnabled(False)
        handle = self.runner.start(export_scales, params, name=f"Exporting {path.name}", owner=self)
        handle.succeeded.connect(self._on_exported)
        handle.failed.connect(self._on_export_failed)
        handle.cancelled.connect(self._on_export_cancelled)
        handle.finished.connect(self._on_export_finished)
        # The CSV holds one line per stored (S, Z): per-tensor schemes store theirs on every row.
        self._export, self._export_rows = handle, sum(q.scale.numel() for q in params.quantized.values())
        return handle

    # The outcome is announced on finished(), the handle's last signal: the button is usable again.
    @Slot(object)
    def _on_exported(self, path: Path) -> None:
        self.status_label.setText(f"Saved {self._export_rows:,} (S, Z) rows to {path}")
        self._outcome = (True, str(path))

    @Slot(object, str)
    def _on_export_failed(self, exc: BaseException, tb: str) -> None:
        self.status_label.hide()
        self.error_panel.show_error(exc, tb)
        self._outcome = (False, str(exc))

    @Slot()
    def _on_export_cancelled(self) -> None:
        self.status_label.setText("Export cancelled.")
        self._outcome = (False, "cancelled")

    @Slot()
    def _on_export_finished(self) -> None:
        self._export = None
        self.export_button.setEnabled(bool(self.quantized))
        self.exportFinished.emit(*self._outcome)


def _preview_data() -> tuple[dict, Callable]:
    """Three random weights, quantized three ways (sym per-channel, asym group-32, INT8 per-tensor)."""
    import torch

    from core.quant.affine import Scheme
    from core.quant.qtensor import quantize_rtn

    g = torch.Generator().manual_seed(0)
    weights = {
        "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 96, generator=g) * 0.05,
        "model.layers.0.mlp.down_proj.weight": torch.randn(1536, 96, generator=g) * 0.03 + 0.005,
        "lm_head.weight": torch.randn(128, 64, generator=g) * 0.02,
    }
    schemes = [Scheme(4, True, "channel"), Scheme(4, False, "group", 32), Scheme(8, True, "tensor")]
    quantized = {n: quantize_rtn(w, s) for (n, w), s in zip(weights.items(), schemes, strict=True)}
    return quantized, weights.__getitem__


if __name__ == "__main__":  # preview: python -m desktop.widgets.scales_view
    import sys

    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    view = ScalesView()
    view.resize(1200, 800)
    view.set_data(*_preview_data(), title="Random weights, RTN")
    view.show()
    code = app.exec()
    view.runner.wait_all(30_000)
    sys.exit(code)
