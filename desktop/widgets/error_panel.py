"""An inline error where the user acted: what went wrong, what to do, details on demand."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from core.errors import QuantTuneError

BUG_FIX = "This looks like a bug in QuantTune; the details below help to report it."


def describe(exc: BaseException) -> tuple[str, str]:
    """(message, fix) for any exception; unexpected ones keep their type name."""
    if isinstance(exc, QuantTuneError):
        return exc.message, exc.fix
    return f"{type(exc).__name__}: {exc}", BUG_FIX


class ErrorPanel(QFrame):
    """Hidden until ``show_error``; ``dismissed`` is emitted when the user closes it."""

    dismissed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorPanel")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        icon = QLabel()
        icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical).pixmap(24, 24))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.message = QLabel(
            wordWrap=True, textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse
        )
        self.message.setObjectName("errorMessage")
        self.fix = QLabel(wordWrap=True, textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QPushButton("Show details", checkable=True)
        self.details_button.toggled.connect(self._toggle_details)
        self.dismiss_button = QPushButton("Dismiss")
        self.dismiss_button.clicked.connect(self.dismiss)
        self.details = QPlainTextEdit(readOnly=True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.details.setMinimumHeight(140)
        self.details.hide()
        self._layout(icon)
        self.hide()

    def _layout(self, icon: QLabel) -> None:
        text = QVBoxLayout()
        text.addWidget(self.message)
        text.addWidget(self.fix)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.details_button)
        buttons.addWidget(self.dismiss_button)
        text.addLayout(buttons)
        top = QHBoxLayout()
        top.addWidget(icon)
        top.addLayout(text, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.details)

    def show_error(self, exc: BaseException, traceback_text: str = "") -> None:
        message, fix = describe(exc)
        self.show_message(message, fix, traceback_text)

    def show_message(self, message: str, fix: str = "", details: str = "") -> None:
        self.message.setText(message)
        self.fix.setText(fix)
        self.fix.setVisible(bool(fix))
        self.details.setPlainText(details)
        self.details_button.setVisible(bool(details))
        self.details_button.setChecked(False)
        self.show()

    @Slot()
    def dismiss(self) -> None:
        if not self.isHidden():
            self.hide()
            self.dismissed.emit()

    @Slot(bool)
    def _toggle_details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.details_button.setText("Hide details" if shown else "Show details")
