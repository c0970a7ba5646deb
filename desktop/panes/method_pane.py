"""Step 5, "Fine-tuning method": the data to learn from and how to adapt the model.

Data flow: the Data box and the method picker edit the session's FinetuneSettings (saved with
the project); the data is checked by a core job (core.finetune.data_check) and the method's
trainable parameters are counted on a copy of the loaded model by another (core.finetune.plan),
each started again a moment after the last edit.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from core.errors import QuantTuneError
from desktop.jobs import JobHandle
from desktop.latest_job import LatestJob
from desktop.session import Session
from desktop.widgets.cost_text import counts_html, plan_job
from desktop.widgets.data_box import DataBox
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.method_picker import MethodPicker

NO_MODEL = "Load a model first: the method's cost is counted on the loaded model."
COUNT_DELAY_MS = 400


class MethodPane(QWidget):
    """Signals: ``statusChanged(state, text)``; ``stepRequested(key)``."""

    statusChanged = Signal(str, str)
    stepRequested = Signal(str)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session, self.runner = session, session.runner
        self.counted: Any = None  # the last core.finetune.plan.Plan
        self.count_job = LatestJob(
            self.runner, plan_job, "Counting trainable parameters", self._count_params, COUNT_DELAY_MS, self
        )
        self.count_job.started.connect(self._on_count_started)
        self.count_job.succeeded.connect(self._on_counted)
        self.count_job.failed.connect(self._on_count_failed)
        self._build()
        self._connect()
        self._on_project_changed(session.project)

    def _build(self) -> None:
        title = QLabel("Fine-tuning method", objectName="screenTitle")
        self.model_label = QLabel(wordWrap=True)
        self.go_load_button = QPushButton("Go to Load model")
        self.next_button = QPushButton("Next: Train →")
        self.next_button.setObjectName("primary")
        top = QHBoxLayout()
        top.addWidget(self.model_label, 1)
        top.addWidget(self.go_load_button)
        top.addWidget(self.next_button)
        self.data_box = DataBox(self.runner)
        self.picker = MethodPicker()
        self.norm_button = QPushButton("Use norm-only tuning")
        self.norm_button.hide()
        method_box = QGroupBox("Method")
        method_box.setMinimumHeight(360)
        method_layout = QVBoxLayout(method_box)
        method_layout.addWidget(self.picker)
        method_layout.addWidget(self.norm_button)
        self.learn = LearnPanel("method")
        content = QWidget()
        column = QVBoxLayout(content)
        column.addWidget(self.data_box)
        column.addWidget(method_box, 1)
        column.addWidget(self.learn)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(title)
        layout.addLayout(top)
        layout.addWidget(scroll, 1)

    def _connect(self) -> None:
        self.go_load_button.clicked.connect(partial(self.stepRequested.emit, "load"))
        self.next_button.clicked.connect(partial(self.stepRequested.emit, "train"))
        self.data_box.changed.connect(self._on_data_edited)
        self.data_box.checked.connect(self._on_data_checked)
        self.picker.changed.connect(self._on_method_edited)
        self.norm_button.clicked.connect(self._use_norm_only)
        self.session.projectChanged.connect(self._on_project_changed)
        self.session.modelChanged.connect(self._on_model_changed)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self.counted is None:
            self.count_job.request()
        self._emit_status()

    # -- following the session ------------------------------------------------------------
    @Slot(object)
    def _on_project_changed(self, _project: Any) -> None:
        s = self.session.finetune_settings
        self.data_box.set_settings(s)
        self.picker.set_values(s.method, s.task)
        self._on_model_changed(self.session.model)

    @Slot(object)
    def _on_model_changed(self, loaded: Any) -> None:
        self.go_load_button.setVisible(loaded is None)
        self.model_label.setText(f"Adapting <b>{loaded.card.name}</b>." if loaded is not None else NO_MODEL)
        self.picker.set_model(loaded.model if loaded is not None else None)
        self.data_box.set_tokenizer(loaded.tokenizer if loaded is not None else None)
        self.counted = None
        self.count_job.request()

    # -- edits ----------------------------------------------------------------------------
    @Slot()
    def _on_data_edited(self) -> None:
        s = self.session.finetune_settings
        if s.task != self.picker.task:
            if s.task != "classification" and s.method.get("method") == "feature":
                s.method["method"] = "lora"  # feature extraction only trains a classification head
            self.picker.set_values(s.method, s.task)
            self.count_job.request()
        self.session.mark_dirty()
        self._emit_status()

    @Slot(object)
    def _on_data_checked(self, _result: Any) -> None:
        if self.session.finetune_settings.task == "classification":
            self.count_job.request()  # the head's size follows the labels
        self._emit_status()

    @Slot()
    def _on_method_edited(self) -> None:
        self.session.mark_dirty()
        self.count_job.request()
        self._emit_status()

    @Slot()
    def _use_norm_only(self) -> None:
        s = self.session.finetune_settings
        s.method["method"] = "ln"
        self.picker.set_values(s.method, s.task)
        self._on_method_edited()

    # -- counting what the method trains --------------------------------------------------
    def count(self) -> JobHandle | None:
        """Count what the method trains now (once the step is on screen)."""
        if not self.isVisible() or self.session.model is None:
            self.picker.set_counts("")
            return None
        return self.count_job.run_now()

    def _count_params(self) -> Any:
        from core.finetune import runs

        s = self.session.finetune_settings
        if self.session.model is None or not self.isVisible():
            return None
        return runs.plan_params(s, self.session.model)

    @Slot()
    def _on_count_started(self) -> None:
        self.picker.set_counts("Counting the trainable parameters…")
        self.norm_button.hide()

    @Slot(object)
    def _on_counted(self, result: Any) -> None:
        self.counted = result
        self.picker.set_counts(counts_html(result.trainable))
        self._emit_status()

    @Slot(object, str)
    def _on_count_failed(self, exc: BaseException, _tb: str) -> None:
        self.counted = None
        fix = f" {exc.fix}" if isinstance(exc, QuantTuneError) and exc.fix else ""
        self.picker.set_counts(f"<span style='color:#c0392b'>{exc}{fix}</span>")
        self.norm_button.setVisible(self.picker.method() == "bitfit")
        self._emit_status()

    def _emit_status(self) -> None:
        from core.finetune.methods import METHODS

        box = self.data_box
        problem = box.problems_text() if box.result is not None or box.failed else ""
        if problem:
            self.statusChanged.emit("stale", "Check the data")
            return
        method = METHODS.get(self.picker.method())
        rows = sum(self.data_box.result.split) if self.data_box.result is not None else 0
        text = f"{method.title if method else '?'}" + (f" · {rows} rows" if rows else "")
        self.statusChanged.emit("done" if rows else "todo", text)


if __name__ == "__main__":  # preview: python -m desktop.panes.method_pane
    import sys

    from desktop.preview import load_default, preview

    sys.exit(preview(MethodPane, (1280, 980), load_default))
