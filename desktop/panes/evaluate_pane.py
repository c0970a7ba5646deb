"""Step 7, "Evaluate": every variant of the project side by side on the test split, with the
task's metrics, the cost columns and the no-training baselines; the outputs row by row; the
training curves; k-fold cross-validation; and the exported report.

Data flow: the settings form edits the project's EvaluateSettings (saved like every step's);
Run starts core.evaluate.job through the job runner, each "variant" event adds a row to the
results as it is scored, and the finished evaluation is recorded in the project
(core.evaluate.runs), where the pane finds it again when it is shown. k-fold runs
core.evaluate.kfold the same way, fed by "fold" events.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from core.errors import QuantTuneError
from desktop.jobs import JobHandle
from desktop.latest_job import LatestJob
from desktop.session import Session
from desktop.widgets import eval_export
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.eval_settings import EvalSettingsBox, blocker, scope_job, scope_params, scope_text
from desktop.widgets.job_bar import JobBar
from desktop.widgets.learn_panel import LearnPanel


def _evaluate_job(params: Any, ctx) -> Any:
    from core.evaluate import job

    return job.run(params, ctx)


class EvaluatePane(QWidget):
    """Signals: ``statusChanged(state, text)``; ``stepRequested(key)``; ``evaluated(object)`` with
    each Evaluation that finished."""

    statusChanged = Signal(str, str)
    stepRequested = Signal(str)
    evaluated = Signal(object)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self.runner = session, session.runner
        self.results: Any = None  # EvalResults, KFoldView, OutputsView, CurvesView: built on first show
        self.kfold: Any = None
        self.outputs: Any = None
        self.curves: Any = None
        self.evaluation: Any = None  # the Evaluation on screen
        self.kfold_result: Any = None
        self._handle: JobHandle | None = None
        self._job: tuple[str, Any, Any] | None = None  # (kind, params, project) of the running job
        self._shown_for: tuple[Any, int] | None = None  # (project, evaluations count) last restored
        self.test_rows: int | None = None
        self.scope_job = LatestJob(self.runner, scope_job, "Reading the test split", self._scope_params,
                                   200, self)  # fmt: skip
        self.scope_job.succeeded.connect(self._on_scope)
        self.scope_job.failed.connect(self._on_scope_failed)
        self._build()
        self._connect()
        self._on_project_changed(session.project)

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        self.scope_label = QLabel(wordWrap=True)
        self.go_method_button = QPushButton("Go to Fine-tuning method")
        self.go_load_button = QPushButton("Go to Load model")
        top = QHBoxLayout()
        top.addWidget(self.scope_label, 1)
        top.addWidget(self.go_method_button)
        top.addWidget(self.go_load_button)
        self.settings_box = EvalSettingsBox()
        self.run_button = QPushButton("Run evaluation", objectName="primary")
        self.stop_button = QPushButton("Stop")
        self.export_button = QPushButton("Export report…")
        self.status_label = QLabel(wordWrap=True, objectName="hint")
        actions = QHBoxLayout()
        actions.addWidget(self.status_label, 1)
        for button in (self.run_button, self.stop_button, self.export_button):
            actions.addWidget(button)
        self.job_bar = JobBar()
        self.error_panel = ErrorPanel()
        self.tabs = QTabWidget()
        self.holders = {}
        for key, title in (("results", "Results"), ("outputs", "Outputs"), ("training", "Training curves"),
                           ("kfold", "k-fold cross-validation")):  # fmt: skip
            self.holders[key] = QWidget()
            QVBoxLayout(self.holders[key]).setContentsMargins(0, 0, 0, 0)
            self.tabs.addTab(self.holders[key], title)
        self.learn = LearnPanel("evaluate", expanded=True)
        self.learn.section.button.hide()
        self.tabs.addTab(self.learn, "Learn: reading the metrics")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(QLabel("Evaluate", objectName="screenTitle"))
        layout.addLayout(top)
        layout.addWidget(self.settings_box)
        layout.addLayout(actions)
        layout.addWidget(self.job_bar)
        layout.addWidget(self.error_panel)
        layout.addWidget(self.tabs, 1)

    def _connect(self) -> None:
        self.go_method_button.clicked.connect(partial(self.stepRequested.emit, "method"))
        self.go_load_button.clicked.connect(partial(self.stepRequested.emit, "load"))
        self.settings_box.changed.connect(self._on_settings_edited)
        self.run_button.clicked.connect(self.run)
        self.stop_button.clicked.connect(self.stop)
        self.export_button.clicked.connect(self.export)
        self.session.projectChanged.connect(self._on_project_changed)
        self.session.modelChanged.connect(self._on_model_changed)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self.ensure_views()
        self._refresh_variants()
        self.restore()
        self.curves.show_project(self.session.project)  # the Train step may have added a run
        self.test_rows = None  # the Fine-tuning method step may have changed the data: count again
        self.refresh()
        self.scope_job.request()

    def ensure_views(self) -> None:
        """Build the plotting views (pyqtgraph) when the pane first shows."""
        if self.results is not None:
            return
        from desktop.widgets.eval_curves import CurvesView
        from desktop.widgets.eval_outputs import OutputsView
        from desktop.widgets.eval_results import EvalResults, link_training_runs
        from desktop.widgets.kfold_view import KFoldView

        self.results, self.outputs, self.curves = EvalResults(), OutputsView(), CurvesView()
        self.kfold = KFoldView(self.runner)
        for key, view in (("results", self.results), ("outputs", self.outputs), ("training", self.curves),
                          ("kfold", self.kfold)):  # fmt: skip
            self.holders[key].layout().addWidget(view)
        self.outputs.marked.connect(self._on_marked)
        link_training_runs(self.results, self.curves)
        self.kfold.runRequested.connect(self.run_kfold)
        self.kfold.cancelRequested.connect(self.stop)
        self.kfold.settingsEdited.connect(self.session.mark_dirty)
        self.kfold.problem.connect(self.error_panel.show_message)
        self.kfold.failed.connect(self.error_panel.show_error)
        self.kfold.recorded.connect(self._on_kfold_recorded)
        self.kfold.show_project(self.session.project)

    # -- following the session ------------------------------------------------------------
    @Slot(object)
    def _on_project_changed(self, project: Any) -> None:
        self.error_panel.dismiss()
        self.status_label.setText("")
        self.test_rows = None
        if project is not None:
            self.settings_box.set_settings(project.evaluate)
        self._refresh_variants()
        self._shown_for = None
        if self.isVisible():
            self.restore()
            self.curves.show_project(project)
            self.scope_job.request()
        self.refresh()

    @Slot(object)
    def _on_model_changed(self, _loaded: Any) -> None:
        self._refresh_variants()
        self.refresh()

    @Slot()
    def _on_settings_edited(self) -> None:
        self.session.mark_dirty()
        self.refresh()  # the scope line names how many rows are scored

    def _refresh_variants(self) -> None:
        """The checklist follows the project's variants (project, model or runs changed)."""
        from core.evaluate.variants import list_variants

        project = self.session.project
        self.settings_box.set_variants(list_variants(project, self.session.model) if project else [])

    # -- what will be scored ----------------------------------------------------------------
    def _blocker(self, kfold: bool = False) -> tuple[str, str | None]:
        return blocker(self.session.project, self.session.model, self.test_rows, kfold)

    def _scope_params(self) -> Any:
        return scope_params(self.session.project) if self.isVisible() else None

    @Slot(object)
    def _on_scope(self, check: Any) -> None:
        self.test_rows = check.split[2]
        self.refresh()

    @Slot(object, str)
    def _on_scope_failed(self, exc: BaseException, tb: str) -> None:
        self.test_rows = None
        self.error_panel.show_error(exc, tb)
        self.scope_label.setText("The test split could not be read: see the message below.")

    def refresh(self) -> None:
        blocker, step = self._blocker()
        self.scope_label.setText(blocker or scope_text(self.session.project, self.test_rows))
        self.go_method_button.setVisible(step == "method")
        self.go_load_button.setVisible(step == "load")
        idle = self._handle is None
        self.run_button.setEnabled(idle and not blocker)
        self.stop_button.setEnabled(not idle)
        self.settings_box.setEnabled(idle and self.session.project is not None)
        self.export_button.setEnabled(idle and self.evaluation is not None)
        if self.kfold is not None:
            self.kfold.set_busy(self._job is not None and self._job[0] == "kfold",
                                idle and not self._blocker(kfold=True)[0])  # fmt: skip
        self._emit_status()

    def _emit_status(self) -> None:
        if self._handle is not None:
            running = "Evaluating" if self._job[0] == "evaluate" else "Cross-validating"
            self.statusChanged.emit("running", running)
        elif self.evaluation is not None:
            scored = sum(1 for v in self.evaluation.variants if not v.error)
            self.statusChanged.emit("done", f"{scored} variant(s) compared")
        else:
            self.statusChanged.emit("todo", "Not evaluated")

    # -- restoring ----------------------------------------------------------------------------
    def restore(self) -> None:
        """Show the project's latest evaluation and k-fold run (once per project and new record)."""
        from core.evaluate import runs

        project = self.session.project
        if self.kfold is not None and self._handle is None:
            self.kfold.show_project(project)  # the method and loop may have changed in other steps
        if self.results is None or self._handle is not None or self._is_shown(project):
            return
        self._shown_for = (project, len(project.evaluations) if project is not None else 0)
        latest = runs.latest_evaluation(project) if project is not None else None
        self.show_evaluation(latest[0] if latest else None)
        self.kfold_result = runs.latest_kfold(project) if project is not None else None
        self.kfold.set_result(self.kfold_result)
        self.kfold.show_project(project)

    def _is_shown(self, project: Any) -> bool:
        """Whether the project's latest records are what the pane shows (``is``: not an equal copy)."""
        shown = self._shown_for
        count = len(project.evaluations) if project is not None else 0
        return shown is not None and shown[0] is project and shown[1] == count

    def show_evaluation(self, evaluation: Any) -> None:
        self.evaluation = evaluation
        if evaluation is None:
            self.results.clear()
        else:
            self.results.set_evaluation(evaluation)
        self.outputs.show_evaluation(evaluation, self.session.project if evaluation is not None else None)
        self.refresh()

    @Slot(str, int, str)
    def _on_marked(self, _variant_id: str, _row: int, _mark: str) -> None:
        self.session.mark_dirty()  # the mark is in project.evaluate.marks already

    # -- running ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._handle is not None

    @Slot()
    def run(self) -> JobHandle | None:
        """Score the checked models and the baselines the settings ask for (job.default_variant_ids)."""
        from core.evaluate import job
        from core.evaluate.scoring import metric_task

        project, loaded = self.session.project, self.session.model
        if self._handle is not None or self._blocker()[0]:
            return None
        self.ensure_views()
        params = job.evaluate_params(project, loaded)  # the job gets a copy; the result goes to `project`
        if not self._start("evaluate", _evaluate_job, params, f"Evaluating on {loaded.card.name}", project):
            return None
        self.results.begin(job.metrics_of(metric_task(project.finetune.task)))
        self.tabs.setCurrentWidget(self.holders["results"])
        return self._handle

    @Slot()
    def run_kfold(self) -> JobHandle | None:
        project = self.session.project
        if self._handle is not None or self._blocker(kfold=True)[0]:
            return None
        self.error_panel.dismiss()
        handle = self.kfold.start(project, self.session.model)
        if handle is not None:
            self._track(handle, "kfold", None, project)
        return handle

    @Slot(object)
    def _on_kfold_recorded(self, project: Any) -> None:
        self._save(project)
        if project is self.session.project:
            self._shown_for = (project, len(project.evaluations))
            self.kfold_result = self.kfold.result

    def _start(self, kind: str, fn: Any, params: Any, name: str, project: Any) -> bool:
        self.error_panel.dismiss()
        if problems := params.validate():
            self.error_panel.show_message(
                "This cannot start: " + "; ".join(problems) + ".", "Change the settings named above."
            )
            return False
        handle = self.runner.start(fn, params, name=name, owner=self)
        handle.event.connect(self._on_event)
        handle.succeeded.connect(self._on_succeeded)
        handle.failed.connect(self.error_panel.show_error)
        handle.cancelled.connect(self._on_cancelled)
        self._track(handle, kind, params, project)
        return True

    def _track(self, handle: JobHandle, kind: str, params: Any, project: Any) -> None:
        """``project``: the live session project the result is recorded in (never params.project,
        the job's copy)."""
        handle.finished.connect(self._on_finished)
        self._handle, self._job = handle, (kind, params, project)
        self.job_bar.bind(handle)
        self.status_label.setText("")
        self.refresh()

    @Slot()
    def stop(self) -> None:
        if self._handle is not None:
            self.status_label.setText("Stopping after the current step…")
            self._handle.cancel()

    @Slot(object)
    def _on_event(self, event: Any) -> None:
        if event.kind == "variant":
            self.results.add_variant(event.data["result"])
            self.status_label.setText(f"Scored {event.data['result'].label}.")

    @Slot(object)
    def _on_succeeded(self, result: Any) -> None:
        _kind, params, project = self._job
        self._keep_evaluation(result, params, project)
        errors = sum(1 for v in result.variants if v.error)
        failed = f" ({errors} could not be scored: see their rows)" if errors else ""
        self.status_label.setText(f"Scored {len(result.variants)} variant(s){failed} on "
                                  f"{len(result.examples)} test rows. Saved in {params.output}.")  # fmt: skip
        self.evaluated.emit(result)

    def _keep_evaluation(self, evaluation: Any, params: Any, project: Any) -> None:
        from core.evaluate import runs

        runs.record_evaluation(project, evaluation, params.output)
        if evaluation.variants and not all(v.error for v in evaluation.variants):
            project.step_status["evaluate"] = "done"
        self._save(project)
        if project is self.session.project:
            self._shown_for = (project, len(project.evaluations))
            self.show_evaluation(evaluation)

    def _save(self, project: Any) -> None:
        from core import project as projects

        if project is self.session.project:
            self.session.mark_dirty()
            return
        try:
            projects.save_project(project)
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)

    @Slot()
    def _on_cancelled(self) -> None:
        from core.evaluate.results import read_evaluation

        _kind, params, project = self._job
        try:  # the job saves each variant as it is scored: those are kept
            partial_result = read_evaluation(params.output)
        except (OSError, ValueError):
            partial_result = None
        if partial_result is not None and partial_result.variants:
            self._keep_evaluation(partial_result, params, project)
        else:
            with contextlib.suppress(OSError):  # nothing scored: no empty folder left behind
                params.output.rmdir()
        n = len(partial_result.variants) if partial_result is not None else 0
        self.status_label.setText(f"Stopped: {n} variant(s) were scored before the stop; they are kept."
                                  if n else "Stopped before the first variant was scored.")  # fmt: skip

    @Slot()
    def _on_finished(self) -> None:
        self._handle, self._job = None, None
        if self.isVisible():
            self.restore()  # another project was opened while the job ran
        self.refresh()

    # -- export -------------------------------------------------------------------------------
    @Slot()
    def export(self) -> JobHandle | None:
        """Ask where, then write the report of the evaluation shown (and the latest k-fold run)."""
        if self.evaluation is None or self._handle is not None:
            return None
        handle = eval_export.ask_and_start(self, self.session.project, self.evaluation, self.kfold_result)
        if handle is not None:
            handle.succeeded.connect(lambda paths: self.status_label.setText(eval_export.saved_text(paths)))
            handle.failed.connect(self.error_panel.show_error)
            self.job_bar.bind(handle)
        return handle


if __name__ == "__main__":  # preview: python -m desktop.panes.evaluate_pane
    import sys

    from desktop.preview import load_default, preview

    sys.exit(preview(EvaluatePane, (1280, 980), load_default))
