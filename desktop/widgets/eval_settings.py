"""The Evaluate step's settings: which model variants to score, the no-training baselines
(zero-shot, few-shot, retrieval), and how much to score (examples, answer length); and the line
that says what will be scored (the test split, counted by a job: reading a large file takes a while).

The form edits a core.project.EvaluateSettings in place and says so with ``changed()``; the pane
saves the project. The checklist keeps the models the user unchecked in ``skipped``, so a variant
made later (a new training run) starts checked, and unchecking every model is kept as it is. The
list is rebuilt only when the project's variants change (``set_variants``), never while the user
checks: a check edits ``skipped`` and nothing else.
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

from core.evaluate.job import MAX_EXAMPLES, MAX_NEW_TOKENS  # no torch: safe at start-up

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
        self._shown: list[tuple[str, str, str, bool, str]] = []  # the checklist's models, as last built
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
        self.max_new_tokens = _spin(1, MAX_NEW_TOKENS, "", "token")
        self.max_new_tokens.setToolTip("The longest answer a variant may generate. Longer answers cost time.")
        self.max_examples = _spin(0, MAX_EXAMPLES, "all test rows", "row")
        self.max_examples.setToolTip(
            "Score only the first rows of the test split: generating costs seconds per row on a CPU. "
            "0 scores them all."
        )
        self._tips = {w: w.toolTip() for w in (self.zero_shot, self.few_shot, self.rag_top_k)}
        self._layout()
        # each control writes its own field: an unavailable zero-shot shows unchecked, and editing
        # another control must not turn the setting off behind the user's back
        spins = {"few_shot": self.few_shot, "rag_top_k": self.rag_top_k,
                 "max_new_tokens": self.max_new_tokens, "max_examples": self.max_examples}  # fmt: skip
        for name, spin in spins.items():
            spin.valueChanged.connect(lambda value, name=name: self._on_edited(name, value))
        self.zero_shot.toggled.connect(lambda on: self._on_edited("zero_shot", on))

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
            models = [
                (i.id, i.label, i.kind, i.available, i.why) for i in infos if i.kind not in BASELINE_KINDS
            ]
            if models != self._shown:  # unchanged: the list, its scroll and its selection stay
                self._fill_list(models)
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

    def _fill_list(self, models: list[tuple[str, str, str, bool, str]]) -> None:
        self._shown = models
        self.variant_list.clear()
        for variant_id, label, kind, available, why in models:
            item = QListWidgetItem(f"{label}  ({KIND_TEXT.get(kind, kind)})")
            item.setData(ID_ROLE, variant_id)
            flags = Qt.ItemFlag.ItemIsUserCheckable
            if available:
                flags |= Qt.ItemFlag.ItemIsEnabled
            item.setFlags(flags)
            item.setToolTip(why if not available else "")
            self.variant_list.addItem(item)

    def _apply_checks(self) -> None:
        """Every available model checked but the ones the user unchecked; unavailable ones unchecked."""
        skipped = set(self._settings.skipped) if self._settings is not None else set()
        for item in self._items():
            available = bool(item.flags() & Qt.ItemFlag.ItemIsEnabled)
            on = available and item.data(ID_ROLE) not in skipped
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    # -- reading ----------------------------------------------------------------------------
    def _items(self) -> list[QListWidgetItem]:
        return [self.variant_list.item(i) for i in range(self.variant_list.count())]

    def checked_ids(self) -> list[str]:
        return [i.data(ID_ROLE) for i in self._items() if i.checkState() == Qt.CheckState.Checked]

    def set_checked(self, variant_id: str, on: bool) -> None:
        """Check or uncheck one variant as the user would."""
        for item in self._items():
            if item.data(ID_ROLE) == variant_id:
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    @Slot(QListWidgetItem)
    def _on_variant_checked(self, item: QListWidgetItem) -> None:
        """One model (un)checked: only its id in ``skipped`` changes; the list is left as it is."""
        if self._filling or self._settings is None:
            return
        variant_id = item.data(ID_ROLE)
        skipped = [i for i in self._settings.skipped if i != variant_id]
        if item.checkState() != Qt.CheckState.Checked:
            skipped.append(variant_id)
        self._settings.skipped = skipped
        self.changed.emit()

    def _on_edited(self, name: str, value: Any) -> None:
        if self._filling or self._settings is None:
            return
        setattr(self._settings, name, value)
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
NO_PROJECT = "Open or create a project first: evaluations are kept in the project."
NO_MODEL = "Load a model first: the base model is the first variant, and the baselines prompt it."
NO_TEST = "The test share is 0, so no rows are held out to score: set one in the Fine-tuning method step."


def blocker(project: Any, loaded: Any, test_rows: int | None, kfold: bool = False) -> tuple[str, str | None]:
    """Why the evaluation (or k-fold, which cuts its own folds and never uses the test share) cannot
    run now, and the step that fixes it: ("", None) when it can."""
    if project is None:
        return NO_PROJECT, None
    if not kfold and (project.finetune.test_ratio <= 0 or test_rows == 0):
        return NO_TEST, "method"
    if loaded is None:
        return NO_MODEL, "load"
    return "", None


def scope_job(params: Any, ctx: Any) -> Any:
    """core.finetune.data_check on the project's data: its ``split`` counts the test rows."""
    from core.finetune import data_check

    return data_check.run(params, ctx)


def scope_params(project: Any) -> Any:
    """The data check's params for the project's dataset and split (None: no project); no dataset
    chosen means the bundled instruction set, as in the Train step."""
    from core.finetune.data_check import DataCheckParams
    from core.finetune.runs import dataset_path

    if project is None:
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
