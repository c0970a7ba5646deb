"""Two optional parts of the Precision step: a size budget (mixed precision chosen from measured
sensitivity when quantizing) and the multi-stage path FP32 → INT16 → INT8, measured on demand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.jobs import JobHandle, JobRunner
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.job_bar import JobBar


class BudgetBox(QGroupBox):
    """Signal ``budgetChanged(float)``: megabytes, 0 when the budget is off."""

    budgetChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Size budget (mixed precision)", parent)
        self.check = QCheckBox("Fit the model into")
        self.spin = QDoubleSpinBox(decimals=2, minimum=0.01, maximum=1_000_000.0, singleStep=5.0)
        self.spin.setSuffix(" MB")
        self.spin.setKeyboardTracking(False)
        note = QLabel(
            "When quantizing, each layer's sensitivity is measured (how much the loss rises when its "
            "weights move, from the gradients on a few calibration windows) and the layers that matter "
            "most get 8 bits, within the budget. Layers you set by hand keep their precision.",
            wordWrap=True,
            objectName="hint",
        )
        row = QHBoxLayout()
        row.addWidget(self.check)
        row.addWidget(self.spin)
        row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(note)
        self.check.toggled.connect(self._on_edit)
        self.spin.valueChanged.connect(self._on_edit)

    def set_values(self, budget_mb: float, suggestion_mb: float) -> None:
        """Show ``budget_mb`` (0: off; the spin box then offers ``suggestion_mb``)."""
        for widget in (self.check, self.spin):
            widget.blockSignals(True)
        self.check.setChecked(budget_mb > 0)
        self.spin.setValue(budget_mb if budget_mb > 0 else suggestion_mb)
        self.spin.setEnabled(budget_mb > 0)
        for widget in (self.check, self.spin):
            widget.blockSignals(False)

    def budget_mb(self) -> float:
        return self.spin.value() if self.check.isChecked() else 0.0

    @Slot()
    def _on_edit(self, *_: Any) -> None:
        self.spin.setEnabled(self.check.isChecked())
        self.budgetChanged.emit(self.budget_mb())


def _multistage_job(params: Any, ctx) -> Any:
    from core.quant import multistage

    return multistage.run(params, ctx)


class MultistageBox(QGroupBox):
    """Runs core.quant.multistage on the loaded model's linear weights and shows what each stage
    costs. ``params_of()`` gives the MultistageParams for the current settings (None: no model).
    Signal ``measured(MultistageReport)``."""

    measured = Signal(object)

    def __init__(
        self, runner: JobRunner, params_of: Callable[[], Any], parent: QWidget | None = None
    ) -> None:
        super().__init__("Multi-stage path: FP32 → INT16 → INT8", parent)
        self.runner, self.params_of = runner, params_of
        self.handle: JobHandle | None = None
        intro = QLabel(
            "Quantize to INT16 first and then from INT16 to INT8, and see the error each stage adds "
            "next to going to INT8 in one step (same symmetry and granularity as above).",
            wordWrap=True,
            objectName="hint",
        )
        self.run_button = QPushButton("Measure the two stages")
        self.job_bar = JobBar()
        self.error_panel = ErrorPanel()
        self.result = QLabel(wordWrap=True)
        layout = QVBoxLayout(self)
        for widget in (intro, self.run_button, self.job_bar, self.error_panel, self.result):
            layout.addWidget(widget)
        self.run_button.clicked.connect(self.run)

    @Slot()
    def run(self) -> JobHandle | None:
        params = self.params_of()
        if params is None or self.handle is not None:
            return None
        self.error_panel.dismiss()
        self.handle = self.runner.start(
            _multistage_job, params, name="Measuring the multi-stage path", owner=self
        )
        self.handle.succeeded.connect(self._on_report)
        self.handle.failed.connect(self.error_panel.show_error)
        self.handle.finished.connect(self._on_finished)
        self.job_bar.bind(self.handle)
        self.run_button.setEnabled(False)
        return self.handle

    @Slot(object)
    def _on_report(self, report: Any) -> None:
        self.result.setText(report_html(report))
        self.measured.emit(report)

    @Slot()
    def _on_finished(self) -> None:
        self.handle = None
        self.run_button.setEnabled(True)


def report_html(report: Any) -> str:
    s = report.summary
    stages = " → ".join(f"INT{b}" for b in report.stages)
    rows = "".join(
        f"<tr><td>{'FP32' if i == 0 else f'INT{report.stages[i - 1]}'} → INT{b}</td>"
        f"<td align='right'>{db:.1f} dB</td></tr>"
        for i, (b, db) in enumerate(zip(report.stages, s.stage_sqnr_db, strict=True))
    )
    verdict = (
        "costs nothing measurable" if abs(s.detour_cost_db) < 0.01 else f"costs {s.detour_cost_db:.3f} dB"
    )
    return (
        f"<table cellpadding='3'><tr><th align='left'>stage</th><th>SQNR of the stage</th></tr>{rows}"
        f"<tr><td><b>{stages}, in total</b></td><td align='right'><b>{s.total_sqnr_db:.2f} dB</b></td></tr>"
        f"<tr><td>FP32 → INT{report.stages[-1]} directly</td>"
        f"<td align='right'>{s.direct_sqnr_db:.2f} dB</td></tr>"
        f"</table><p>The detour {verdict}: {100 * s.codes_changed:.2f}% of the final codes differ from the "
        f"direct path's; {s.layers_worse} of {len(report.layers)} layers come out worse.</p>"
    )
