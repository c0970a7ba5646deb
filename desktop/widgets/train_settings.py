"""The Train step's loop settings: batch size, learning rate, how long, warm-up, how often to
evaluate and checkpoint, early stopping, and what to save. Edits a core FinetuneSettings in
place and emits ``changed``."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QSpinBox, QWidget

# field -> (label, tooltip, minimum, maximum); the learning rate has its own editor
FIELDS = {
    "batch_size": ("Batch size", "Rows per step: more is steadier and costs more memory", 1, 512),
    "epochs": ("Epochs", "Passes over the training rows", 1, 100),
    "max_steps": ("Max steps", "Stop after this many steps (0: as many as the epochs take)", 0, 1_000_000),
    "warmup_steps": ("Warm-up steps", "The learning rate rises from near 0 over these steps", 0, 100_000),
    "eval_every": ("Validate every", "Steps between validation losses (0: only at the end)", 0, 100_000),
    "save_every": ("Checkpoint every", "Steps between checkpoints: a crash loses no more", 0, 100_000),
    "early_stopping_patience": ("Early stopping after", "Stop when this many validations in a row do not "
                                "improve on the best (0: off)", 0, 1000),
}  # fmt: skip


class TrainSettingsBox(QGroupBox):
    """Signal ``changed()`` after an edit."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Training", parent)
        self.settings: Any = None
        self.editors: dict[str, QSpinBox] = {}
        grid = QGridLayout(self)
        self.learning_rate = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1.0, singleStep=1e-4)
        self.learning_rate.setToolTip("How far each step moves the trained numbers (LoRA: 1e-4 to 3e-4)")
        self.learning_rate.valueChanged.connect(self._on_edited)
        grid.addWidget(QLabel("Learning rate"), 0, 0)
        grid.addWidget(self.learning_rate, 0, 1)
        for i, (name, (label, tip, low, high)) in enumerate(FIELDS.items(), start=1):
            editor = QSpinBox(minimum=low, maximum=high)
            editor.setToolTip(tip)
            editor.valueChanged.connect(self._on_edited)
            self.editors[name] = editor
            grid.addWidget(QLabel(label), i % 4, 2 * (i // 4))
            grid.addWidget(editor, i % 4, 2 * (i // 4) + 1)
        self.save_merged = QCheckBox("Also save the merged model (loads with transformers alone)")
        self.save_merged.setToolTip(
            "The adapter is always saved in peft's format; merged, the model needs no peft to run "
            "(not possible for prefix, prompt and P-tuning)"
        )
        self.save_merged.toggled.connect(self._on_edited)
        grid.addWidget(self.save_merged, 4, 0, 1, 2)
        self.checkpointing = QCheckBox("Gradient checkpointing (less memory, about a third slower)")
        self.checkpointing.setToolTip(
            "Keep only each block's input during the forward pass and recompute the rest in the backward "
            "pass: activations take a fraction of the memory"
        )
        self.checkpointing.toggled.connect(self._on_edited)
        grid.addWidget(self.checkpointing, 4, 2, 1, 2)

    def set_settings(self, settings: Any) -> None:
        self.settings = settings
        widgets = [self.learning_rate, self.save_merged, self.checkpointing, *self.editors.values()]
        for widget in widgets:
            widget.blockSignals(True)
        self.learning_rate.setValue(settings.learning_rate)
        self.save_merged.setChecked(settings.save_merged)
        self.checkpointing.setChecked(settings.gradient_checkpointing)
        for name, editor in self.editors.items():
            editor.setValue(getattr(settings, name))
        for widget in widgets:
            widget.blockSignals(False)

    @Slot()
    def _on_edited(self, *_args: Any) -> None:
        if self.settings is None:
            return
        self.settings.learning_rate = self.learning_rate.value()
        self.settings.save_merged = self.save_merged.isChecked()
        self.settings.gradient_checkpointing = self.checkpointing.isChecked()
        for name, editor in self.editors.items():
            setattr(self.settings, name, editor.value())
        self.changed.emit()
