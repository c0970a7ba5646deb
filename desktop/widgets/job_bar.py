"""Progress of one running job: bar, message, time left, and a Cancel button."""

from __future__ import annotations

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from desktop.formatting import format_eta
from desktop.jobs import JobHandle

_BAR_STEPS = 1000  # the bar is integer-valued; jobs report fractional progress


class JobBar(QWidget):
    """Hidden while idle; ``bind(handle)`` shows it until that job finishes.

    ``cancelRequested`` is emitted when the user presses Cancel (the handle is cancelled too).
    """

    cancelRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._handle: JobHandle | None = None
        self.message = QLabel()
        self.message.setWordWrap(True)
        self.eta = QLabel()
        self.eta.setObjectName("hint")
        self.bar = QProgressBar()
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(12)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self._on_cancel)

        top = QHBoxLayout()
        top.addWidget(self.message, 1)
        top.addWidget(self.eta)
        bottom = QHBoxLayout()
        bottom.addWidget(self.bar, 1)
        bottom.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addLayout(bottom)
        self.hide()

    @property
    def handle(self) -> JobHandle | None:
        return self._handle

    def bind(self, handle: JobHandle) -> None:
        """Follow ``handle`` (replacing any job followed before)."""
        self._unbind()
        self._handle = handle
        handle.progress.connect(self._on_progress)
        handle.finished.connect(self._on_finished)
        self.message.setText(f"{handle.name}…")
        self.eta.clear()
        self.bar.setRange(0, 0)  # busy until the first report says how much there is
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        self.show()

    def _unbind(self) -> None:
        if self._handle is not None:
            self._handle.progress.disconnect(self._on_progress)
            self._handle.finished.disconnect(self._on_finished)
            self._handle = None

    @Slot(dict)
    def _on_progress(self, data: dict) -> None:
        done, total = data.get("done") or 0, data.get("total") or 0
        if data.get("message"):
            self.message.setText(str(data["message"]))
        if total > 0:
            self.bar.setRange(0, _BAR_STEPS)
            self.bar.setValue(round(_BAR_STEPS * min(1.0, done / total)))
        else:
            self.bar.setRange(0, 0)
        self.eta.setText(format_eta(data.get("eta_s")))

    @Slot()
    def _on_cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self.cancel_button.setEnabled(False)
            self.cancel_button.setText("Stopping…")
            self.cancelRequested.emit()

    @Slot()
    def _on_finished(self) -> None:
        self._unbind()
        self.hide()
