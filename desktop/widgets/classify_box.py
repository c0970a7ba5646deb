"""“Ask” a trained classifier: a text, and the probability of each label, most likely first."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from desktop.jobs import JobHandle, JobRunner
from desktop.widgets.error_panel import ErrorPanel

DEFAULT_TEXT = "I was charged twice for my subscription this month."


def _classify_job(params: Any, ctx) -> Any:
    from core.finetune import classify

    return classify.run_classify(params, ctx)


class ClassifyBox(QWidget):
    """Signal ``classified(list)``: [(label, probability), …], most likely first."""

    classified = Signal(list)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._loaded: Any = None
        self._handle: JobHandle | None = None
        self.text = QLineEdit(DEFAULT_TEXT)
        self.text.setPlaceholderText("Type a text for the classifier")
        self.text.returnPressed.connect(self.classify)
        self.button = QPushButton("Classify")
        self.button.setObjectName("primary")
        self.button.clicked.connect(self.classify)
        self.result = QLabel(wordWrap=True)
        self.error_panel = ErrorPanel()
        row = QHBoxLayout()
        row.addWidget(self.text, 1)
        row.addWidget(self.button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.result)
        layout.addWidget(self.error_panel)
        layout.addStretch(1)
        self.set_model(None)

    def set_model(self, loaded: Any) -> None:
        """Classify with ``loaded`` (a LoadedModel whose model is a sequence classifier; None: none)."""
        self._loaded = loaded
        self.button.setEnabled(loaded is not None and self._handle is None)
        self.result.setText("" if loaded is not None else "Train or load a classifier to try it here.")

    @Slot()
    def classify(self) -> JobHandle | None:
        if self._loaded is None or self._handle is not None:
            return None
        from core.finetune.classify import ClassifyParams

        params = ClassifyParams(self._loaded.model, self._loaded.tokenizer, self.text.text())
        if problems := params.validate():
            self.error_panel.show_message(problems[0].capitalize() + ".")
            return None
        self.error_panel.dismiss()
        handle = self.runner.start(_classify_job, params, name="Classifying", owner=self)
        handle.succeeded.connect(self._on_classified)
        handle.failed.connect(self.error_panel.show_error)
        handle.finished.connect(self._on_finished)
        self._handle = handle
        self.button.setEnabled(False)
        return handle

    @Slot(object)
    def _on_classified(self, ranked: list) -> None:
        best, p = ranked[0]
        rest = ", ".join(f"{label} {100 * q:.1f} %" for label, q in ranked[1:])
        self.result.setText(f"<b>{best}</b> ({100 * p:.1f} %)" + (f" · then {rest}" if rest else ""))
        self.classified.emit(ranked)

    @Slot()
    def _on_finished(self) -> None:
        self._handle = None
        self.button.setEnabled(self._loaded is not None)
