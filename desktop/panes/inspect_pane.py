"""Step 2, "Inspect weights": how every weight tensor is distributed, and which quantization
scheme suits it, with the evidence (the rule of thumb beside the measured errors).

Data flow: the pane runs core.weights.inspect on the loaded model's checkpoint through the job
runner and mirrors the report in a table, a heatmap and, for the selected tensor, a histogram
whose data (core.weights.detail) is read by a second, short job. The recommendations and the
settings go into the open project (Project.inspect), where the Precision step picks them up.
torch and pyqtgraph are imported on first use, never at window start.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import QBuffer, QIODevice, Qt, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QLabel,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core import atomic
from core.errors import QuantTuneError
from desktop import dialogs
from desktop.jobs import JobHandle
from desktop.session import Session
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.inspect_settings import InspectSettingsBar
from desktop.widgets.job_bar import JobBar
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.tensor_detail_view import TensorDetailView
from desktop.widgets.tensor_table import TensorTable

NO_MODEL = "Load a model first: this step reads the weights of the loaded model."
RERUN_HINT = (
    "Bit width or group size changed: the measurements shown are at INT{bits}, groups of "
    "{group}. Press Inspect to measure again."
)


def _inspect_job(params: Any, ctx) -> Any:
    from core.weights import inspect

    return inspect.run(params, ctx)


def source_of(loaded: Any) -> str:
    """The checkpoint to read for a loaded model: the .gguf file, else its folder."""
    return str(loaded.ref.location) if loaded.ref.kind == "gguf" else str(loaded.folder)


def recommended_schemes(report: Any) -> dict[str, dict[str, Any]]:
    """name -> {"symmetric", "granularity"} for every tensor with a measured best scheme;
    tensors left as they are (flagged, not float) are not listed."""
    return {
        t.stats.name: {
            "symmetric": t.recommendation.best.symmetric,
            "granularity": t.recommendation.best.granularity,
        }
        for t in report.tensors
        if t.recommendation.best is not None
    }


class InspectPane(QWidget):
    """Signals: ``statusChanged(state, text)`` for the sidebar; ``stepRequested(key)`` to go to
    another step; ``reportReady(InspectReport)`` after a run or a re-judgement;
    ``detailShown(name)`` when the selected tensor's plots are drawn."""

    statusChanged = Signal(str, str)
    stepRequested = Signal(str)
    reportReady = Signal(object)
    detailShown = Signal(str)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self.runner = session, session.runner
        self.report: Any = None  # core.weights.inspect.InspectReport on the screen
        self._report_ref: Any = None  # the ModelRef it describes
        self._by_name: dict[str, Any] = {}
        self._run_handle: JobHandle | None = None
        self._run_ref: Any = None
        self._run_failed = False
        self._selected: str | None = None
        self._auto_ran: set[str] = set()  # sources inspected automatically once already
        self._inspected_ref: dict | None = None  # the model the project's results describe
        self.heatmap: Any = None  # weight_plots.ModelHeatmap, made on first show (pyqtgraph)
        self._build()
        self._connect()
        self._on_project_changed(session.project)
        self._on_model_changed(session.model)

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.pages = QStackedWidget()
        self.pages.addWidget(self._build_empty())
        # No scroll area: the table and the plots share the window's height and both stay in
        # sight (word-wrapped labels would make a scroll area size the page to its full hint).
        self.pages.addWidget(self._build_content())
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.pages)

    def _build_empty(self) -> QWidget:
        page = QWidget()
        title = QLabel("Inspect weights", objectName="screenTitle")
        self.empty_label = QLabel(NO_MODEL, wordWrap=True)
        self.go_load_button = QPushButton("Go to Load model")
        layout = QVBoxLayout(page)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(title)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.go_load_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addStretch(1)
        return page

    def _build_content(self) -> QWidget:
        page = QWidget()
        title = QLabel("Inspect weights", objectName="screenTitle")
        intro = QLabel(
            "How each weight tensor is distributed, and which quantization scheme suits it: the rule "
            "of thumb and the measured error side by side.",
            wordWrap=True,
        )
        self.settings_bar = InspectSettingsBar()
        self.job_bar = JobBar()
        self.error_panel = ErrorPanel()
        self.summary = QLabel(wordWrap=True, objectName="summary")
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = TensorTable()
        self.export_csv_button = QPushButton("Export table (CSV)…")
        self.export_csv_button.setToolTip("Every tensor's row, whatever the filter shows")
        self.table.filter_row.addWidget(self.export_csv_button)
        self.detail_view = TensorDetailView(self.runner)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.detail_view, "Selected tensor")
        self.heat_holder = QWidget()
        QVBoxLayout(self.heat_holder).setContentsMargins(6, 6, 6, 6)
        self.tabs.addTab(self.heat_holder, "Whole model")
        self.learn = LearnPanel("inspect", expanded=True)
        self.learn.section.button.hide()  # a tab of its own: nothing to fold away
        self.tabs.addTab(self.learn, "Learn: what do these numbers mean?")
        self.export_plots_button = QPushButton("Export plots (PNG)…")
        self.export_plots_button.setToolTip(
            "Saves the selected tensor's plots, or the whole-model heatmap when that tab is open, as PNG"
        )
        self.tabs.setCornerWidget(self.export_plots_button)
        self.table.setMinimumHeight(110)
        self.tabs.setMinimumHeight(280)
        splitter = QSplitter(Qt.Orientation.Vertical, childrenCollapsible=False)
        splitter.addWidget(self.table)
        splitter.addWidget(self.tabs)
        splitter.setStretchFactor(1, 1)  # extra height goes to the plots
        splitter.setSizes([210, 400])
        layout = QVBoxLayout(page)
        layout.setContentsMargins(20, 16, 20, 16)
        for widget in (title, intro, self.settings_bar, self.job_bar, self.error_panel, self.summary):
            layout.addWidget(widget)
        layout.addWidget(splitter, 1)
        return page

    def _ensure_plots(self) -> None:
        if self.heatmap is not None:
            return
        from desktop.widgets.weight_plots import ModelHeatmap

        self.detail_view.ensure_plots()
        self.heatmap = ModelHeatmap()
        self.heat_holder.layout().addWidget(self.heatmap)
        self.heatmap.tensorClicked.connect(self._on_heatmap_click)
        self.heatmap.set_report(self.report, self.settings_bar.k())

    def _connect(self) -> None:
        self.go_load_button.clicked.connect(partial(self.stepRequested.emit, "load"))
        self.settings_bar.run_button.clicked.connect(self.run_inspect)
        self.settings_bar.measureChanged.connect(self._on_measure_changed)
        self.settings_bar.kChanged.connect(self._on_k_changed)
        self.settings_bar.criteriaChanged.connect(self._on_criteria_changed)
        self.table.tensorSelected.connect(self._on_selected)
        self.detail_view.detailShown.connect(self._on_detail_shown)
        self.detail_view.failed.connect(self.error_panel.show_error)
        self.export_csv_button.clicked.connect(self.export_csv)
        self.export_plots_button.clicked.connect(self.export_plots)
        s = self.session
        s.modelLoading.connect(self._show_page)
        s.modelChanged.connect(self._on_model_changed)
        s.projectChanged.connect(self._on_project_changed)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self.session.model is not None:
            self._ensure_plots()
            self._maybe_autorun()

    # -- following the session ----------------------------------------------------------
    @Slot()
    def _show_page(self, *_: Any) -> None:
        loading = self.session.loading
        if self.session.model is None and loading is not None:
            self.empty_label.setText(f"Loading {loading[1].name}… Inspect starts when it is ready.")
        else:
            self.empty_label.setText(NO_MODEL)
        self.pages.setCurrentIndex(0 if self.session.model is None else 1)

    @Slot(object)
    def _on_model_changed(self, loaded: Any) -> None:
        self._show_page()
        if loaded is None:
            return
        if self._run_handle is not None and self._run_ref != loaded.ref:
            self._run_handle.cancel()  # its report would describe the previous model
        if self.report is not None and self._report_ref != loaded.ref:
            self._set_report(None, None)
        project = self.session.project
        if (
            project is not None
            and project.step_status.get("inspect") == "done"
            and self._inspected_ref not in (None, loaded.ref.to_dict())
        ):
            project.step_status["inspect"] = "stale"  # its recommendations are another model's
            self.session.mark_dirty()
        self._emit_status()
        if self.isVisible():
            self._ensure_plots()
            self._maybe_autorun()

    @Slot(object)
    def _on_project_changed(self, project: Any) -> None:
        if project is not None:
            self.settings_bar.set_values(project.inspect)
            self.detail_view.set_bits(self.settings_bar.bits())
            done = project.step_status.get("inspect") == "done"
            self._inspected_ref = project.load.model if done else None
            self._on_k_changed(self.settings_bar.k(), save=False)
            if self.report is not None:
                self._set_report(self.report.with_criteria(self._criteria()), self._report_ref)
                if project.load.model in (None, self._report_ref.to_dict()) and not self._stale_settings():
                    self._store_in_project()  # this session's run, made before the project opened
        self._update_hint()
        self._emit_status()

    def _maybe_autorun(self) -> None:
        loaded = self.session.model
        if loaded is None or self._run_handle is not None or source_of(loaded) in self._auto_ran:
            return
        if self.report is None or self._report_ref != loaded.ref:
            self.run_inspect()

    def _emit_status(self) -> None:
        project = self.session.project
        saved = project.step_status.get("inspect") if project is not None else None
        if self._run_handle is not None:
            state, text = "running", "Inspecting…"
        elif self.report is not None:
            state, text = "done", f"{len(self.report.tensors)} tensors inspected"
        elif saved == "stale":
            state, text = "stale", "Model changed: inspect again"
        elif saved == "done":
            state, text = "done", "Recommendations saved"
        else:
            state, text = "todo", "Not started"
        self.statusChanged.emit(state, text)

    # -- running ------------------------------------------------------------------------
    def _criteria(self) -> Any:
        from core.weights.recommend import Criteria

        return Criteria(*self.settings_bar.thresholds())

    @Slot()
    def run_inspect(self) -> JobHandle | None:
        """Inspect the loaded model with the current settings (replacing a run in progress)."""
        loaded = self.session.model
        if loaded is None:
            self._show_page()
            return None
        from core.weights.inspect import InspectParams

        if self._run_handle is not None:
            self._run_handle.cancel()
        source = source_of(loaded)
        bar = self.settings_bar
        params = InspectParams(source, bar.bits(), bar.group_size(), self._criteria())
        handle = self.runner.start(_inspect_job, params, name=f"Inspecting {loaded.card.name}", owner=self)
        self._run_handle, self._run_ref = handle, loaded.ref
        self._auto_ran.add(source)
        handle.succeeded.connect(self._on_report)
        handle.failed.connect(self._on_run_failed)
        handle.cancelled.connect(self._on_run_cancelled)
        handle.finished.connect(self._on_run_finished)
        self.error_panel.dismiss()
        self._run_failed = False
        self.job_bar.bind(handle)
        bar.run_button.setEnabled(False)
        self._emit_status()
        return handle

    @Slot(object)
    def _on_report(self, report: Any) -> None:
        if self.sender() is not self._run_handle:
            return
        if report.criteria != self._criteria():  # thresholds edited while it ran
            report = report.with_criteria(self._criteria())
        self._set_report(report, self._run_ref)
        self._store_in_project()

    @Slot(object, str)
    def _on_run_failed(self, exc: BaseException, tb: str) -> None:
        if self.sender() is self._run_handle:
            self._run_failed = True
            self.error_panel.show_error(exc, tb)
            self.statusChanged.emit("error", "Inspection failed")

    @Slot()
    def _on_run_cancelled(self) -> None:
        if self.sender() is self._run_handle and self.report is None:
            self.summary.setText("Inspection cancelled. Press Inspect to start again.")

    @Slot()
    def _on_run_finished(self) -> None:
        if self.sender() is not self._run_handle:
            return
        self._run_handle = None
        self.settings_bar.run_button.setEnabled(True)
        if not self._run_failed:  # a failure keeps its "error" status
            self._emit_status()

    # -- the report on screen -------------------------------------------------------------
    def _set_report(self, report: Any, ref: Any) -> None:
        self.report, self._report_ref = report, ref
        self._by_name = {t.stats.name: t for t in report.tensors} if report is not None else {}
        if self._selected not in self._by_name:
            self._selected = None
            self.detail_view.clear()
            self.learn.set_numbers({})
        self.table.set_report(report)
        self.table.set_k(self.settings_bar.k())
        if self.heatmap is not None:
            self.heatmap.set_report(report, self.settings_bar.k())
        self.summary.setText(self._summary_text())
        self._update_hint()
        if report is None:
            return
        if self.table.current_name() is None:
            self.table.select_row(0)
        elif self._selected is not None:
            self._on_selected(self._selected)
        self.reportReady.emit(report)
        self._emit_status()

    def _summary_text(self) -> str:
        r = self.report
        if r is None:
            return ""
        return (
            f"<b>{r.summary()}</b><br><span style='color:#6b7078'>{len(r.tensors)} tensors, "
            f"{r.parameters:,} weights, measured at INT{r.bits} with groups of {r.group_size} "
            f"in {r.seconds:.1f} s.</span>"
        )

    def _stale_settings(self) -> bool:
        r, bar = self.report, self.settings_bar
        return r is not None and (r.bits, r.group_size) != (bar.bits(), bar.group_size())

    def _update_hint(self) -> None:
        stale = self._stale_settings()
        r = self.report
        self.settings_bar.set_hint(RERUN_HINT.format(bits=r.bits, group=r.group_size) if stale else "")

    def _store_in_project(self) -> None:
        """Write the recommendations and the settings that produced them into the project."""
        project, r = self.session.project, self.report
        if project is None or r is None:
            return
        settings = project.inspect
        before = (dict(vars(settings)), project.step_status.get("inspect"))
        settings.bits, settings.group_size = r.bits, r.group_size
        self._store_thresholds(settings)
        settings.recommended = recommended_schemes(r)
        settings.summary = r.summary()
        project.step_status["inspect"] = "done"
        self._inspected_ref = self._report_ref.to_dict()
        if (dict(vars(settings)), "done") != before:
            self.session.mark_dirty()

    def _store_thresholds(self, settings: Any) -> None:
        bar = self.settings_bar
        settings.outlier_k = bar.k()
        settings.max_abs_skew, settings.max_mean_over_std, settings.asym_margin_db = bar.thresholds()

    # -- settings edits -----------------------------------------------------------------
    @Slot()
    def _on_measure_changed(self) -> None:
        # Bit width and group size reach the project with the run that uses them, so the saved
        # settings always describe the saved recommendations.
        self._update_hint()
        self.detail_view.set_bits(self.settings_bar.bits())  # the clipping ranges follow it

    @Slot(float)
    def _on_k_changed(self, k: float, save: bool = True) -> None:
        self.table.set_k(k)
        if self.heatmap is not None:
            self.heatmap.set_k(k)
        self.detail_view.set_k(k)
        self._update_learn()
        project = self.session.project
        if save and project is not None and project.inspect.outlier_k != k:
            project.inspect.outlier_k = k
            self.session.mark_dirty()

    @Slot()
    def _on_criteria_changed(self) -> None:
        if self.report is not None:
            self._set_report(self.report.with_criteria(self._criteria()), self._report_ref)
        project = self.session.project
        if project is None:
            return
        if self.report is not None and not self._stale_settings():
            self._store_in_project()
        else:
            self._store_thresholds(project.inspect)
            self.session.mark_dirty()

    # -- the selected tensor --------------------------------------------------------------
    @Slot(str)
    def _on_selected(self, name: str) -> None:
        self._selected = name
        t = self._by_name.get(name)
        if t is not None:
            self.detail_view.show_tensor(self.report.source, t, self.report.bits, self.report.group_size)
            self._update_learn()

    @Slot(str)
    def _on_detail_shown(self, name: str) -> None:
        self._update_learn()
        self.detailShown.emit(name)

    @Slot(str)
    def _on_heatmap_click(self, name: str) -> None:
        self.table.select(name)
        self.tabs.setCurrentWidget(self.detail_view)

    def _update_learn(self) -> None:
        t, detail = self._by_name.get(self._selected or ""), self.detail_view.detail
        if t is None or detail is None or detail.stats.name != t.stats.name:
            return
        from core.weights.detail import learn_numbers

        rec, k, bits = t.recommendation, self.settings_bar.k(), self.detail_view.shown.bits
        self.learn.set_numbers(learn_numbers(detail, rec.label, rec.rule_reason, k, bits))

    # -- export ---------------------------------------------------------------------------
    def _suggested(self, name: str) -> str:
        project = self.session.project
        folder = project.folder if project is not None else Path.home()
        return str(folder / name)

    @Slot()
    def export_csv(self) -> Path | None:
        if self.report is None:
            return None
        stem = self.session.model.card.name if self.session.model is not None else "model"
        path = dialogs.choose_save_file(
            self, "Export the table", "CSV files (*.csv)", self._suggested(f"{stem}-inspect.csv")
        )
        if path is None:
            return None
        path = path if path.suffix else path.with_suffix(".csv")
        try:
            self.report.write_csv(path, self.settings_bar.k())
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)
            return None
        self._say_saved(f"Table saved to {path}.")
        return path

    def _say_saved(self, text: str) -> None:
        self.summary.setText(f"{self._summary_text()}<br>{text}")

    @Slot()
    def export_plots(self) -> Path | None:
        """Save the plots of the tab in view (selected tensor, or whole model) as a PNG."""
        self._ensure_plots()
        whole = self.tabs.currentWidget() is self.heat_holder
        widget = self.heatmap if whole else self.detail_view.plots_widget
        name = "model-heatmap.png" if whole else f"{self._selected or 'tensor'}.png"
        path = dialogs.choose_save_file(self, "Export plots", "PNG images (*.png)", self._suggested(name))
        if path is None:
            return None
        path = path if path.suffix else path.with_suffix(".png")
        buffer = QBuffer()
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        widget.grab().save(buffer, "PNG")
        try:
            atomic.write_bytes(path, bytes(buffer.data()))
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)
            return None
        self._say_saved(f"Plots saved to {path}.")
        return path


if __name__ == "__main__":  # preview: python -m desktop.panes.inspect_pane [model folder or .gguf]
    import sys

    from core.models import sources
    from desktop.preview import preview

    ref = sources.resolve(sys.argv[1]) if len(sys.argv) > 1 else sources.DEFAULT_REF
    sys.exit(preview(InspectPane, (1200, 900), lambda session: session.load_model(ref)))
