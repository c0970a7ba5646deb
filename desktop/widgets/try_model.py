"""Try a trained model at once: “Ask” for a language model, “Classify” for a classifier."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QStackedWidget, QWidget

from desktop.jobs import JobRunner
from desktop.widgets.ask_box import AskBox
from desktop.widgets.classify_box import ClassifyBox


class TryModel(QStackedWidget):
    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ask_box = AskBox(runner)
        self.classify_box = ClassifyBox(runner)
        self.addWidget(self.ask_box)
        self.addWidget(self.classify_box)

    def set_model(self, loaded: Any) -> None:
        """``loaded``: a LoadedModel holding the trained model (None: nothing to try)."""
        from core.finetune.classify import is_classifier

        classifier = loaded is not None and is_classifier(loaded.model)
        self.ask_box.set_model(None if classifier else loaded)
        self.classify_box.set_model(loaded if classifier else None)
        self.setCurrentWidget(self.classify_box if classifier else self.ask_box)
