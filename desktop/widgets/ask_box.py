"""“Ask the model”: a prompt, and the answer streaming in token by token."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QTextCursor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.jobs import JobEvent
from desktop.formatting import format_seconds
from desktop.jobs import JobHandle, JobRunner
from desktop.widgets.error_panel import ErrorPanel

DEFAULT_PROMPT = "What is the capital of France?"
MAX_TOKENS_LIMIT = 2048  # core.generate.MAX_NEW_TOKENS; not imported: it would pull in loading


def _generate_job(params, ctx):
    from core import generate

    return generate.run(params, ctx)


class AskBox(QWidget):
    """Signals ``answerStarted()`` and ``answerFinished(str outcome)`` ("done", "cancelled",
    "failed"), so the pane can keep other actions in step."""

    answerStarted = Signal()
    answerFinished = Signal(str)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self._model: Any = None
        self._handle: JobHandle | None = None
        self._pieces = 0
        self._outcome = "done"
        self.prompt = QLineEdit(DEFAULT_PROMPT)
        self.prompt.setPlaceholderText("Type a question for the model")
        self.prompt.returnPressed.connect(self.ask)
        self.max_tokens = QSpinBox(minimum=1, maximum=MAX_TOKENS_LIMIT, value=64)
        self.max_tokens.setToolTip("The longest answer, in tokens (pieces of words)")
        self.ask_button = QPushButton("Ask")
        self.ask_button.setObjectName("primary")
        self.ask_button.clicked.connect(self.ask)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.output = QPlainTextEdit(readOnly=True)
        self.output.setPlaceholderText("The answer appears here, token by token.")
        self.output.setMinimumHeight(90)
        self.status = QLabel()
        self.status.setObjectName("hint")
        self.error_panel = ErrorPanel()
        self._build()
        self._update_buttons()

    def _build(self) -> None:
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addWidget(QLabel("Max tokens:"))
        row.addWidget(self.max_tokens)
        row.addWidget(self.ask_button)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.output, 1)
        layout.addWidget(self.status)
        layout.addWidget(self.error_panel)

    # -- public -------------------------------------------------------------------------
    def set_model(self, loaded: Any) -> None:
        """Answer with ``loaded`` from now on (None: no model); a different model stops the
        answer in progress (it belongs to the old one)."""
        if loaded is not self._model:
            self.cancel()
        self._model = loaded
        self._update_buttons()

    @property
    def handle(self) -> JobHandle | None:
        return self._handle

    @property
    def busy(self) -> bool:
        return self._handle is not None

    @Slot()
    def ask(self) -> JobHandle | None:
        if self._model is None or self._handle is not None:
            return None
        from core.generate import GenerateParams

        params = GenerateParams(self._model, self.prompt.text(), max_new_tokens=self.max_tokens.value())
        self.output.clear()
        self.error_panel.dismiss()
        self._pieces = 0
        self._outcome = "done"
        self.status.setText("Thinking…")
        handle = self.runner.start(_generate_job, params, name="Answering", owner=self)
        handle.event.connect(self._on_event)
        handle.succeeded.connect(self._on_success)
        handle.failed.connect(self._on_failure)
        handle.cancelled.connect(self._on_cancelled)
        handle.finished.connect(self._on_finished)
        self._handle = handle
        self._update_buttons()
        self.answerStarted.emit()
        return handle

    @Slot()
    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self.status.setText("Stopping…")
            self.cancel_button.setEnabled(False)

    def answer(self) -> str:
        return self.output.toPlainText()

    # -- job reports ----------------------------------------------------------------------
    @Slot(object)
    def _on_event(self, event: JobEvent) -> None:
        if event.kind != "token":
            return
        cursor = self.output.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(event.data.get("text", ""))
        self.output.setTextCursor(cursor)
        self._pieces += 1
        if self._handle is not None and not self._handle.cancel_requested:
            self.status.setText(f"Answering… {self._pieces} pieces in {format_seconds(self._handle.elapsed)}")

    @Slot(object)
    def _on_success(self, text: str) -> None:
        elapsed = self._handle.elapsed if self._handle else 0.0
        if not self.output.toPlainText() and text:
            self.output.setPlainText(text)  # nothing streamed (e.g. one final piece)
        self.status.setText(f"Answered in {format_seconds(elapsed)}.")
        self._outcome = "done"

    @Slot(object, str)
    def _on_failure(self, exc: BaseException, tb: str) -> None:
        self.status.clear()
        self.error_panel.show_error(exc, tb)
        self._outcome = "failed"

    @Slot()
    def _on_cancelled(self) -> None:
        self.status.setText("Stopped.")
        self._outcome = "cancelled"

    @Slot()
    def _on_finished(self) -> None:
        self._handle = None
        self._update_buttons()
        self.answerFinished.emit(self._outcome)

    def _update_buttons(self) -> None:
        busy = self._handle is not None
        self.ask_button.setEnabled(self._model is not None and not busy)
        self.cancel_button.setEnabled(busy)
        self.prompt.setEnabled(self._model is not None)
        if self._model is None and not busy:
            self.status.setText("Load a model to ask it something.")
        elif not busy and self.status.text() == "Load a model to ask it something.":
            self.status.clear()
