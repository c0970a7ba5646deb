"""Every modal question the app asks goes through these functions.

One seam for all of them keeps the wording consistent and lets the tests answer dialogs
(a modal dialog in an offscreen test would otherwise wait forever).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QInputDialog, QLineEdit, QMessageBox, QWidget


def confirm(
    parent: QWidget | None,
    title: str,
    text: str,
    *,
    yes: str = "Yes",
    no: str = "No",
    default_yes: bool = False,
    details: str = "",
) -> bool:
    """Ask a yes/no question; True only when the user picks ``yes``."""
    box = QMessageBox(QMessageBox.Icon.Question, title, text, parent=parent)
    yes_button = box.addButton(yes, QMessageBox.ButtonRole.AcceptRole)
    no_button = box.addButton(no, QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(yes_button if default_yes else no_button)
    box.setEscapeButton(no_button)
    if details:
        box.setInformativeText(details)
    box.exec()
    return box.clickedButton() is yes_button


def ask_text(parent: QWidget | None, title: str, label: str, text: str = "") -> str | None:
    """Ask for one line of text; None when the user cancels."""
    value, ok = QInputDialog.getText(parent, title, label, QLineEdit.EchoMode.Normal, text)
    return value if ok else None


def choose_folder(parent: QWidget | None, title: str, start: str = "") -> Path | None:
    folder = QFileDialog.getExistingDirectory(parent, title, start)
    return Path(folder) if folder else None


def choose_file(parent: QWidget | None, title: str, name_filter: str, start: str = "") -> Path | None:
    path, _ = QFileDialog.getOpenFileName(parent, title, start, name_filter)
    return Path(path) if path else None


def choose_save_file(parent: QWidget | None, title: str, name_filter: str, start: str = "") -> Path | None:
    """Ask where to save a file (``start``: the suggested path); None when the user cancels."""
    path, _ = QFileDialog.getSaveFileName(parent, title, start, name_filter)
    return Path(path) if path else None


def show_error(parent: QWidget | None, title: str, message: str, details: str = "") -> None:
    """A modal error for failures that belong to no pane (the global excepthook)."""
    box = QMessageBox(QMessageBox.Icon.Critical, title, message, parent=parent)
    if details:
        box.setDetailedText(details)
    box.exec()
