"""The Fine-tuning method step's look at a dataset before training: its shape and column mapping,
a preview, every row's problems, the token length of each row against the maximum length, the
labels, and how the split divides it. ``run(params, ctx) -> DataCheck``: a job, since tokenizing
a large file takes a while; the Train job re-reads the file and trusts none of this.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data.formats import RowProblem, Shape, Table, detect_shape, read_rows, validate_rows
from core.data.splits import split_rows
from core.errors import QuantTuneError
from core.jobs import JobContext

PREVIEW_ROWS = 20
PREVIEW_CHARS = 200
TASK_NAMES = {"instruction": "instruction / chat", "causal_lm": "domain adaptation (plain text)",
              "classification": "text classification", "qa": "question answering",
              "summarization": "summarisation"}  # fmt: skip


@dataclass(frozen=True)
class DataCheckParams:
    dataset: Path
    task: str = "instruction"
    columns: tuple[tuple[str, str], ...] = ()  # role -> column, where the user mapped them
    tokenizer: Any = None  # None: no token lengths
    max_length: int = 512
    validation_ratio: float = 0.1
    test_ratio: float = 0.1
    seed: int = 0
    drop_bad_rows: bool = False

    def validate(self) -> list[str]:
        problems = []
        if not Path(self.dataset).is_file():
            problems.append(f"there is no file at {self.dataset}")
        if self.task not in TASK_NAMES:
            problems.append(f"unknown task {self.task!r}")
        return problems


@dataclass
class DataCheck:
    rows: int
    columns: list[str]
    shape: Shape
    preview: list[dict[str, str]]
    problems: list[RowProblem]  # every row problem, then the dataset's own (e.g. too small)
    bad_rows: int
    lengths: list[int] = field(default_factory=list)  # tokens per usable row
    labels: dict[str, int] = field(default_factory=dict)
    split: tuple[int, int, int] = (0, 0, 0)  # train, validation, test rows
    task_warning: str = ""

    def count_over(self, max_length: int) -> int:
        return sum(n > max_length for n in self.lengths)


def run(params: DataCheckParams, ctx: JobContext) -> DataCheck:
    ctx.stage("Reading the data")
    table = read_rows(params.dataset)
    shape = detect_shape(table.columns, table.head(20))
    if params.columns:
        shape = shape.mapped(dict(params.columns))
    preview = [_preview_row(row) for row in table.rows(PREVIEW_ROWS)]
    if not shape.recognised:
        return DataCheck(len(table), table.columns, shape, preview, [], 0)
    ctx.stage("Checking every row")
    problems = validate_rows(table, shape)
    bad = {p.row - 1 for p in problems if p.row is not None}
    keep = [i for i in range(len(table)) if i not in bad]
    check = DataCheck(len(table), table.columns, shape, preview, problems, len(bad),
                      task_warning=_task_warning(shape, params.task))  # fmt: skip
    labels = _labels(table, shape, keep) if shape.name == "classification" else None
    check.labels = dict(sorted(Counter(labels).items())) if labels else {}
    strat = labels if params.task == "classification" else None
    split = split_rows(len(keep), params.seed, params.validation_ratio, params.test_ratio, strat)
    check.split = (len(split.train), len(split.validation), len(split.test))
    if params.tokenizer is not None and not check.task_warning:
        ctx.stage("Counting tokens")
        check.lengths = token_lengths(table.subset(keep), shape, params.tokenizer, params.task, ctx)
    return check


def _preview_row(row: dict) -> dict[str, str]:
    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else repr(value)
        return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"

    return {column: cell(value) for column, value in row.items()}


def _labels(table: Table, shape: Shape, keep: list[int]) -> list[str]:
    return [str(v) for v in table.dataset.select(keep)[shape.mapping["label"]]]


def _task_warning(shape: Shape, task: str) -> str:
    if task == "causal_lm":
        return "" if "text" in shape.mapping else "Plain-text training needs a text column: map one to text."
    fits = {"classification": ("classification",), "instruction": ("instruction", "qa", "summarization"),
            "qa": ("qa", "instruction"), "summarization": ("summarization", "instruction")}[task]  # fmt: skip
    if shape.task in fits:
        return ""
    return (f"These rows look like {TASK_NAMES.get(shape.task or '', shape.name)} data, not "
            f"{TASK_NAMES[task]}: choose that task, or map the columns again.")  # fmt: skip


def token_lengths(table: Table, shape: Shape, tokenizer: Any, task: str, ctx: JobContext) -> list[int]:
    """Tokens per row, as training would see them before the cut to the maximum length."""
    from core.finetune.batches import encode_instruction, prompt_and_answer

    lengths = []
    for number, row in enumerate(table.rows()):
        if number % 64 == 0:
            ctx.check_cancelled()
        if task in ("causal_lm", "classification"):
            lengths.append(len(tokenizer(row[shape.mapping["text"]])["input_ids"]))
            continue
        try:
            turns, answer = prompt_and_answer(row, shape)
        except QuantTuneError:
            continue
        lengths.append(len(encode_instruction(tokenizer, turns, answer)[0]))
    return lengths
