"""The collapsible "Learn" panel: a step's concept, with the loaded model's numbers filled in."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QSizePolicy, QTextBrowser, QVBoxLayout, QWidget

from core import learn
from desktop.widgets.collapsible import Collapsible


class LearnPanel(QWidget):
    """Shows ``core.learn.render(step, numbers)``; ``set_numbers`` refreshes it."""

    def __init__(self, step: str, expanded: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.step = step
        self.browser = QTextBrowser()
        self.browser.setOpenLinks(False)  # offline app: texts carry no links worth following
        self.browser.setMinimumHeight(340)
        self.browser.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.browser.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.section = Collapsible("Learn: what is going on here?", self.browser, expanded)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.section)
        self._numbers: dict[str, Any] = {}
        self.set_numbers({})

    def set_numbers(self, numbers: dict[str, Any] | None) -> None:
        self._numbers = dict(numbers or {})
        self.browser.setHtml(learn.render(self.step, self._numbers))

    def html(self) -> str:
        return self.browser.toHtml()
