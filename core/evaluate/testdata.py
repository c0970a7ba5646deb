"""The rows every variant is scored on: the test split of the project's dataset, and its training rows.

The split is the Train step's own (core.finetune.rundata.data_split with the project's seed and
ratios), so the test rows are the ones no fine-tuning run of these settings trained on; the training
rows are what the few-shot and RAG baselines may draw on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import QuantTuneError
from core.evaluate.generation import PLAIN_TEXT
from core.evaluate.results import EvalExample

ROLES = {"classification": ("text", "label"), "causal_lm": ("text",)}  # columns a task reads


@dataclass
class TestData:
    task: str  # the project's task: instruction, classification, qa, summarization, causal_lm
    examples: list[EvalExample]  # the scored test rows, in the split's order
    turns: list[list[dict]]  # each example's prompt as chat turns (classification: the text alone)
    labels: list[str] = field(default_factory=list)  # classification: every class, sorted
    train_items: list[tuple[list[dict], str]] = field(default_factory=list)  # training rows: (turns, answer)
    test_rows_total: int = 0  # the whole test split, before max_examples cut it


def load_test_data(finetune: Any, loaded: Any, max_examples: int = 0) -> TestData:
    """The test split of the project's FinetuneSettings (``max_examples`` > 0 keeps the first ones);
    no dataset chosen means the bundled instruction set, as in the Train step."""
    from dataclasses import replace

    from core.finetune.rundata import checked_table, data_split
    from core.finetune.runs import train_params

    # rows with problems are left out, as a run that trains on this file leaves them out
    params = replace(train_params(finetune, loaded, Path("(evaluate)")), drop_bad_rows=True)
    table, shape, bad = checked_table(params)
    missing = [role for role in ROLES.get(finetune.task, ()) if role not in shape.mapping]
    if missing:
        raise QuantTuneError(
            f"The task {finetune.task} reads a {' and a '.join(missing)} column, and "
            f"{Path(params.dataset).name} has none.",
            "Choose the task that fits the data, or map its columns, in the Fine-tuning method step.",
        )
    split = data_split(params, table, shape, bad)
    if not split.test:
        raise QuantTuneError(
            "The test share is 0, so no rows are held out to score.",
            "Set a test share (e.g. 10 %) in the Fine-tuning method step.",
        )
    rows = split.test[:max_examples] if max_examples > 0 else split.test
    task = finetune.task  # the project's: qa and summarization are scored as such, not as instructions
    data = _rows_of(table, shape, task, rows)
    if task == "classification":
        from core.finetune.classify import label_names

        data.labels = label_names(table, shape, bad)
    data.train_items = [item for _, item in items(table, shape, task, split.train)]
    data.test_rows_total = len(split.test)
    return data


def _rows_of(table: Any, shape: Any, task: str, rows: list[int]) -> TestData:
    examples, turns = [], []
    for row, (prompt_turns, answer) in items(table, shape, task, rows):
        examples.append(EvalExample(row=row, prompt=prompt_turns[-1]["content"], reference=answer))
        turns.append(prompt_turns)
    return TestData(task, examples, turns)


def items(table: Any, shape: Any, task: str, rows: list[int]):
    """(row, (turns, answer)) for each of ``rows``: what a model is asked and what it should say."""
    from core.finetune.batches import prompt_and_answer

    for row in rows:
        record = table.dataset[row]
        if task == "classification":
            text = str(record[shape.mapping["text"]])
            yield row, ([{"role": "user", "content": text}], str(record[shape.mapping["label"]]))
        elif task == "causal_lm":
            text = str(record[shape.mapping["text"]])
            cut = _opening(text)
            yield row, ([{"role": PLAIN_TEXT, "content": cut}], text[len(cut) :].strip())
        else:
            yield row, prompt_and_answer(record, shape)


def _opening(text: str, words: int = 16) -> str:
    """The start of a plain text that a model continues (domain text has no prompt of its own)."""
    parts = text.split(" ")
    return " ".join(parts[: min(words, max(1, len(parts) // 2))])
