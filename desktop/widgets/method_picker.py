"""The menu of adaptation methods: a list, and for the chosen one what it does, where it fits,
what it trains on the loaded model, and its settings (only those the method uses).

The picker edits a dict of core.finetune.methods.MethodSettings fields in place (the project's
``finetune.method``) and emits ``changed``; the pane measures the trainable parameters.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

ORDER = ("lora", "qlora", "dora", "full", "partial", "feature", "adapters", "ia3", "prefix", "prompt",
         "ptuning", "bitfit", "ln", "qat")  # fmt: skip
LORA_FIELDS = ("rank", "alpha", "dropout", "target_modules")
FIELDS = {
    "lora": LORA_FIELDS,
    "dora": LORA_FIELDS,
    "qlora": LORA_FIELDS,
    "ia3": ("target_modules",),
    "prefix": ("virtual_tokens",),
    "prompt": ("virtual_tokens",),
    "ptuning": ("virtual_tokens",),
    "partial": ("top_layers",),
    "adapters": ("adapter_size",),
    "qat": ("qat_bits", "qat_group_size", "qat_symmetric", "qat_scales", "qat_lora", "qat_watch"),
}
CLASSIFICATION_ONLY = ("feature",)
KEY_ROLE = Qt.ItemDataRole.UserRole


class MethodPicker(QWidget):
    """Signal ``changed()`` after the method or one of its settings changed."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.values: dict[str, Any] = {}
        self.task = "instruction"
        self._build()

    def _build(self) -> None:
        from core.finetune.methods import METHODS

        self.list = QListWidget()
        for key in [k for k in ORDER if k in METHODS] + [k for k in METHODS if k not in ORDER]:
            item = QListWidgetItem(METHODS[key].title)
            item.setData(KEY_ROLE, key)
            self.list.addItem(item)
        self.list.setMaximumWidth(260)
        self.list.currentItemChanged.connect(self._on_method_picked)
        self.title = QLabel(objectName="sectionTitle")
        self.explanation = QLabel(wordWrap=True)
        self.best_when = QLabel(wordWrap=True)
        self.counts = QLabel(wordWrap=True)
        self.counts.setTextFormat(Qt.TextFormat.RichText)
        self.form = QFormLayout()
        self.editors = self._editors()
        detail = QVBoxLayout()
        for widget in (self.title, self.explanation, self.best_when, self.counts):
            detail.addWidget(widget)
        detail.addLayout(self.form)
        detail.addStretch(1)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.list)
        layout.addLayout(detail, 1)

    def _editors(self) -> dict[str, QWidget]:
        e: dict[str, QWidget] = {
            "rank": QSpinBox(minimum=1, maximum=512),
            "alpha": QSpinBox(minimum=1, maximum=1024),
            "dropout": QDoubleSpinBox(minimum=0.0, maximum=0.9, singleStep=0.05, decimals=2),
            "target_modules": _ModuleChecks(),
            "virtual_tokens": QSpinBox(minimum=1, maximum=512),
            "top_layers": QSpinBox(minimum=1, maximum=200),
            "adapter_size": QSpinBox(minimum=1, maximum=4096),
            "qat_bits": QSpinBox(minimum=2, maximum=8),
            "qat_group_size": _choice(
                (
                    ("Per output channel", 0),
                    ("Groups of 32", 32),
                    ("Groups of 64", 64),
                    ("Groups of 128", 128),
                )
            ),  # fmt: skip
            "qat_symmetric": QCheckBox("Symmetric (Z = 0)"),
            "qat_scales": _choice(
                (("Moving averages of min and max", "moving_average"), ("Learned (LSQ)", "lsq"))
            ),  # fmt: skip
            "qat_lora": QCheckBox("LoRA on the quantized base (else every weight trains)"),
            "qat_watch": QComboBox(),
        }
        labels = {"rank": "Rank r", "alpha": "Alpha (scale = alpha / r)", "dropout": "Dropout",
                  "target_modules": "Layers adapted", "virtual_tokens": "Virtual tokens",
                  "top_layers": "Top blocks trained", "adapter_size": "Adapter width",
                  "qat_bits": "Bits", "qat_group_size": "Scales", "qat_symmetric": "",
                  "qat_scales": "S and Z", "qat_lora": "", "qat_watch": "Plot S and Z of"}  # fmt: skip
        tips = {"rank": "The width of LoRA's A·B: more can learn more, and costs more",
                "alpha": "LoRA's update is scaled by alpha / r",
                "qat_watch": "The layer whose S and Z the Train step plots as they change"}  # fmt: skip
        for name, editor in e.items():
            editor.setToolTip(tips.get(name, ""))
            self.form.addRow(labels[name], editor)
            _signal_of(editor).connect(self._on_edited)
        return e

    # -- mirroring -----------------------------------------------------------------------
    def set_model(self, model: Any) -> None:
        """Offer the model's own linear layers as LoRA targets and as the QAT layer to plot."""
        names = []
        if model is not None:  # (importing calibration imports torch: not before a model is loaded)
            from core.quant.calibration import linear_layers

            names = list(linear_layers(model))
        kinds = sorted({n.rsplit(".", 1)[-1] for n in names}, key=_kind_order)
        self.editors["target_modules"].set_kinds(kinds)
        watch = self.editors["qat_watch"]
        watch.blockSignals(True)
        watch.clear()
        watch.addItem("The first quantized layer", "")
        for name in names:
            watch.addItem(name, name)
        watch.blockSignals(False)
        self.set_values(self.values, self.task)

    def set_values(self, values: dict[str, Any], task: str) -> None:
        """Show ``values`` (edited in place from now on) for a run of ``task``."""
        from core.finetune.methods import MethodSettings

        self.values, self.task = values, task
        defaults = MethodSettings().__dict__
        for key, value in defaults.items():
            values.setdefault(key, list(value) if isinstance(value, tuple) else value)
        for i in range(self.list.count()):
            item = self.list.item(i)
            usable = task == "classification" or item.data(KEY_ROLE) not in CLASSIFICATION_ONLY
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEnabled if usable
                          else item.flags() & ~Qt.ItemFlag.ItemIsEnabled)  # fmt: skip
            item.setToolTip("" if usable else "Trains a classification head: choose Text classification")
        for name, editor in self.editors.items():
            editor.blockSignals(True)
            _set_value(editor, values[name])
            editor.blockSignals(False)
        self._select(values["method"])

    def _select(self, key: str) -> None:
        for i in range(self.list.count()):
            if self.list.item(i).data(KEY_ROLE) == key:
                self.list.blockSignals(True)
                self.list.setCurrentRow(i)
                self.list.blockSignals(False)
        self._show_method(key)

    def _show_method(self, key: str) -> None:
        from core.finetune.methods import METHODS

        method = METHODS[key]
        self.title.setText(method.title)
        self.explanation.setText(method.explanation)
        self.best_when.setText(f"<i>Best when</i> {method.best_when}.")
        fields = set(FIELDS.get(key, ()))
        if key == "qat" and self.values.get("qat_lora"):
            fields |= set(LORA_FIELDS)
        for name, editor in self.editors.items():
            self.form.setRowVisible(editor, name in fields)

    def set_counts(self, html: str) -> None:
        self.counts.setText(html)

    # -- editing -------------------------------------------------------------------------
    @Slot()
    def _on_method_picked(self, current: QListWidgetItem | None, _previous: Any = None) -> None:
        if current is None:
            return
        self.values["method"] = current.data(KEY_ROLE)
        self._show_method(self.values["method"])
        self.changed.emit()

    @Slot()
    def _on_edited(self, *_args: Any) -> None:
        for name, editor in self.editors.items():
            self.values[name] = _value_of(editor)
        self._show_method(self.values["method"])
        self.changed.emit()

    def method(self) -> str:
        return self.values.get("method", "lora")


class _ModuleChecks(QWidget):
    """One check box per kind of linear layer (q_proj, …, down_proj)."""

    toggled = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.row = QHBoxLayout(self)
        self.row.setContentsMargins(0, 0, 0, 0)
        self.boxes: dict[str, QCheckBox] = {}
        self._chosen: list[str] = []

    def set_kinds(self, kinds: list[str]) -> None:
        chosen = self.chosen()
        for box in self.boxes.values():
            box.deleteLater()
        self.boxes = {}
        for kind in kinds:
            box = QCheckBox(kind)
            box.setChecked(kind in chosen)
            box.toggled.connect(self.toggled.emit)
            self.row.addWidget(box)
            self.boxes[kind] = box

    def set_chosen(self, kinds: list[str]) -> None:
        self._chosen = list(kinds)  # kept for a model whose kinds are not known yet
        for kind, box in self.boxes.items():
            box.blockSignals(True)
            box.setChecked(kind in kinds)
            box.blockSignals(False)

    def chosen(self) -> list[str]:
        if not self.boxes:
            return list(self._chosen)
        return [kind for kind, box in self.boxes.items() if box.isChecked()]


def _choice(items: tuple[tuple[str, Any], ...]) -> QComboBox:
    combo = QComboBox()
    for text, data in items:
        combo.addItem(text, data)
    return combo


def _kind_order(kind: str) -> int:
    from core.finetune.methods import LINEAR_TARGETS

    return LINEAR_TARGETS.index(kind) if kind in LINEAR_TARGETS else len(LINEAR_TARGETS)


def _signal_of(editor: QWidget) -> Any:
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.valueChanged
    if isinstance(editor, QCheckBox):
        return editor.toggled
    if isinstance(editor, QComboBox):
        return editor.activated
    return editor.toggled  # _ModuleChecks


def _set_value(editor: QWidget, value: Any) -> None:
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        editor.setValue(value)
    elif isinstance(editor, QCheckBox):
        editor.setChecked(bool(value))
    elif isinstance(editor, QComboBox):
        editor.setCurrentIndex(max(0, editor.findData(value)))
    else:
        editor.set_chosen(list(value))


def _value_of(editor: QWidget) -> Any:
    if isinstance(editor, (QSpinBox, QDoubleSpinBox)):
        return editor.value()
    if isinstance(editor, QCheckBox):
        return editor.isChecked()
    if isinstance(editor, QComboBox):
        return editor.currentData()
    return editor.chosen()
