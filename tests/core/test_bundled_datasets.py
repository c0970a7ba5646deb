"""The sample datasets shipped in resources/datasets: each reads, is recognised as the shape its
task needs, and has no row problems, so every task type runs offline from a fresh install."""

from importlib import resources

import pytest

from core.data.formats import detect_shape, read_rows, validate_rows

LABELS = {"billing", "bug", "feature_request", "account", "praise"}


@pytest.mark.parametrize(
    ("name", "shape", "task", "at_least"),
    [
        ("instructions-units.jsonl", "alpaca", "instruction", 300),
        ("classification-support.csv", "classification", "classification", 300),
        ("qa-planets.jsonl", "qa", "qa", 200),
        ("summaries-notes.jsonl", "summarization", "summarization", 200),
    ],
)
def test_each_bundled_dataset_is_ready_to_train(name, shape, task, at_least):
    path = resources.files("resources").joinpath("datasets", name)
    table = read_rows(path)
    detected = detect_shape(table.columns, table.head())
    assert (detected.name, detected.task) == (shape, task)
    assert len(table) >= at_least
    labels = LABELS if task == "classification" else None
    assert validate_rows(table, detected, labels=labels) == []
    if task == "qa":
        rows = list(table.rows())
        assert all(row["answer"] in row["context"] for row in rows)  # extractive: answers are spans
