"""The data of a fine-tuning run: which file (a bundled sample or the user's), the task, the
columns' roles, a preview, every row's problems, the token lengths against the maximum length,
and the train / validation / test split.

The box edits a core FinetuneSettings in place and emits ``changed``; reading and checking the
file is a core job (core.finetune.data_check) it runs through the job runner, again whenever
the file, task, mapping, split or model changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from desktop import dialogs
from desktop.jobs import JobHandle, JobRunner
from desktop.latest_job import LatestJob
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.tables import read_only_table

TASKS = (
    ("instruction", "Instruction / chat tuning", "Answers to prompts; the loss is on the answer tokens only"),
    ("causal_lm", "Domain adaptation (plain text)", "Continued pre-training: the model learns whole texts"),
    ("classification", "Text classification", "A new head picks one label per text"),
    ("qa", "Question answering", "Answers to questions about a context, generated"),
    ("summarization", "Summarisation", "A summary of each document, generated"),
)
DATA_FILTER = "Datasets (*.jsonl *.json *.csv *.parquet *.txt);;All files (*)"
CHOOSE = "Choose a file…"
PROBLEM_COLUMNS = ("Row", "Column", "Problem")
LISTED_PROBLEMS = 500  # the table lists this many; the count covers them all


def _check_job(params: Any, ctx) -> Any:
    from core.finetune import data_check

    return data_check.run(params, ctx)


class DataBox(QGroupBox):
    """Signals: ``changed()`` after an edit to the settings; ``checked(object)`` with each
    finished core.finetune.data_check.DataCheck (None while none is valid)."""

    changed = Signal()
    checked = Signal(object)

    def __init__(self, runner: JobRunner, parent: QWidget | None = None) -> None:
        super().__init__("Data", parent)
        self.runner = runner
        self.settings: Any = None  # core.project.FinetuneSettings
        self.tokenizer: Any = None
        self.result: Any = None  # the last DataCheck
        self.failed = False  # the last check could not read the data
        self._stale = True  # the settings changed while the box was hidden
        self.job = LatestJob(runner, _check_job, "Checking the data", self._check_params, 0, self)
        self.job.started.connect(self._on_check_started)
        self.job.succeeded.connect(self._on_checked)
        self.job.failed.connect(self._on_check_failed)
        self._build()

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        from core.finetune.runs import BUNDLED, BUNDLED_PREFIX

        self.dataset = QComboBox()
        for name, (title, _task) in BUNDLED.items():
            self.dataset.addItem(title, BUNDLED_PREFIX + name)
        self.dataset.addItem(CHOOSE, "")
        self.dataset.activated.connect(self._on_dataset_picked)
        self.task = QComboBox()
        for key, text, tip in TASKS:
            self.task.addItem(text, key)
            self.task.setItemData(self.task.count() - 1, tip, 3)  # Qt.ToolTipRole
        self.task.activated.connect(self._on_task_picked)
        self.shape_label = QLabel(wordWrap=True)
        self.map_button = QPushButton("Change column roles…")
        self.map_button.setCheckable(True)
        self.mapping = _MappingRow()
        self.mapping.hide()
        self.map_button.toggled.connect(self.mapping.setVisible)
        self.mapping.applied.connect(self._on_mapping)
        self.error_panel = ErrorPanel()
        self.preview = read_only_table(["(no data)"], single=False)
        self.problems = read_only_table(PROBLEM_COLUMNS, single=False)
        self.lengths_holder = QWidget()
        QVBoxLayout(self.lengths_holder).setContentsMargins(0, 0, 0, 0)
        self.lengths: Any = None  # LengthHistogram, built on first use (pyqtgraph)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.preview, "Preview")
        self.tabs.addTab(self.problems, "Problems")
        self.tabs.addTab(self.lengths_holder, "Token lengths")
        self.tabs.setMinimumHeight(200)
        self.tabs.setMaximumHeight(280)
        grid = QGridLayout()
        grid.addWidget(QLabel("Dataset"), 0, 0)
        grid.addWidget(self.dataset, 0, 1)
        grid.addWidget(QLabel("Task"), 0, 2)
        grid.addWidget(self.task, 0, 3)
        grid.setColumnStretch(1, 2)
        grid.setColumnStretch(3, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        shape_row = QHBoxLayout()
        shape_row.addWidget(self.shape_label, 1)
        shape_row.addWidget(self.map_button)
        layout.addLayout(shape_row)
        layout.addWidget(self.mapping)
        layout.addLayout(self._split_row())
        layout.addWidget(self.error_panel)
        layout.addWidget(self.tabs, 1)

    def _split_row(self) -> QHBoxLayout:
        self.max_length = QSpinBox(minimum=16, maximum=32768, singleStep=64, value=512)
        self.max_length.setToolTip("Rows longer than this many tokens are cut; longer costs more memory")
        self.validation = _percent("Rows kept aside to watch the validation loss while training")
        self.test = _percent("Rows kept aside for the Evaluate step: training never sees them")
        self.seed = QSpinBox(minimum=0, maximum=999_999)
        self.seed.setToolTip("The shuffle behind the split and the batch order: the same seed, the same run")
        self.drop_bad = QCheckBox("Leave out rows with problems")
        self.split_label = QLabel(objectName="hint")
        for box in (self.max_length, self.seed):
            box.editingFinished.connect(self._on_split_edited)
        for box in (self.validation, self.test):
            box.editingFinished.connect(self._on_split_edited)
        self.drop_bad.toggled.connect(self._on_split_edited)
        row = QHBoxLayout()
        for text, widget in (("Max length", self.max_length), ("Validation", self.validation),
                             ("Test", self.test), ("Seed", self.seed)):  # fmt: skip
            row.addWidget(QLabel(text))
            row.addWidget(widget)
        row.addWidget(self.drop_bad)
        row.addWidget(self.split_label, 1)
        return row

    # -- mirroring the settings -----------------------------------------------------------
    def set_settings(self, settings: Any) -> None:
        self.settings = settings
        path = settings.dataset or self.dataset.itemData(0)
        index = self.dataset.findData(path)
        if index < 0:
            self.dataset.insertItem(self.dataset.count() - 1, Path(path).name, path)
            index = self.dataset.findData(path)
        self.dataset.setCurrentIndex(index)
        self.task.setCurrentIndex(max(0, self.task.findData(settings.task)))
        self.max_length.setValue(settings.max_length)
        self.validation.setValue(100 * settings.validation_ratio)
        self.test.setValue(100 * settings.test_ratio)
        self.seed.setValue(settings.seed)
        self.drop_bad.blockSignals(True)
        self.drop_bad.setChecked(settings.drop_bad_rows)
        self.drop_bad.blockSignals(False)
        self.check()

    def set_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.check()

    @Slot(int)
    def _on_dataset_picked(self, index: int) -> None:
        path = self.dataset.itemData(index)
        if not path:
            chosen = dialogs.choose_file(self, "Choose a dataset", DATA_FILTER)
            if chosen is None:
                self.set_settings(self.settings)  # back to the current file
                return
            path = str(chosen)
        from core.finetune.runs import BUNDLED, BUNDLED_PREFIX

        self.settings.dataset, self.settings.columns = path, {}
        bundled = {BUNDLED_PREFIX + name: task for name, (_t, task) in BUNDLED.items()}
        if path in bundled:  # a sample comes with its task
            self.settings.task = bundled[path]
        self._edited()

    @Slot(int)
    def _on_task_picked(self, _index: int) -> None:
        self.settings.task = self.task.currentData()
        self._edited()

    @Slot(dict)
    def _on_mapping(self, mapping: dict) -> None:
        self.settings.columns = mapping
        self._edited()

    @Slot()
    def _on_split_edited(self) -> None:
        s = self.settings
        new = (self.max_length.value(), self.validation.value() / 100, self.test.value() / 100,
               self.seed.value(), self.drop_bad.isChecked())  # fmt: skip
        if new == (s.max_length, s.validation_ratio, s.test_ratio, s.seed, s.drop_bad_rows):
            return
        length_only = new[1:] == (s.validation_ratio, s.test_ratio, s.seed, s.drop_bad_rows)
        s.max_length, s.validation_ratio, s.test_ratio, s.seed, s.drop_bad_rows = new
        if length_only and self.result is not None:
            self._show_lengths()
            self.changed.emit()
            return
        self._edited()

    def _edited(self) -> None:
        self.set_settings(self.settings)  # re-mirror (a sample's task) and check again
        self.changed.emit()

    # -- checking the data ----------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if self._stale:
            self.check()

    def check(self) -> JobHandle | None:
        """Read and check the data again (once the box is on screen: no job for a hidden step)."""
        self._stale = not self.isVisible()
        return None if self._stale or self.settings is None else self.job.run_now()

    def _check_params(self) -> Any:
        from core.finetune.data_check import DataCheckParams
        from core.finetune.runs import dataset_path

        s = self.settings
        return DataCheckParams(
            dataset_path(s), s.task, tuple(sorted(s.columns.items())), self.tokenizer,
            s.max_length, s.validation_ratio, s.test_ratio, s.seed, s.drop_bad_rows,
        )  # fmt: skip

    @Slot()
    def _on_check_started(self) -> None:
        self.error_panel.dismiss()
        self.shape_label.setText("Reading the data…")

    @Slot(object)
    def _on_checked(self, result: Any) -> None:
        self.result, self.failed = result, False
        self._show_result(result)
        self.checked.emit(result)

    @Slot(object, str)
    def _on_check_failed(self, exc: BaseException, tb: str) -> None:
        """Nothing of the previous file stays on screen: only what is wrong with this one."""
        self.result = None
        self.failed = True
        for widget in (self.shape_label, self.split_label):
            widget.setText("")
        for table in (self.preview, self.problems):
            table.setRowCount(0)
        self.tabs.setTabText(1, "Problems")
        if self.lengths is not None:
            self.lengths.set_lengths([], self.settings.max_length)
        self.error_panel.show_error(exc, tb)
        self.checked.emit(None)

    def _show_result(self, r: Any) -> None:
        from core.finetune.data_check import TASK_NAMES

        self.mapping.set_shape(r.shape, r.columns)
        self.map_button.setChecked(self.map_button.isChecked() or not r.shape.recognised)
        if not r.shape.recognised:
            self.shape_label.setText(
                f"<b>{r.rows} rows</b> with columns {', '.join(r.columns)}: QuantTune does not recognise "
                "this layout. Choose a shape and which column plays each role, then Apply."
            )
        else:
            roles = ", ".join(f"{role} = {column}" for role, column in r.shape.mapping.items())
            labels = f" · labels: {', '.join(f'{k} ({v})' for k, v in r.labels.items())}" if r.labels else ""
            problems = f"<b>{r.bad_rows} rows with problems</b>" if r.bad_rows else "no row problems"
            self.shape_label.setText(
                f"<b>{r.rows} rows</b>, recognised as <b>{r.shape.name.replace('_', ' ')}</b> "
                f"({TASK_NAMES.get(r.shape.task or '', '')}; {roles}) · {problems}{labels}"
            )
        if r.task_warning:
            self.error_panel.show_message(r.task_warning, "Change the task above, or the column mapping.")
        self._fill_preview(r)
        self._fill_problems(r)
        train, val, test = r.split
        self.split_label.setText(f"{train} train · {val} validation · {test} test rows")
        self._show_lengths()

    def _fill_preview(self, r: Any) -> None:
        self.preview.clear()
        self.preview.setColumnCount(len(r.columns))
        self.preview.setHorizontalHeaderLabels(r.columns)
        self.preview.setRowCount(len(r.preview))
        for i, row in enumerate(r.preview):
            for j, column in enumerate(r.columns):
                self.preview.setItem(i, j, QTableWidgetItem(row.get(column, "")))

    def _fill_problems(self, r: Any) -> None:
        listed = r.problems[:LISTED_PROBLEMS]
        self.problems.setRowCount(len(listed))
        for i, p in enumerate(listed):
            for j, text in enumerate((str(p.row or "—"), p.column or "", p.message)):
                self.problems.setItem(i, j, QTableWidgetItem(text))
        count = len(r.problems)
        self.tabs.setTabText(1, f"Problems ({count})" if count else "Problems")

    def _show_lengths(self) -> None:
        if self.lengths is None:
            from desktop.widgets.length_histogram import LengthHistogram

            self.lengths = LengthHistogram()
            self.lengths_holder.layout().addWidget(self.lengths)
        lengths = self.result.lengths if self.result is not None else []
        self.lengths.set_lengths(lengths, self.settings.max_length)

    def problems_text(self) -> str:
        """What stands between this data and training ("" when nothing does)."""
        r = self.result
        if r is None:
            return "The data could not be read."
        if not r.shape.recognised:
            return "Map the data's columns to roles first."
        if r.task_warning:
            return r.task_warning
        if r.bad_rows and not self.settings.drop_bad_rows:
            return f"{r.bad_rows} rows have problems: fix them, or tick “Leave out rows with problems”."
        return ""


def _percent(tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox(minimum=0.0, maximum=45.0, decimals=0, suffix=" %", singleStep=5.0)
    box.setToolTip(tip)
    return box


class _MappingRow(QWidget):
    """A shape and, for each of its roles, the column that plays it; ``applied(dict)`` on Apply."""

    applied = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from core.data.formats import SPECS

        self.shape = QComboBox()
        for name in SPECS:
            self.shape.addItem(name.replace("_", " "), name)
        self.shape.activated.connect(self._rebuild_roles)
        self.roles_row = QHBoxLayout()
        self.apply_button = QPushButton("Apply mapping")
        self.apply_button.clicked.connect(self._apply)
        self.columns: list[str] = []
        self.combos: dict[str, QComboBox] = {}
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Columns as"))
        layout.addWidget(self.shape)
        layout.addLayout(self.roles_row)
        layout.addWidget(self.apply_button)
        layout.addStretch(1)

    def set_shape(self, shape: Any, columns: list[str]) -> None:
        self.columns = list(columns)
        if shape.recognised:
            self.shape.setCurrentIndex(self.shape.findData(shape.name))
        self._rebuild_roles(mapping=shape.mapping)

    @Slot()
    def _rebuild_roles(self, _index: int = 0, mapping: dict | None = None) -> None:
        from core.data.formats import SPECS

        while self.roles_row.count():
            widget = self.roles_row.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        self.combos = {}
        for role, spec in SPECS[self.shape.currentData()].roles.items():
            combo = QComboBox()
            combo.addItem("—" if not spec.required else "(choose)", "")
            for column in self.columns:
                combo.addItem(column, column)
            combo.setCurrentIndex(max(0, combo.findData((mapping or {}).get(role, ""))))
            self.roles_row.addWidget(QLabel(role))
            self.roles_row.addWidget(combo)
            self.combos[role] = combo

    def _apply(self) -> None:
        self.applied.emit({role: combo.currentData() for role, combo in self.combos.items()})
