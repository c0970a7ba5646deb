"""The Evaluate step's settings: which model variants to score, the no-training baselines
(zero-shot, few-shot, retrieval), and how much to score (examples, answer length); and the line
that says what will be scored (the test split, counted by a job: reading a large file takes a while).

The form edits a core.project.EvaluateSettings in place and says so with ``changed()``; the pane
saves the project. ``variants`` empty means every variant the project has, so a variant added
later (a new training run) is scored without asking; the list names the chosen ones only when
the user left some out.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QSpinBox,
    QWidget,
)

BASELINE_KINDS = ("zero-shot", "few-shot", "rag")  # set by their own controls, not the checklist
ID_ROLE = Qt.ItemDataRole.UserRole + 1
KIND_TEXT = {"base": "base model", "quantized": "quantized", "finetuned": "fine-tuned",
             "finetuned+quantized": "fine-tuned, then quantized",
             "qat": "quantization-aware training"}  # fmt: skip


class EvalSettingsBox(QWidget):
    """Signals: ``changed()`` after every edit the user makes (not after ``set_*``)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._settings: Any = None
        self._filling = False
        self._zero_shot_offered = True  # False where the task has no zero-shot baseline
        self.variant_list = QListWidget()
        self.variant_list.setMinimumWidth(280)
        self.variant_list.setMaximumHeight(96)
        self.variant_list.itemChanged.connect(self._on_variant_checked)
        self.zero_shot = QCheckBox("Zero-shot prompting")
        self.zero_shot.setToolTip(
            "The base model asked each test question as it is: no examples, no training."
        )
        self.few_shot = _spin(0, 16, "no few-shot baseline", "example")
        self.few_shot.setToolTip(
            "Few-shot prompting (in-context learning): this many training rows are put in the prompt "
            "before each test question. 0 leaves this baseline out."
        )
        self.rag_top_k = _spin(0, 8, "no retrieval baseline", "document")
        self.rag_top_k.setToolTip(
            "Retrieval-augmented generation: the training rows most similar to each question (BM25) are "
            "put in the prompt. 0 leaves this baseline out."
        )
        self.max_new_tokens = _spin(1, 1024, "", "token")
        self.max_new_tokens.setToolTip("The longest answer a variant may generate. Longer answers cost time.")
        self.max_examples = _spin(0, 100_000, "all test rows", "row")
        self.max_examples.setToolTip(
            "Score only the first rows of the test split: generating costs seconds per row on a CPU. "
            "0 scores them all."
        )
        self._tips = {w: w.toolTip() for w in (self.zero_shot, self.few_shot, self.rag_top_k)}
        self._layout()
        for spin in (self.few_shot, self.rag_top_k, self.max_new_tokens, self.max_examples):
            spin.valueChanged.connect(self._on_edited)
        self.zero_shot.toggled.connect(self._on_edited)

    def _layout(self) -> None:
        variants = QGroupBox("Variants to score")
        QHBoxLayout(variants).addWidget(self.variant_list)
        baselines = QGroupBox("Baselines (no training)")
        form = QFormLayout(baselines)
        form.addRow(self.zero_shot)
        form.addRow("Few-shot", self.few_shot)
        form.addRow("Retrieval (RAG)", self.rag_top_k)
        limits = QGroupBox("How much")
        form = QFormLayout(limits)
        form.addRow("Answer length", self.max_new_tokens)
        form.addRow("Examples", self.max_examples)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(variants, 3)
        row.addWidget(baselines, 2)
        row.addWidget(limits, 2)

    # -- filling ----------------------------------------------------------------------------
    def set_settings(self, settings: Any) -> None:
        """Show (and from now on edit) this EvaluateSettings."""
        self._settings = settings
        self._filling = True
        try:
            self.zero_shot.setChecked(settings.zero_shot and self._zero_shot_offered)
            self.few_shot.setValue(settings.few_shot)
            self.rag_top_k.setValue(settings.rag_top_k)
            self.max_new_tokens.setValue(settings.max_new_tokens)
            self.max_examples.setValue(settings.max_examples)
            self._apply_checks()
        finally:
            self._filling = False

    def set_variants(self, infos: list[Any]) -> None:
        """The project's variants (core.evaluate.variants.VariantInfo): models in the checklist,
        baselines through their controls; an unavailable one is disabled and says why."""
        self._filling = True
        try:
            self.variant_list.clear()
            for info in infos:
                if info.kind in BASELINE_KINDS:
                    continue
                item = QListWidgetItem(f"{info.label}  ({KIND_TEXT.get(info.kind, info.kind)})")
                item.setData(ID_ROLE, info.id)
                flags = Qt.ItemFlag.ItemIsUserCheckable
                if info.available:
                    flags |= Qt.ItemFlag.ItemIsEnabled
                item.setFlags(flags)
                item.setToolTip(info.why if not info.available else "")
                self.variant_list.addItem(item)
            baselines = {info.kind: info for info in infos if info.kind in BASELINE_KINDS}
            # without a model nothing can run: the controls stay editable, the pane says what is missing
            model_ready = any(info.kind == "base" and info.available for info in infos)
            for kind, control in (("zero-shot", self.zero_shot), ("few-shot", self.few_shot),
                                  ("rag", self.rag_top_k)):  # fmt: skip
                info = baselines.get(kind)
                # a count of 0 makes few-shot and RAG "unavailable": the spin must stay editable
                counted = kind != "zero-shot" and control.value() == 0
                unavailable = info is not None and not info.available and not counted and model_ready
                control.setEnabled(not unavailable)
                if control is self.zero_shot:
                    self._zero_shot_offered = not unavailable
                control.setToolTip(f"Unavailable: {info.why}" if unavailable else self._tips[control])
            # an unavailable zero-shot shows unchecked (it will not run); the setting stays as it was
            if self._settings is not None:
                self.zero_shot.setChecked(self._settings.zero_shot and self._zero_shot_offered)
            self._apply_checks()
        finally:
            self._filling = False

    def _apply_checks(self) -> None:
        chosen = set(self._settings.variants) if self._settings is not None else set()
        for item in self._items():
            available = bool(item.flags() & Qt.ItemFlag.ItemIsEnabled)
            on = available and (not chosen or item.data(ID_ROLE) in chosen)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    # -- reading ----------------------------------------------------------------------------
    def _items(self) -> list[QListWidgetItem]:
        return [self.variant_list.item(i) for i in range(self.variant_list.count())]

    def checked_ids(self) -> list[str]:
        return [i.data(ID_ROLE) for i in self._items() if i.checkState() == Qt.CheckState.Checked]

    def available_ids(self) -> list[str]:
        return [i.data(ID_ROLE) for i in self._items() if i.flags() & Qt.ItemFlag.ItemIsEnabled]

    def set_checked(self, variant_id: str, on: bool) -> None:
        """Check or uncheck one variant as the user would."""
        for item in self._items():
            if item.data(ID_ROLE) == variant_id:
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    @Slot(QListWidgetItem)
    def _on_variant_checked(self, _item: QListWidgetItem) -> None:
        if self._filling or self._settings is None:
            return
        checked = self.checked_ids()
        # every available one checked: store "all", so variants made later are included too
        self._settings.variants = [] if set(checked) == set(self.available_ids()) else checked
        self.changed.emit()

    @Slot()
    def _on_edited(self) -> None:
        if self._filling or self._settings is None:
            return
        s = self._settings
        s.zero_shot = self.zero_shot.isChecked()
        s.few_shot, s.rag_top_k = self.few_shot.value(), self.rag_top_k.value()
        s.max_new_tokens, s.max_examples = self.max_new_tokens.value(), self.max_examples.value()
        self.changed.emit()


def _spin(low: int, high: int, zero_text: str, unit: str) -> QSpinBox:
    """A count with its unit ("1 example", "3 examples")."""
    spin = QSpinBox(minimum=low, maximum=high)
    if zero_text:
        spin.setSpecialValueText(zero_text)  # shown at the minimum (0)

    def name_unit(value: int) -> None:
        spin.setSuffix(f" {unit}" if value == 1 else f" {unit}s")

    spin.valueChanged.connect(name_unit)
    name_unit(spin.value())
    return spin


# -- what will be scored --------------------------------------------------------------------------
def scope_job(params: Any, ctx: Any) -> Any:
    """core.finetune.data_check on the project's data: its ``split`` counts the test rows."""
    from core.finetune import data_check

    return data_check.run(params, ctx)


def scope_params(project: Any) -> Any:
    """The data check's params for the project's dataset and split (None: no dataset chosen)."""
    from core.finetune.data_check import DataCheckParams
    from core.finetune.runs import dataset_path

    if project is None or not project.finetune.dataset:
        return None
    f = project.finetune
    return DataCheckParams(dataset_path(f), f.task, tuple(sorted(f.columns.items())), None, f.max_length,
                           f.validation_ratio, f.test_ratio, f.seed, f.drop_bad_rows)  # fmt: skip


def scope_text(project: Any, test_rows: int | None) -> str:
    """ "Scoring the test split of units.jsonl (instruction / chat): 6 test rows, scoring the first 3." """
    from core.finetune.data_check import TASK_NAMES
    from core.finetune.runs import dataset_path

    f, limit = project.finetune, project.evaluate.max_examples
    rows = "counting the test rows…" if test_rows is None else f"<b>{test_rows}</b> test rows"
    if test_rows is not None and 0 < limit < test_rows:
        rows += f", scoring the first <b>{limit}</b>"
    return (
        f"Scoring the test split of <b>{dataset_path(f).name}</b> ({TASK_NAMES.get(f.task, f.task)}): {rows}."
    )
