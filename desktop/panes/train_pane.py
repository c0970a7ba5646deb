"""Step 6, "Train": what the run will cost, then the run itself with live plots; stop, resume
from a checkpoint, and ask the trained model.

Data flow: the pane edits the session's FinetuneSettings (loop part); Start records a run in the
project (core.finetune.runs) and runs core.finetune.train through the job runner; metric events
feed the plots; the run's checkpoints and metrics log are written into the project as it goes,
so a run the app did not see finish shows its history and resumes after a restart.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from core.errors import QuantTuneError
from desktop import dialogs
from desktop.jobs import JobHandle
from desktop.latest_job import LatestJob
from desktop.session import Session
from desktop.widgets.cost_text import plan_html, plan_job, qat_text
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.job_bar import JobBar
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.train_runs import TrainRuns
from desktop.widgets.train_settings import TrainSettingsBox
from desktop.widgets.try_model import TryModel

NO_MODEL = "Load a model first: training adapts the loaded model."
NO_PROJECT = "Open or create a project first: a run keeps its checkpoints and curves in the project."
ESTIMATE_DELAY_MS = 400


def _train_job(params: Any, ctx) -> Any:
    from core.finetune import train

    return train.run(params, ctx)


def _load_trained_job(params: Any, ctx) -> Any:
    from core.finetune import runs

    return runs.run_load_trained(params, ctx)


class TrainPane(QWidget):
    """Signals: ``statusChanged(state, text)``; ``stepRequested(key)``; ``trained(object)`` with
    the core.finetune.train.TrainReport of each run that finished."""

    statusChanged = Signal(str, str)
    stepRequested = Signal(str)
    trained = Signal(object)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self.runner = session, session.runner
        self.plots: Any = None  # TrainPlots, built when the pane first shows (pyqtgraph)
        self.plan: Any = None
        self._handle: JobHandle | None = None
        self._run_id: str | None = None
        self._run_project: Any = None
        self._run_loaded: Any = None  # the LoadedModel the run trains (Ask pairs the result with it)
        self._step = 0
        self.plan_job = LatestJob(self.runner, plan_job, "Estimating memory and time", self._plan_params,
                                  ESTIMATE_DELAY_MS, self)  # fmt: skip
        self.plan_job.started.connect(partial(self._set_estimate, "Estimating memory and time…"))
        self.plan_job.succeeded.connect(self._on_planned)
        self.plan_job.failed.connect(self._on_plan_failed)
        self._build()
        self._connect()
        self._on_project_changed(session.project)

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        title = QLabel("Train", objectName="screenTitle")
        self.plan_label = QLabel(wordWrap=True)
        self.change_button = QPushButton("Change data or method…")
        self.go_load_button = QPushButton("Go to Load model")
        top = QHBoxLayout()
        top.addWidget(self.plan_label, 1)
        top.addWidget(self.change_button)
        top.addWidget(self.go_load_button)
        self.settings_box = TrainSettingsBox()
        self.estimate_label = QLabel(wordWrap=True)
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("primary")
        self.stop_button = QPushButton("Stop (saves a checkpoint)")
        actions = QHBoxLayout()
        actions.addWidget(self.estimate_label, 1)
        actions.addWidget(self.start_button)
        actions.addWidget(self.stop_button)
        self.job_bar = JobBar()
        self.error_panel = ErrorPanel()
        self.status_label = QLabel(wordWrap=True, objectName="hint")
        self.plots_holder = QWidget()
        QVBoxLayout(self.plots_holder).setContentsMargins(0, 0, 0, 0)
        self.runs_view = TrainRuns()
        self.try_stack = TryModel(self.runner)
        self.learn = LearnPanel("train", expanded=True)
        self.learn.section.button.hide()
        self.tabs = QTabWidget()
        self.tabs.addTab(self.plots_holder, "Live plots")
        self.tabs.addTab(self.runs_view, "Runs and checkpoints")
        self.tabs.addTab(self.try_stack, "Ask the trained model")
        self.tabs.addTab(self.learn, "Learn: the training loop")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(title)
        layout.addLayout(top)
        layout.addWidget(self.settings_box)
        layout.addLayout(actions)
        for widget in (self.job_bar, self.error_panel, self.status_label):
            layout.addWidget(widget)
        layout.addWidget(self.tabs, 1)

    def _connect(self) -> None:
        self.change_button.clicked.connect(partial(self.stepRequested.emit, "method"))
        self.go_load_button.clicked.connect(partial(self.stepRequested.emit, "load"))
        self.settings_box.changed.connect(self._on_settings_edited)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.runs_view.runSelected.connect(self.show_run)
        self.runs_view.resumeRequested.connect(self.resume)
        self.runs_view.loadRequested.connect(self.load_run)
        self.runs_view.deleteRequested.connect(self.delete_run)
        self.session.projectChanged.connect(self._on_project_changed)
        self.session.modelChanged.connect(self._on_model_changed)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.ensure_plots()
        self.refresh()  # the Fine-tuning method step may have changed the settings
        self.plan_job.request()

    def ensure_plots(self) -> Any:
        if self.plots is None:
            from desktop.widgets.train_plots import TrainPlots

            self.plots = TrainPlots()
            self.plots_holder.layout().addWidget(self.plots)
            run_id = self.runs_view.selected_id()
            if run_id is not None and self._handle is None:
                self.show_run(run_id)
        return self.plots

    # -- following the session ------------------------------------------------------------
    @Slot(object)
    def _on_project_changed(self, _project: Any) -> None:
        """Another project: its settings and runs; nothing of the previous one stays on screen."""
        self.settings_box.set_settings(self.session.finetune_settings)
        self.status_label.setText("")
        self.error_panel.dismiss()
        self.try_stack.set_model(None)
        if self.plots is not None and self._handle is None:
            self.plots.clear()
        self._refresh_runs()
        self.refresh()

    @Slot(object)
    def _on_model_changed(self, _loaded: Any) -> None:
        self.plan = None
        self.try_stack.set_model(None)
        self.refresh()
        self.plan_job.request()

    @Slot()
    def _on_settings_edited(self) -> None:
        self.session.mark_dirty()
        self.plan_job.request()

    def refresh(self) -> None:
        from core.finetune import runs
        from core.finetune.methods import METHODS

        s, loaded = self.session.finetune_settings, self.session.model
        method = METHODS.get(s.method.get("method", "lora"))
        data = runs.dataset_path(s).name
        what = f"<b>{method.title if method else '?'}</b> on <b>{data}</b>"
        self.plan_label.setText(f"Training {what} ({s.task.replace('_', ' ')})." if loaded else NO_MODEL)
        self.go_load_button.setVisible(loaded is None)
        idle = self._handle is None
        self.start_button.setEnabled(idle and loaded is not None and self.session.project is not None)
        self.stop_button.setEnabled(not idle)
        self.settings_box.setEnabled(idle)
        self.runs_view.set_busy(not idle)
        if loaded is not None and self.session.project is None:
            self.status_label.setText(NO_PROJECT)
        elif self.status_label.text() == NO_PROJECT:
            self.status_label.setText("")
        self._emit_status()

    def _emit_status(self) -> None:
        if self._handle is not None and self._run_project is self.session.project:
            self.statusChanged.emit("running", f"Training, step {self._step}")
            return
        records = self._records()
        done = [r for r in records if r["status"] == "finished"]
        if done:
            loss = done[-1].get("summary", {}).get("final_train_loss")
            self.statusChanged.emit("done", f"Loss {loss:.3g}" if loss is not None else "Trained")
        else:
            self.statusChanged.emit("todo", f"{len(records)} unfinished run(s)" if records else "Not started")

    # -- the estimate before Start --------------------------------------------------------
    def estimate(self) -> JobHandle | None:
        """Estimate the run's cost now (once the step is on screen)."""
        return self.plan_job.run_now()

    def _plan_params(self) -> Any:
        from core.finetune import runs

        loaded, s = self.session.model, self.session.finetune_settings
        if self._handle is not None:
            return None  # its probe steps would compete with the run (and measure a busy machine)
        if loaded is None or not self.isVisible():
            self._set_estimate("")
            return None
        params = runs.plan_params(s, loaded, timed=True)
        if problems := params.validate():
            self._set_estimate("Cannot estimate: " + "; ".join(problems) + ".")
            return None
        return params

    def _set_estimate(self, text: str) -> None:
        self.estimate_label.setText(text)

    @Slot(object)
    def _on_planned(self, result: Any) -> None:
        self.plan = result
        self.estimate_label.setText(plan_html(result))

    @Slot(object, str)
    def _on_plan_failed(self, exc: BaseException, _tb: str) -> None:
        self.plan = None
        self.estimate_label.setText(f"<span style='color:#c0392b'>{exc}</span>")

    # -- training -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._handle is not None

    @Slot()
    def start(self) -> JobHandle | None:
        from core.finetune import runs

        project, loaded = self.session.project, self.session.model
        if project is None or loaded is None or self._handle is not None:
            return None
        settings = dataclasses.replace(self.session.finetune_settings)
        settings.method = dict(settings.method)
        run_id, folder = runs.new_train_run(project, settings, loaded.ref.to_dict())
        handle = self._launch(run_id, settings, folder, None)
        if handle is None:
            project.train_runs.remove(runs.find(project, run_id))
            return None
        self.ensure_plots().clear()
        return handle

    @Slot(str, object)
    def resume(self, run_id: str, checkpoint: Path) -> JobHandle | None:
        from core.finetune import runs
        from core.quant.runs import run_path

        project = self.session.project
        record = runs.find(project, run_id) if project is not None else None
        if record is None or self.session.model is None or self._handle is not None:
            return None
        if problem := runs.model_problem(record, self.session.model):
            self.error_panel.show_message(problem)
            return None
        settings = runs.resume_settings(record, self.session.finetune_settings)
        handle = self._launch(run_id, settings, run_path(project, record), Path(checkpoint))
        if handle is not None:
            self.ensure_plots().set_history(runs.history(project, record))
        return handle

    def _launch(self, run_id: str, settings: Any, folder: Path, checkpoint: Path | None) -> JobHandle | None:
        from core.finetune import runs

        loaded, project = self.session.model, self.session.project
        params = runs.train_params(settings, loaded, folder, checkpoint)
        self.error_panel.dismiss()
        if problems := params.validate():
            self.error_panel.show_message("Training cannot start: " + "; ".join(problems) + ".",
                                          "Change the settings named above.")  # fmt: skip
            return None
        runs.find(project, run_id)["status"] = "running"
        self.session.mark_dirty()
        handle = self.runner.start(_train_job, params, name=f"Training {loaded.card.name}", owner=self)
        handle.event.connect(self._on_event)
        handle.succeeded.connect(self._on_trained)
        handle.failed.connect(self._on_failed)
        handle.cancelled.connect(self._on_cancelled)
        handle.finished.connect(self._on_finished)
        self._handle, self._run_id, self._run_project, self._run_loaded = handle, run_id, project, loaded
        self._step = 0
        self.job_bar.bind(handle)
        self.status_label.setText("")
        self.tabs.setCurrentWidget(self.plots_holder)
        self._refresh_runs(select=run_id)
        self.refresh()
        return handle

    @Slot()
    def stop(self) -> None:
        if self._handle is not None:
            self.status_label.setText("Stopping after this step; a checkpoint is being saved…")
            self._handle.cancel()

    @Slot(object)
    def _on_event(self, event: Any) -> None:
        if event.kind != "metric" or self.plots is None:
            return
        data = event.data
        self.plots.add(data["name"], data["step"], data["value"])
        if data["step"] != self._step:
            self._step = data["step"]
            self._emit_status()

    def _end_run(self, status: str, report: dict | None = None) -> None:
        from core.finetune import runs

        project = self._run_project
        if report is None:  # stopped or failed: what it got to, from its metrics log
            report = runs.summary_from_history(runs.history(project, runs.find(project, self._run_id)))
        runs.finish_train_run(project, self._run_id, status, report)
        if status == "finished":
            project.step_status["train"] = "done"
        if project is self.session.project:
            self.session.mark_dirty()
        else:
            self._save_other(project)

    def _save_other(self, project: Any) -> None:
        from core import project as projects

        try:
            projects.save_project(project)
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)

    @Slot(object)
    def _on_trained(self, report: Any) -> None:
        self._end_run("finished", report.to_dict())
        early = " (stopped early: the validation loss stopped improving)" if report.stopped_early else ""
        self.status_label.setText(
            f"Finished after {report.steps} steps{early}, training loss {report.final_train_loss:.4g}. "
            f"Saved in {report.output / 'final'}. Try it below." + qat_text(report.qat)
        )
        if self._run_loaded is self.session.model and self._run_project is self.session.project:
            self._ask(report.model.eval())
        self.trained.emit(report)

    @Slot(object, str)
    def _on_failed(self, exc: BaseException, tb: str) -> None:
        self._end_run("failed")
        self.error_panel.show_error(exc, tb)

    @Slot()
    def _on_cancelled(self) -> None:
        self._end_run("stopped")
        self.status_label.setText(
            f"Stopped at step {self._step}; a checkpoint was saved. Resume it from “Runs and checkpoints”."
        )

    @Slot()
    def _on_finished(self) -> None:
        self._handle = None
        self._refresh_runs(select=self._run_id)
        self.refresh()

    # -- runs -----------------------------------------------------------------------------
    def _records(self) -> list[dict]:
        project = self.session.project
        return project.train_runs if project is not None else []

    def _refresh_runs(self, select: str | None = None) -> None:
        from core.finetune import runs

        project = self.session.project
        running = self._run_id if self._handle is not None else None
        records = runs.shown_records(project, running) if project is not None else []
        finished = {r["id"] for r in records if runs.has_final(project, r)}
        self.runs_view.set_runs(records, finished, select)

    @Slot(str)
    def show_run(self, run_id: str) -> None:
        """The chosen run's checkpoints, and its curves when nothing is training."""
        from core.finetune import runs

        record = runs.find(self.session.project, run_id) if self.session.project is not None else None
        if record is None:
            return
        self.runs_view.set_checkpoints(runs.checkpoints(self.session.project, record))
        if self.plots is not None and self._handle is None:
            self.plots.set_history(runs.history(self.session.project, record))

    @Slot(str)
    def load_run(self, run_id: str) -> JobHandle | None:
        from core.finetune import runs
        from core.quant.runs import run_path

        project, loaded = self.session.project, self.session.model
        record = runs.find(project, run_id) if project is not None else None
        if record is None or loaded is None:
            return None
        if problem := runs.model_problem(record, loaded):
            self.error_panel.show_message(problem)
            return None
        params = runs.LoadTrainedParams(loaded, run_path(project, record) / "final")
        handle = self.runner.start(_load_trained_job, params, name=f"Loading {record['label']}", owner=self)
        handle.succeeded.connect(self._ask)
        handle.failed.connect(self.error_panel.show_error)
        self.job_bar.bind(handle)
        return handle

    @Slot(object)
    def _ask(self, model: Any) -> None:
        if self.session.model is not None:
            self.try_stack.set_model(dataclasses.replace(self.session.model, model=model))
            self.tabs.setCurrentWidget(self.try_stack)

    @Slot(str)
    def delete_run(self, run_id: str) -> None:
        from core.finetune import runs

        project = self.session.project
        record = runs.find(project, run_id) if project is not None else None
        if record is None or not dialogs.confirm(
            self,
            "Delete run",
            f"Delete the run “{record['label']}” and its checkpoints?",
            yes="Delete",
        ):
            return
        try:
            runs.delete_train_run(project, run_id)
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)
            return
        self.session.mark_dirty()
        self._refresh_runs()
        if not project.train_runs and self.plots is not None:
            self.plots.clear()


if __name__ == "__main__":  # preview: python -m desktop.panes.train_pane
    import sys

    from desktop.preview import load_default, preview

    sys.exit(preview(TrainPane, (1280, 980), load_default))
