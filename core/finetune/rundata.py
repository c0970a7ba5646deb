"""A training run's data: the file read and checked, split into train, validation and test rows
(recorded in ``output/split.json`` for the Evaluate step), encoded to examples; and what a resume
checks it against: each epoch's row order, a function of the seed, and a fingerprint of the examples.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import write_json
from core.data.formats import Shape, Table, detect_shape, read_rows, validate_rows
from core.data.splits import Split, split_rows
from core.errors import QuantTuneError
from core.finetune import classify
from core.finetune.batches import Example, encode_table

if TYPE_CHECKING:
    from core.finetune.train import TrainParams

SPLIT = "split.json"  # which rows of the file went to train, validation and test


def load_examples(
    params: TrainParams, tokenizer: Any, write_split: bool = True
) -> tuple[list[Example], list[Example], int, list[str]]:
    """Training and validation examples, rows cut to the maximum length, and the class labels (or []);
    with ``write_split`` the split is recorded in the run's output folder."""
    table, shape, bad = checked_table(params)
    split = data_split(params, table, shape, bad)
    if write_split:
        write_json(Path(params.output) / SPLIT, {"dataset": str(params.dataset), **split.to_dict()})
    labels = []
    if params.task == "classification":
        labels = sorted(set(params.labels)) or classify.label_names(table, shape, bad)
        encoded = [classify.encode_table(table.subset(rows), shape, tokenizer, labels, params.max_length)
                   for rows in (split.train, split.validation)]  # fmt: skip
    else:
        encoded = [encode_table(table.subset(rows), shape, tokenizer, params.task, params.max_length)
                   for rows in (split.train, split.validation)]  # fmt: skip
    train, val = encoded[0].examples, encoded[1].examples
    if not train:
        dropped = encoded[0].dropped
        cut = f" ({dropped} lost their whole answer to the maximum length)" if dropped else ""
        raise QuantTuneError(
            f"No rows are left to train on{cut}.",
            "Raise the maximum length, add rows, or lower the validation and test shares.",
        )
    return train, val, encoded[0].truncated + encoded[1].truncated, labels


def checked_table(params: TrainParams) -> tuple[Table, Shape, set[int]]:
    """The file's rows, their shape (with the mapped columns) and the rows with problems (0-based),
    which ``drop_bad_rows`` leaves out; without it such rows stop the run here."""
    table = read_rows(params.dataset)
    shape = detect_shape(table.columns, table.head(20))
    if params.columns:
        shape = shape.mapped(dict(params.columns))
    if not shape.recognised:
        raise QuantTuneError(
            f"QuantTune does not recognise the columns of {Path(params.dataset).name}.",
            "Map the columns to roles (e.g. instruction and output, or text).",
        )
    known = (params.labels or None) if params.task == "classification" else None
    problems = [p for p in validate_rows(table, shape, labels=known) if p.row is not None]
    bad = {p.row - 1 for p in problems}  # the problems count rows from 1
    if bad and not params.drop_bad_rows:
        raise QuantTuneError(
            f"{len(bad)} row(s) of the data have problems, the first: {problems[0].message}.",
            "Drop the rows with problems (the Fine-tuning method step lists them), or fix the mapping.",
        )
    return table, shape, bad


def data_split(params: TrainParams, table: Table, shape: Shape, bad: set[int]) -> Split:
    """The rows of each part (indices into the file), bad rows left out, labels stratified; or the
    explicit split of ``params.rows``, bad rows left out of it too."""
    if params.rows is not None:
        return _given_split(params.rows, len(table), bad, Path(params.dataset).name)
    keep = [i for i in range(len(table)) if i not in bad]
    label_column = shape.mapping.get("label") if params.task == "classification" else None
    labels = table.dataset.select(keep)[label_column] if label_column else None
    split = split_rows(len(keep), params.seed, params.validation_ratio, params.test_ratio, labels)
    return Split(*([keep[i] for i in part] for part in (split.train, split.validation, split.test)))


def _given_split(rows: tuple, n: int, bad: set[int], name: str) -> Split:
    beyond = [i for part in rows for i in part if i >= n]
    if beyond:
        raise QuantTuneError(
            f"The split names row {beyond[0] + 1}, but {name} has {n} rows.",
            "Split the file as it is now (it changed since the split was made).",
        )
    return Split(*([i for i in part if i not in bad] for part in rows))


def rows_problems(rows: tuple) -> list[str]:
    """What is wrong with an explicit (train, validation, test) split of row indices."""
    if len(rows) != 3:
        return ["an explicit split has three parts: train, validation and test rows"]
    problems = []
    if not rows[0]:
        problems.append("an explicit split needs at least one training row")
    if any(i < 0 for part in rows for i in part):
        problems.append("row indices in an explicit split cannot be negative")
    seen = [i for part in rows for i in set(part)]
    if len(seen) != len(set(seen)):
        problems.append("the train, validation and test rows of an explicit split overlap")
    return problems


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch: a function of seed and epoch, so a resume can rebuild it."""
    import torch

    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch + 1)).tolist()


def data_fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in examples:
        digest.update(json.dumps(astuple(e)).encode())  # ids and labels, or ids and class
    return digest.hexdigest()[:16]
