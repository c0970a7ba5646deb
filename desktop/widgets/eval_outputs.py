"""The Evaluate step's output inspection: every test example's input, reference and each variant's
output side by side, tinted red where the task's rule calls the output wrong and green where right,
filterable to the rows that matter (variants disagree, a variant is wrong, marked) and searchable.
Plain-text tasks have no right or wrong: nothing is tinted and there is no "wrong" filter.

Selecting a cell shows the full texts below the table with the word differences from the reference
highlighted; "Good" and "Bad" (keys G and B) keep the user's verdict on the selected output in the
project. A table model (desktop.widgets.eval_outputs_model) serves the cells on demand, so 500
examples × 8 variants shows at once.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QItemSelectionModel, Qt, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from core.evaluate import metrics, textdiff
from core.evaluate.results import Evaluation
from core.evaluate.runs import mark_of, set_mark
from desktop.widgets.eval_outputs_model import FIXED, INPUT, OutputsModel, judged, output_at, wrong_of

FILTERS = (("all", "All rows"), ("disagree", "Rows where the variants disagree"),
           ("any_wrong", "Rows where any variant is wrong"), ("marked", "Rows with a mark"))  # fmt: skip
WRONG_OF = "wrong:"  # filter key prefix: rows where one variant (its id follows) is wrong
LEGEND = (
    f'Words <span style="{textdiff.ADDED_STYLE}">added</span> are in the output but not the reference; '
    f'<span style="{textdiff.MISSING_STYLE}">missing</span> ones are in the reference only.'
)


class OutputsView(QWidget):
    """``show_evaluation(evaluation, project)``; ``marked(variant id, dataset row, mark)`` when the user
    marks an output ("good", "bad", or "" for cleared): the mark is in ``project.evaluate.marks``
    already, the receiver saves the project."""

    marked = Signal(str, int, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.evaluation: Evaluation | None = None
        self.project: Any = None
        self._disagree: list[bool] = []
        self.model = OutputsModel(self)
        self.table = self._build_table()
        self.filter_box = QComboBox()
        self.filter_box.currentIndexChanged.connect(self._apply_filter)
        self.search = QLineEdit(
            placeholderText="Search inputs, references and outputs", clearButtonEnabled=True
        )
        self.search.textChanged.connect(self._apply_filter)
        self.count_label = QLabel(objectName="hint")
        self.detail = QTextBrowser(openLinks=False)
        self.good_button = QPushButton("✓ Good (G)", toolTip="Mark the selected output good (again: clear)")
        self.bad_button = QPushButton("✗ Bad (B)", toolTip="Mark the selected output bad (again: clear)")
        self.good_button.clicked.connect(lambda: self.mark_selected("good"))
        self.bad_button.clicked.connect(lambda: self.mark_selected("bad"))
        for key, mark in (("G", "good"), ("B", "bad")):
            shortcut = QShortcut(QKeySequence(key), self.table, context=Qt.ShortcutContext.WidgetShortcut)
            shortcut.activated.connect(lambda m=mark: self.mark_selected(m))
        self.mark_hint = QLabel(objectName="hint")
        self._lay_out()
        self.show_evaluation(None, None)

    def _build_table(self) -> QTableView:
        table = QTableView()
        table.setModel(self.model)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectItems)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setWordWrap(False)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)
        table.verticalHeader().hide()
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 10)
        table.horizontalHeader().setStretchLastSection(False)
        table.selectionModel().currentChanged.connect(self._on_current)
        return table

    def _lay_out(self) -> None:
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Show"))
        bar.addWidget(self.filter_box)
        bar.addWidget(self.search, 1)
        bar.addWidget(self.count_label)
        below = QWidget()
        below_layout = QVBoxLayout(below)
        below_layout.setContentsMargins(0, 0, 0, 0)
        marks = QHBoxLayout()
        marks.addWidget(self.good_button)
        marks.addWidget(self.bad_button)
        marks.addWidget(self.mark_hint, 1)
        below_layout.addLayout(marks)
        below_layout.addWidget(self.detail, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(below)
        splitter.setSizes([400, 260])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(bar)
        layout.addWidget(splitter, 1)

    # -- showing --------------------------------------------------------------------------
    def show_evaluation(self, evaluation: Evaluation | None, project: Any) -> None:
        """Show an evaluation's outputs with ``project``'s marks (None: nothing to show or mark)."""
        self.evaluation, self.project = evaluation, project
        variants = evaluation.variants if evaluation else []
        count = len(evaluation.examples) if evaluation else 0
        wrong = [[wrong_of(evaluation, v, i) for i in range(count)] for v in variants]
        self._disagree = [
            textdiff.disagree([v.outputs[i] for v in variants if i < len(v.outputs)]) for i in range(count)
        ]
        marks: dict[tuple[int, int], str] = {}
        if project is not None:
            for vi, v in enumerate(variants):
                for i, e in enumerate(evaluation.examples[: len(v.outputs)]):
                    mark = mark_of(project, v.id, e.row, v.outputs[i])
                    if mark:
                        marks[(vi, i)] = mark
        self.model.set_evaluation(evaluation, wrong, marks)
        self._fill_filters(variants if judged(evaluation) else None)
        self._size_columns(len(variants))
        self._apply_filter()

    def _fill_filters(self, variants: list | None) -> None:
        """The filters; None where the task has no right or wrong (plain text): no "wrong" filters."""
        keep = self.filter_box.currentData()
        self.filter_box.blockSignals(True)
        self.filter_box.clear()
        for key, text in FILTERS[: 3 if variants is not None else 2]:
            self.filter_box.addItem(text, key)
        for v in variants or []:
            self.filter_box.addItem(f"Rows where {v.label} is wrong", WRONG_OF + v.id)
        self.filter_box.addItem(FILTERS[3][1], FILTERS[3][0])
        found = self.filter_box.findData(keep)
        self.filter_box.setCurrentIndex(max(found, 0))
        self.filter_box.blockSignals(False)

    def _size_columns(self, variants: int) -> None:
        header = self.table.horizontalHeader()
        for column, width in enumerate((56, 280, 200) + (220,) * variants):
            header.resizeSection(column, width)

    # -- filtering ------------------------------------------------------------------------
    def set_filter(self, key: str) -> None:
        """ "all", "disagree", "any_wrong", "marked" or "wrong:<variant id>"."""
        index = self.filter_box.findData(key)
        if index < 0:
            raise ValueError(f"no filter {key!r}")
        self.filter_box.setCurrentIndex(index)

    def shown_rows(self) -> list[int]:
        """The dataset rows of the examples the table shows, in order."""
        return [self.evaluation.examples[i].row for i in self.model.shown] if self.evaluation else []

    @Slot()
    def _apply_filter(self) -> None:
        if self.evaluation is None:
            self.model.set_shown([])
            self.count_label.setText("")
            self._show_detail()
            return
        keep = self._current_cell()
        accept, needle = self._filter_test(), self.search.text().strip().casefold()
        shown = [i for i in range(len(self.evaluation.examples)) if accept(i) and self._matches(i, needle)]
        self.model.set_shown(shown)
        self.count_label.setText(f"{len(shown)} of {len(self.evaluation.examples)} rows")
        if keep is not None and keep[0] in shown:
            self._select(shown.index(keep[0]), keep[1])
        self._show_detail()

    def _filter_test(self) -> Any:
        key = self.filter_box.currentData() or "all"
        wrong, marks = self.model.wrong, self.model.marks
        if key == "disagree":
            return lambda i: self._disagree[i]
        if key == "any_wrong":
            return lambda i: any(w[i] for w in wrong)
        if key == "marked":
            return lambda i: any((v, i) in marks for v in range(len(wrong)))
        if key.startswith(WRONG_OF):
            ids = [v.id for v in self.evaluation.variants]
            column = wrong[ids.index(key.removeprefix(WRONG_OF))]
            return lambda i: bool(column[i])
        return lambda i: True

    def _matches(self, example: int, needle: str) -> bool:
        if not needle:
            return True
        e = self.evaluation.examples[example]
        texts = [e.prompt, e.reference, *(output_at(v, example) for v in self.evaluation.variants)]
        return any(needle in t.casefold() for t in texts)

    # -- selection and detail ---------------------------------------------------------------
    def select(self, row: int, variant_id: str | None = None) -> None:
        """Select a dataset row's cell: that variant's output, or the input when ``variant_id`` is None."""
        example = next(i for i, e in enumerate(self.evaluation.examples) if e.row == row)
        column = INPUT
        if variant_id is not None:
            column = len(FIXED) + [v.id for v in self.evaluation.variants].index(variant_id)
        self._select(self.model.shown.index(example), column)

    def _select(self, table_row: int, column: int) -> None:
        index = self.model.index(table_row, column)
        self.table.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        self.table.scrollTo(index)

    def _current_cell(self) -> tuple[int, int] | None:
        """(example index, column) of the selected cell."""
        index = self.table.selectionModel().currentIndex()
        if not index.isValid() or index.row() >= len(self.model.shown):
            return None
        return self.model.shown[index.row()], index.column()

    def _selected_output(self) -> tuple[int, int] | None:
        """(variant index, example index) when the selected cell is a variant's output."""
        cell = self._current_cell()
        if cell is None or cell[1] < len(FIXED):
            return None
        variant = cell[1] - len(FIXED)
        has_output = cell[0] < len(self.evaluation.variants[variant].outputs)
        return (variant, cell[0]) if has_output else None

    @Slot()
    def _on_current(self, *_args: Any) -> None:
        self._show_detail()

    def _show_detail(self) -> None:
        cell, output = self._current_cell(), self._selected_output()
        can_mark = output is not None and self.project is not None
        self.good_button.setEnabled(can_mark)
        self.bad_button.setEnabled(can_mark)
        if self.evaluation is None:
            self.mark_hint.setText("")
            self.detail.setHtml("<p>No evaluation yet: run one to see every variant's outputs here.</p>")
            return
        if cell is None:
            self.mark_hint.setText("Select an output to mark it good or bad.")
            self.detail.setHtml("<p>Select a cell to see the full texts and how each output differs.</p>")
            return
        if output is None:
            self.mark_hint.setText("Select a variant's output (not the input) to mark it.")
        elif self.project is None:
            self.mark_hint.setText("Open a project to keep marks.")
        else:
            self.mark_hint.setText("Your marks are kept in the project.")
        variants = [output[0]] if output else range(len(self.evaluation.variants))
        self.detail.setHtml(self.detail_html(cell[0], variants))

    def detail_html(self, example: int, variants: Any) -> str:
        """The example's full input and reference, then each listed variant's output with its word
        differences from the reference, its mark and its per-example scores."""
        e, ev = self.evaluation.examples[example], self.evaluation
        parts = [
            f"<p><b>Row {e.row + 1} of the file</b> · input</p>{_pre(e.prompt)}",
            f"<p><b>Reference</b></p>{_pre(e.reference) if e.reference else '<p><i>none</i></p>'}",
        ]
        for vi in variants:
            v = ev.variants[vi]
            mark = self.model.marks.get((vi, example))
            title = f"<b>{html.escape(v.label)}</b>" + (f" · marked {mark}" if mark else "")
            if example >= len(v.outputs):
                parts.append(f"<p>{title}</p><p><i>{html.escape(v.error or 'No output')}</i></p>")
                continue
            scores = _scores_text(v.example_scores[example] if example < len(v.example_scores) else {})
            body = (
                textdiff.diff_html(e.reference, v.outputs[example])
                if e.reference
                else _pre(v.outputs[example])
            )
            parts.append(f"<p>{title}{scores}</p><div>{body}</div>")
        if e.reference:
            parts.append(f"<p style='color:#6b7078'>{LEGEND}</p>")
        return "".join(parts)

    # -- marking ----------------------------------------------------------------------------
    def mark_selected(self, mark: str) -> None:
        """Mark the selected output "good" or "bad"; the same mark again clears it."""
        cell = self._selected_output()
        if cell is None or self.project is None:
            return
        vi, example = cell
        variant, row = self.evaluation.variants[vi], self.evaluation.examples[example].row
        new = None if self.model.marks.get(cell) == mark else mark
        set_mark(self.project, variant.id, row, variant.outputs[example], new)
        self.model.set_mark(vi, example, new)
        self._show_detail()
        self.marked.emit(variant.id, row, new or "")


def _pre(text: str) -> str:
    return f'<span style="white-space:pre-wrap;">{html.escape(text)}</span>'


def _scores_text(scores: dict[str, float]) -> str:
    shown = [
        f"{html.escape(metrics.METRICS[k].title if k in metrics.METRICS else k)} {metrics.format_value(k, v)}"
        for k, v in scores.items()
        if v is not None
    ]
    return f" <span style='color:#6b7078'>· {' · '.join(shown)}</span>" if shown else ""


def _preview_evaluation(count: int = 40) -> Evaluation:
    """The bundled planets questions with made-up outputs of five variants, scored for real."""
    import json
    import random

    from core.evaluate.results import EvalExample, VariantResult
    from core.finetune.runs import bundled_dataset

    lines = bundled_dataset("qa-planets.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    rows = [json.loads(line) for line in lines]
    examples = [EvalExample(i, f"Question: {r['question']}\nContext: {r['context']}", r["answer"])
                for i, r in enumerate(rows)]  # fmt: skip
    rng = random.Random(0)
    styles = {  # variant -> (chance of the exact answer, how it words the rest)
        ("base", "Base model", "base"): (0.3, "The answer is {a}, I think."),
        ("quant:int4", "INT4 group-64 GPTQ", "quantized"): (0.25, "It is {a}"),
        ("train:lora", "LoRA r8 · qa-planets", "finetuned"): (0.8, "{a} planet"),
        ("few-shot", "Few-shot prompting", "few-shot"): (0.5, "Answer: {a}"),
        ("rag", "RAG (BM25)", "rag"): (0.6, "{a}, according to the text."),
    }
    variants = []
    for (vid, label, kind), (exact, wording) in styles.items():
        outputs = [r["answer"] if rng.random() < exact else wording.format(a=rng.choice(rows)["answer"])
                   for r in rows]  # fmt: skip
        scores, per_example, _missing, _extras = metrics.score_outputs(
            "qa", [e.reference for e in examples], outputs
        )
        variants.append(VariantResult(vid, label, kind, scores, outputs, per_example))
    return Evaluation("preview", "2025-01-01T00:00:00", "qa", "bundled:qa-planets.jsonl",
                      list(metrics.TASK_METRICS["qa"]), examples, variants)  # fmt: skip


if __name__ == "__main__":  # preview: python -m desktop.widgets.eval_outputs
    import sys
    import tempfile

    from core.project import create_project
    from desktop.preview import preview

    def _make(_session: Any, folder: str) -> OutputsView:
        view = OutputsView()
        view.show_evaluation(_preview_evaluation(), create_project("Outputs preview", folder))
        return view

    with tempfile.TemporaryDirectory() as tmp:
        sys.exit(preview(lambda session: _make(session, tmp), (1300, 800)))
