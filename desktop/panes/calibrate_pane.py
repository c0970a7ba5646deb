"""Step 4, "Calibrate": quantize with the Precision step's settings and show what happened — the
size and perplexity before and after, the error each layer took, the scale S and zero point Z of
every tensor with the worked formula, and the project's runs side by side.

Data flow: the pane edits the session's QuantizeSettings (calibration part), runs core.quant.job
through the job runner, records each saved run in the project (core.quant.runs) and shows its
report. A saved run is reloaded from disk by a job that also checks its outputs are unchanged.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from core.errors import QuantTuneError
from desktop import dialogs
from desktop.jobs import JobHandle
from desktop.session import Session
from desktop.widgets.activation_view import ActivationView
from desktop.widgets.ask_box import AskBox
from desktop.widgets.calibrate_settings import CalibrateSettingsBar
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.job_bar import JobBar
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.quant_report import QuantReportView
from desktop.widgets.runs_table import RunsTable
from desktop.widgets.scales_view import ScalesView

NO_MODEL = "Load a model first: calibration runs the loaded model on the calibration text."
NO_PROJECT = "No project is open: this run is kept until you quantize again, not saved."


def _quantize_job(params: Any, ctx) -> Any:
    from core.quant import job

    return job.run(params, ctx)


def _copy_job(params: Any, ctx) -> Any:
    from core.quant import runs

    return runs.copy_run(params, ctx)


def _reload_job(params: Any, ctx) -> Any:
    from core.quant import runs

    return runs.reload_run(params, ctx)


def methods_for(precision: str) -> tuple[str, ...]:
    """The methods the Quantize job offers at ``precision``."""
    if precision in ("nf4", "fp4"):
        return ("bitsandbytes",)
    if precision in ("fp16", "bf16"):
        return ("rtn",)
    return ("rtn", "gptq", "awq", "bitsandbytes") if precision == "int8" else ("rtn", "gptq", "awq")


class CalibratePane(QWidget):
    """Signals: ``statusChanged(state, text)``; ``stepRequested(key)``; ``runShown(dict)`` with
    the report (as a dict) now on screen; ``runLoaded(object)`` after a saved run was reloaded
    (a core.quant.runs.Reloaded)."""

    statusChanged = Signal(str, str)
    stepRequested = Signal(str)
    runShown = Signal(dict)
    runLoaded = Signal(object)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self.runner = session, session.runner
        self.shown_report: dict[str, Any] | None = None
        self.shown_run_id: str | None = None
        self._handle: JobHandle | None = None
        self._run_id: str | None = None  # the id the running job saves under
        self._run_project: Any = None  # the project open when it started
        self._run_loaded: Any = None  # the model it quantizes
        self._failed = False
        self._build()
        self._connect()
        self._on_project_changed(session.project)
        self._on_model_changed(session.model)

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        title = QLabel("Calibrate and quantize", objectName="screenTitle")
        self.plan_label = QLabel(wordWrap=True)
        self.change_button = QPushButton("Change precision…")
        self.go_load_button = QPushButton("Go to Load model")
        top = QHBoxLayout()
        top.addWidget(self.plan_label, 1)
        top.addWidget(self.change_button)
        top.addWidget(self.go_load_button)
        self.settings_bar = CalibrateSettingsBar()
        self.job_bar = JobBar()
        self.error_panel = ErrorPanel()
        self.status_label = QLabel(wordWrap=True, objectName="hint")
        self.report_view = QuantReportView()
        self.scales_view = ScalesView(self.runner)
        self.runs_table = RunsTable()
        self.activation_view = ActivationView()
        self.ask_box = AskBox(self.runner)
        self.learn = LearnPanel("calibrate", expanded=True)
        self.learn.section.button.hide()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.report_view, "Report")
        self.tabs.addTab(self.scales_view, "Scales and zero points")
        self.tabs.addTab(self.activation_view, "Activations (W8A8)")
        self.tabs.addTab(self.runs_table, "Runs side by side")
        self.tabs.addTab(self.ask_box, "Ask the quantized model")
        self.tabs.addTab(self.learn, "Learn: x → q → x′")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(title)
        layout.addLayout(top)
        for widget in (self.settings_bar, self.job_bar, self.error_panel, self.status_label):
            layout.addWidget(widget)
        layout.addWidget(self.tabs, 1)

    def _connect(self) -> None:
        self.change_button.clicked.connect(partial(self.stepRequested.emit, "precision"))
        self.go_load_button.clicked.connect(partial(self.stepRequested.emit, "load"))
        self.settings_bar.run_button.clicked.connect(self.quantize)
        self.settings_bar.changed.connect(self.session.mark_dirty)
        self.runs_table.showRequested.connect(self.show_run)
        self.runs_table.loadRequested.connect(self.load_run)
        self.runs_table.deleteRequested.connect(self.delete_run)
        self.runs_table.exportRequested.connect(self.export_run)
        self.scales_view.numbersChanged.connect(self.learn.set_numbers)
        s = self.session
        s.projectChanged.connect(self._on_project_changed)
        s.modelChanged.connect(self._on_model_changed)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.report_view.ensure_plot()
        self.refresh()  # the Precision step may have changed the settings meanwhile

    # -- following the session ------------------------------------------------------------
    @Slot(object)
    def _on_project_changed(self, _project: Any) -> None:
        self.refresh()
        self._refresh_runs()
        if self.shown_run_id is not None and self._record(self.shown_run_id) is None:
            self._show(None)  # the previous project's run

    @Slot(object)
    def _on_model_changed(self, loaded: Any) -> None:
        shown = (self.shown_report or {}).get("settings", {}).get("model")
        if self.shown_report is not None and (loaded is None or shown != loaded.card.name):
            self._show(None)  # the run on screen was made from another model
        self.refresh()

    def refresh(self) -> None:
        """Mirror the session's settings again (the Precision step or a script changed them)."""
        s = self.session.quantize_settings
        allowed = methods_for(s.precision)
        if s.method not in allowed:
            s.method = allowed[0] if s.precision in ("nf4", "fp4", "fp16", "bf16") else "gptq"
        self.settings_bar.set_settings(s, allowed)
        has_model = self.session.model is not None
        self.go_load_button.setVisible(not has_model)
        self.settings_bar.run_button.setEnabled(has_model and self._handle is None)
        self.plan_label.setText(self._plan_text() if has_model else NO_MODEL)
        self._emit_status()

    def _plan_text(self) -> str:
        from core.quant.plan import estimate_size, symmetric_of, uses_overrides
        from desktop.formatting import format_bytes
        from desktop.widgets.layer_precisions import precision_name

        s, project = self.session.quantize_settings, self.session.project
        recommended = project.inspect.recommended if project is not None else {}
        text = precision_name(s.precision)
        if s.precision.startswith("int"):
            where = f"groups of {s.group_size}" if s.granularity == "group" else f"per {s.granularity}"
            kind = "symmetric" if symmetric_of(s, recommended) else "asymmetric"
            text += f" {kind}, {where}" + (", activations too (W8A8)" if s.activations else ", weights only")
        if s.overrides and uses_overrides(s):
            text += f"; {len(s.overrides)} layer(s) at other precisions"
        if s.budget_mb > 0 and uses_overrides(s):
            return f"Quantizing to <b>{text}</b>, bits per layer chosen to fit <b>{s.budget_mb:.1f} MB</b>."
        size = estimate_size(self.session.model.model, s, recommended)
        return f"Quantizing to <b>{text}</b> → about <b>{format_bytes(size.bytes_after)}</b>."

    def _emit_status(self) -> None:
        if self._handle is not None:
            self.statusChanged.emit("running", "Quantizing…")
        elif self._failed:
            self.statusChanged.emit("error", "Quantizing failed")
        elif self.shown_report is not None:
            after = self.shown_report.get("perplexity_after")
            self.statusChanged.emit("done", f"Perplexity {after:.2f}" if after else "Quantized")
        else:
            runs = self._runs()
            self.statusChanged.emit(*(("done", f"{len(runs)} run(s)") if runs else ("todo", "Not started")))

    # -- quantizing -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A quantize job is running (its result may already be on screen)."""
        return self._handle is not None

    @Slot()
    def quantize(self) -> JobHandle | None:
        loaded = self.session.model
        if loaded is None or self._handle is not None:
            return None
        from core.quant import plan, runs

        settings, project = self.session.quantize_settings, self.session.project
        output, self._run_id, self._run_project, self._run_loaded = "", None, project, loaded
        if project is not None:
            self._run_id, folder = runs.new_run_folder(project, dataclasses.asdict(settings))
            output = str(folder)
        self.error_panel.dismiss()
        try:
            recommended = project.inspect.recommended if project is not None else {}
            params = plan.job_params(settings, recommended, loaded, output=output,
                                     measure_perplexity=self.settings_bar.measure_perplexity())  # fmt: skip
        except QuantTuneError as exc:  # an unreadable calibration or evaluation file
            self.error_panel.show_error(exc)
            return None
        handle = self.runner.start(_quantize_job, params, name=f"Quantizing {loaded.card.name}", owner=self)
        handle.succeeded.connect(self._on_quantized)
        handle.failed.connect(self._on_failed)
        handle.cancelled.connect(self._on_cancelled)
        handle.finished.connect(self._on_finished)
        self._handle, self._failed = handle, False
        self.job_bar.bind(handle)
        self.settings_bar.run_button.setEnabled(False)
        self.status_label.setText("")
        self._emit_status()
        return handle

    @Slot(object)
    def _on_quantized(self, report: Any) -> None:
        from core.quant import runs

        data = report.to_dict()
        data["label"] = runs.label(data["settings"])
        project = self._run_project  # the project open when it started, even if another is open now
        if project is not None and self._run_id is not None:
            runs.record_run(project, self._run_id, data)
            project.step_status["calibrate"] = "done"
            if project is self.session.project:
                self.session.mark_dirty()
            else:
                self._save_other(project)
            self._refresh_runs()
            self.runs_table.select(self._run_id)
            self.status_label.setText(f"Saved in the project {project.name}: {report.output}")
        else:
            self.status_label.setText(NO_PROJECT)
        if self.session.model is not self._run_loaded:
            return  # another model was loaded meanwhile: the run is recorded, not shown
        self._show(data, self._run_id)
        self._use_model(report.model, report.quantized, report.reference or {})

    def _save_other(self, project: Any) -> None:
        from core import project as projects

        try:
            projects.save_project(project)
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)

    @Slot(object, str)
    def _on_failed(self, exc: BaseException, tb: str) -> None:
        self._failed = True
        self.error_panel.show_error(exc, tb)

    @Slot()
    def _on_cancelled(self) -> None:
        import shutil

        from core.quant import runs

        if self._run_project is not None and self._run_id is not None:  # saved just before the cancel?
            shutil.rmtree(self._run_project.artifacts / runs.RUNS_DIR / self._run_id, ignore_errors=True)
        self.status_label.setText("Quantizing cancelled; nothing was saved.")

    @Slot()
    def _on_finished(self) -> None:
        self._handle = None
        self.refresh()

    # -- showing a run ----------------------------------------------------------------------
    def _show(self, report: dict[str, Any] | None, run_id: str | None = None) -> None:
        self.shown_report, self.shown_run_id = report, run_id
        self.report_view.set_report(report)
        self.activation_view.set_activations(report.get("activations") if report else None)
        if report is None:
            self.scales_view.set_data(None, None)
            self.ask_box.set_model(None)
        self._emit_status()
        if report is not None:
            self.runShown.emit(report)

    def _use_model(self, model: Any, quantized: dict | None, reference: dict | None,
                   tokenizer: Any = None) -> None:  # fmt: skip
        """Show S and Z of ``quantized`` (x from ``reference``, the weights that were rounded;
        None: unknown) and let the user ask ``model``."""
        base = self.session.model
        weight_of = None
        if base is not None and quantized and reference is not None:
            weight_of = partial(_weight_of, dict(base.model.named_modules()), reference)
        self.scales_view.set_data(quantized or None, weight_of, self.shown_report.get("label", ""))
        if base is not None and model is not None:
            self.ask_box.set_model(
                dataclasses.replace(base, model=model, tokenizer=tokenizer or base.tokenizer)
            )

    def _runs(self) -> list[dict[str, Any]]:
        from core.quant import runs

        project = self.session.project
        return runs.quantize_runs(project) if project is not None else []

    def _record(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self._runs() if r["id"] == run_id), None)

    def _refresh_runs(self) -> None:
        self.runs_table.set_runs(self._runs())

    @Slot(str)
    def show_run(self, run_id: str) -> None:
        """Show a saved run's report (read from its folder; the weights stay on disk)."""
        from core.quant import runs

        record = self._record(run_id)
        if record is None:
            return
        try:
            report = runs.read_report(self.session.project, record)
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)
            return
        report["label"] = record["label"]
        self._show(report, run_id)
        self.scales_view.set_data(None, None)
        self.ask_box.set_model(None)
        self.tabs.setCurrentWidget(self.report_view)
        self.status_label.setText("Press “Load this model” in Runs to see its scales or ask it.")

    def _start_run_job(self, fn: Any, params: Any, name: str, on_success: Any) -> JobHandle:
        """A short job on a saved run (reload, copy): progress in the job bar, errors in the panel."""
        handle = self.runner.start(fn, params, name=name, owner=self)
        handle.succeeded.connect(on_success)
        handle.failed.connect(self.error_panel.show_error)
        self.job_bar.bind(handle)
        return handle

    @Slot(str)
    def load_run(self, run_id: str) -> JobHandle | None:
        """Reload a saved run from disk (checking its outputs) for the scales view and Ask."""
        from core.quant import runs

        record = self._record(run_id)
        if record is None:
            return None
        self.show_run(run_id)
        params = runs.ReloadParams(runs.run_path(self.session.project, record))
        return self._start_run_job(_reload_job, params, f"Loading {record['label']}", self._on_reloaded)

    @Slot(object)
    def _on_reloaded(self, reloaded: Any) -> None:
        self._use_model(
            reloaded.model, reloaded.quantized, self._reference_of(reloaded.meta), reloaded.tokenizer
        )
        if reloaded.identical:
            check = "its outputs are identical, bit for bit, to when it was quantized."
        elif reloaded.identical is None:
            check = "it holds no record of its outputs to compare with."
        else:
            check = f"its outputs differ from when it was quantized (by up to {reloaded.max_difference:.3g})."
        self.status_label.setText(f"Loaded from disk; {check}")
        self.runLoaded.emit(reloaded)

    @Slot(str)
    def export_run(self, run_id: str) -> JobHandle | None:
        """Copy a saved run's model folder to a new folder the user names."""
        from pathlib import Path

        from core.quant import runs

        record = self._record(run_id)
        if record is None:
            return None
        project = self.session.project
        target = dialogs.choose_save_file(
            self, "Save a copy of the quantized model", "Folders (*)", str(project.folder.parent / run_id)
        )
        if target is None:
            return None
        params = runs.CopyParams(runs.run_path(project, record), Path(target))
        if problems := params.validate():
            self.error_panel.show_message(
                f"Cannot save there: {'; '.join(problems)}.", "Choose another name."
            )
            return None
        return self._start_run_job(_copy_job, params, f"Saving a copy of {record['label']}", self._on_copied)

    @Slot(object)
    def _on_copied(self, path: Any) -> None:
        self.status_label.setText(f"Saved a copy in {path}: it reloads with QuantTune (Load model → folder).")

    def _reference_of(self, meta: dict) -> dict | None:
        """{} (the loaded model's weights were rounded) when the run was made from the loaded
        model without rescaling; None when its x are unknown here."""
        base = self.session.model
        settings = meta.get("report", {}).get("settings", {})
        rescaled = settings.get("method") == "awq" or settings.get("smoothquant")
        if base is None or rescaled or meta.get("base_model") != base.ref.to_dict():
            return None
        return {}

    @Slot(str)
    def delete_run(self, run_id: str) -> None:
        from core.quant import runs

        record = self._record(run_id)
        if record is None or not dialogs.confirm(
            self, "Delete run", f"Delete the run “{record['label']}” and its quantized model?", yes="Delete"
        ):
            return
        try:
            runs.delete_run(self.session.project, run_id)
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)
            return
        self.session.mark_dirty()
        if self.shown_run_id == run_id:
            self._show(None)
        self._refresh_runs()


def _weight_of(modules: dict[str, Any], reference: dict, name: str) -> Any:
    return reference[name] if name in reference else modules[name].weight.detach()


if __name__ == "__main__":  # preview: python -m desktop.panes.calibrate_pane
    import sys

    from desktop.preview import load_default, preview

    sys.exit(preview(CalibratePane, (1280, 900), load_default))
