"""The look at a dataset before training: shape, problems by row, token lengths, labels, split."""

import json

from core.finetune import data_check, runs
from core.jobs import JobContext


def check(path, **changes):
    return data_check.run(data_check.DataCheckParams(dataset=path, **changes), JobContext())


def test_the_bundled_instruction_set(tiny_tokenizer):
    result = check(runs.bundled_dataset("instructions-units.jsonl"), tokenizer=tiny_tokenizer)
    assert result.shape.name == "alpaca" and result.rows == 326 and result.bad_rows == 0
    assert len(result.preview) == data_check.PREVIEW_ROWS and set(result.preview[0]) == set(result.columns)
    assert len(result.lengths) == 326 and min(result.lengths) > 5
    assert result.count_over(8) == 326 and result.count_over(10_000) == 0
    assert sum(result.split) == 326 and result.split[2] == 33
    assert result.task_warning == ""


def test_classification_labels_and_a_stratified_split():
    result = check(runs.bundled_dataset("classification-support.csv"), task="classification")
    assert set(result.labels) == {"account", "billing", "bug", "feature_request", "praise"}
    assert sum(result.labels.values()) == 340 and sum(result.split) == 340


def test_rows_with_problems_are_listed_by_number(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(60)]
    rows[4]["output"] = ""
    rows[9] = {"instruction": "no answer"}
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    result = check(path)
    assert result.bad_rows == 2
    assert [p.row for p in result.problems if p.row] == [5, 10]
    assert "Row 5" in result.problems[0].message


def test_data_of_another_task_is_flagged_and_an_unknown_shape_asks_for_a_mapping(tmp_path):
    result = check(runs.bundled_dataset("classification-support.csv"), task="instruction")
    assert "text classification" in result.task_warning
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"x{i}", "a": f"y{i}"}) for i in range(60)), encoding="utf-8")
    unknown = check(path)
    assert not unknown.shape.recognised and unknown.columns == ["q", "a"] and unknown.problems == []
    mapped = check(path, columns=(("prompt", "q"), ("completion", "a")))
    assert mapped.shape.name == "prompt_completion" and mapped.bad_rows == 0
