"""k-fold cross-validation on the tiny model: folds trained and scored, mean ± std, no test row ever
trained on, progress across folds, cancel keeping the finished folds; and the Train job on an
explicit row split."""

import csv
import json
import math
import statistics
from collections import Counter

import pytest

from core.errors import Cancelled, QuantTuneError
from core.evaluate import kfold, metrics
from core.evaluate.results import KFOLD_FILE, KFoldResult
from core.finetune import rundata, train
from core.finetune.methods import MethodSettings
from core.jobs import JobContext
from core.project import FinetuneSettings

pytestmark = pytest.mark.usefixtures("single_thread")  # runs repeat bit for bit

# The class shows in the last word, which is what the head reads: learnable even by a random model.
PHRASES = {"geography": "The capital of France is Paris", "quantization": "Quantization maps weights",
           "food": "Café and jalapeño"}  # fmt: skip
QUESTIONS = [("What is the capital of France?", "Paris."), ("What is the capital of Italy?", "Rome."),
             ("What does quantization do?", "It maps weights to a small grid.")]  # fmt: skip


def write_labelled(path, per_label=7, blank_row=None):
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        rows = [(f"Note {i}: {phrase}", label) for i in range(per_label) for label, phrase in PHRASES.items()]
        for number, (text, label) in enumerate(rows):
            writer.writerow(["" if number == blank_row else text, label])
    return path


def write_alpaca(path, rows=20):
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            question, answer = QUESTIONS[i % len(QUESTIONS)]
            f.write(json.dumps({"instruction": question, "input": f"row {i}", "output": answer}) + "\n")
    return path


def classify_params(loaded, dataset, output, **changes):
    base = dict(loaded=loaded, dataset=dataset, output=output, task="classification", k=3, max_steps=2,
                method=MethodSettings(method="feature"), batch_size=8, learning_rate=5e-2, max_length=32,
                validation_ratio=0.1, eval_batch_size=8)  # fmt: skip
    return kfold.KFoldParams(**{**base, **changes})


def test_three_folds_of_classification_give_mean_and_spread_and_never_train_on_a_test_row(
    tiny_loaded, tmp_path
):
    data = write_labelled(tmp_path / "labelled.csv")  # 21 rows, 7 of each label
    events = []
    p = classify_params(tiny_loaded, data, tmp_path / "kfold", keep_models=True)
    assert p.validate() == []
    result = kfold.run(p, JobContext(events.append))

    assert len(result.folds) == 3 and not result.cancelled and result.method == "feature"
    assert result.metrics == list(metrics.TASK_METRICS["classification"])
    for scores in result.folds:
        assert set(scores) >= set(result.metrics)
        assert all(0.0 <= scores[key] <= 1.0 for key in result.metrics if scores[key] is not None)
    assert [test for _train, test in result.fold_sizes] == [7, 7, 7]
    assert all(train == 14 for train, _test in result.fold_sizes)
    for key, (mean, spread) in result.summary().items():
        values = [f[key] for f in result.folds]
        assert mean == pytest.approx(statistics.fmean(values)) and spread == pytest.approx(
            statistics.stdev(values)
        )
    saved = KFoldResult.from_dict(json.loads((tmp_path / "kfold" / KFOLD_FILE).read_text()))
    assert saved.folds == result.folds and saved.fold_sizes == result.fold_sizes

    # what each fold's training run recorded: no test row among its training or validation rows
    labels = [row["label"] for row in csv.DictReader(data.read_text(encoding="utf-8").splitlines())]
    tested = []
    for n in (1, 2, 3):
        split = json.loads((tmp_path / "kfold" / f"fold-{n}" / rundata.SPLIT).read_text())
        assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))
        assert sorted(split["train"] + split["validation"] + split["test"]) == list(range(21))
        counts = Counter(labels[i] for i in split["test"])
        assert set(counts) == set(PHRASES) and max(counts.values()) - min(counts.values()) <= 1  # stratified
        assert len(split["validation"]) >= 1  # the training loop watched a validation loss
        tested += split["test"]
    assert sorted(tested) == list(range(21))  # every row tested exactly once

    fold_events = [e.data for e in events if e.kind == "fold"]
    assert [e["index"] for e in fold_events] == [0, 1, 2]
    assert fold_events[1]["scores"] == result.folds[1] and fold_events[1]["sizes"] == (14, 7)
    overall = [e.data["done"] for e in events if e.kind == "progress" and e.data["total"] == 3]
    assert overall == sorted(overall) and overall[-1] == pytest.approx(3.0)  # across folds, never back
    stages = [e.data["message"] for e in events if e.kind == "progress" and e.data["total"] == 0]
    assert "Fold 2 of 3: training" in stages and "Fold 3 of 3: scoring" in stages
    fold_metrics = {e.data.get("fold") for e in events if e.kind == "metric"}
    assert fold_metrics == {0, 1, 2}  # the training loss of each fold, tagged with it


def test_two_generative_folds_with_lora_score_the_task_metrics_and_clean_up(tiny_loaded, tmp_path):
    data = write_alpaca(tmp_path / "alpaca.jsonl", 20)
    p = kfold.KFoldParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "kfold", task="instruction",
                          k=2, max_steps=2, method=MethodSettings(rank=4), batch_size=4, learning_rate=1e-2,
                          max_length=64, max_new_tokens=4, max_test_rows=3, eval_batch_size=4)  # fmt: skip
    assert p.validate() == []
    result = kfold.run(p, JobContext())
    assert len(result.folds) == 2 and result.fold_sizes == [(10, 3), (10, 3)]
    assert result.metrics == list(metrics.TASK_METRICS["instruction"])
    for scores in result.folds:
        assert set(scores) >= set(result.metrics)
        assert math.isfinite(scores["perplexity"]) and scores["perplexity"] > 1.0
    assert sorted(p.name for p in (tmp_path / "kfold").iterdir()) == [KFOLD_FILE]  # the models are gone
    summary = result.summary()
    assert summary["perplexity"][0] == pytest.approx(statistics.fmean(f["perplexity"] for f in result.folds))


def test_cancel_after_the_first_fold_keeps_it(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv")
    ctx = JobContext(lambda event: ctx.cancel() if event.kind == "fold" else None)
    result = kfold.run(classify_params(tiny_loaded, data, tmp_path / "kfold"), ctx)
    assert result.cancelled and len(result.folds) == 1 and result.fold_sizes == [(14, 7)]
    assert all(spread == 0.0 for _mean, spread in filter(None, result.summary().values()))
    saved = json.loads((tmp_path / "kfold" / KFOLD_FILE).read_text())
    assert saved["cancelled"] and len(saved["folds"]) == 1
    assert not (tmp_path / "kfold" / "fold-2").exists() and not (tmp_path / "kfold" / "fold-1").exists()


def test_cancel_before_any_fold_finished_raises_and_removes_the_partly_trained_fold(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv")
    ctx = JobContext(lambda event: ctx.cancel() if event.kind == "metric" else None)  # after step 1
    with pytest.raises(Cancelled):
        kfold.run(classify_params(tiny_loaded, data, tmp_path / "kfold", max_steps=5), ctx)
    assert not (tmp_path / "kfold" / "fold-1").exists()
    assert not (tmp_path / "kfold" / KFOLD_FILE).exists()


def test_an_error_in_a_later_fold_keeps_the_folds_that_finished_and_says_why(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv")

    def lose_the_file(event):  # the file goes (a drive unplugged) once fold 1 is in: fold 2 cannot read it
        if event.kind == "fold":
            data.unlink()

    result = kfold.run(classify_params(tiny_loaded, data, tmp_path / "kfold"), JobContext(lose_the_file))
    assert len(result.folds) == 1 and result.fold_sizes == [(14, 7)] and not result.cancelled
    error = result.settings["error"]
    assert error.startswith("Fold 2 of 3 failed:") and "labelled.csv" in error
    saved = KFoldResult.from_dict(json.loads((tmp_path / "kfold" / KFOLD_FILE).read_text()))
    assert saved.folds == result.folds and saved.settings["error"] == result.settings["error"]
    assert not (tmp_path / "kfold" / "fold-2").exists()


def test_an_error_in_the_first_fold_is_raised_and_nothing_is_kept(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv")

    def lose_the_file(event):  # gone after the folds were cut, before fold 1 trained
        if event.kind == "progress" and data.exists():
            data.unlink()

    with pytest.raises(QuantTuneError, match="labelled.csv"):
        kfold.run(classify_params(tiny_loaded, data, tmp_path / "kfold"), JobContext(lose_the_file))
    assert not (tmp_path / "kfold" / KFOLD_FILE).exists()


def test_each_fold_trains_with_the_train_steps_recipe(tiny_loaded, tmp_path):
    defaults = kfold.train_params(classify_params(tiny_loaded, tmp_path, tmp_path), tmp_path, None)
    train_step = FinetuneSettings()  # the defaults are the Train step's
    for key in ("pack", "autocast", "warmup_steps", "gradient_checkpointing"):
        assert getattr(defaults, key) == getattr(train_step, key), key
    assert defaults.pack and defaults.autocast == "auto"
    recipe = dict(warmup_steps=3, pack=False, autocast="off", gradient_checkpointing=True)
    p = classify_params(tiny_loaded, tmp_path, tmp_path, **recipe)
    made = kfold.train_params(p, tmp_path / "fold-1", ((0, 1), (2,), (3,)))
    assert {key: getattr(made, key) for key in recipe} == recipe and made.rows == ((0, 1), (2,), (3,))
    assert kfold.settings_of(p)["autocast"] == "off"  # the result records the recipe


def test_a_label_with_fewer_rows_than_folds_is_named(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv", per_label=2)
    with pytest.raises(QuantTuneError, match="'food' has 2 row") as caught:
        kfold.run(classify_params(tiny_loaded, data, tmp_path / "kfold"), JobContext())
    assert "at most 2 folds" in caught.value.fix


def test_validate_lists_every_problem(tiny_loaded, tmp_path):
    p = kfold.KFoldParams(loaded=None, dataset=tmp_path / "missing.csv", output=tmp_path / "kfold",
                          task="instruction", k=1, max_steps=0, epochs=0, max_new_tokens=0, max_test_rows=-1,
                          method=MethodSettings(method="feature"), validation_ratio=1.5)  # fmt: skip
    problems = " | ".join(p.validate())
    expected = [
        "at least 2 folds (and at most 20)",
        "at least one epoch or one step",
        "answer length",
        "test rows per fold",
        "load a model first",
        "no dataset file",
        "feature extraction",
        "validation and test shares",
    ]
    assert [e for e in expected if e not in problems] == [], problems
    assert "unknown task" in " ".join(kfold.KFoldParams(loaded=tiny_loaded, dataset=tmp_path, output=tmp_path,
                                                        task="poetry").validate())  # fmt: skip


# -- the Train job on an explicit split ----------------------------------------------------------
def test_an_explicit_split_is_used_as_given_with_bad_rows_left_out(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv", per_label=4, blank_row=3)  # row 3 has no text
    rows = ((0, 1, 2, 3, 4, 5, 6), (7, 8), (9, 10, 11))
    p = train.TrainParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "out", task="classification",
                          method=MethodSettings(method="feature"), max_length=32, max_steps=1, rows=rows,
                          validation_ratio=0.5, test_ratio=0.5, drop_bad_rows=True)  # fmt: skip
    assert p.validate() == []  # the shares are ignored (together they would leave nothing to train on)
    train.run(p, JobContext())
    split = json.loads((tmp_path / "out" / rundata.SPLIT).read_text())
    assert (split["train"], split["validation"], split["test"]) == ([0, 1, 2, 4, 5, 6], [7, 8], [9, 10, 11])
    beyond = train.TrainParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "b", max_steps=1,
                               task="classification", method=MethodSettings(method="feature"),
                               rows=((0, 1, 99), (), ()), drop_bad_rows=True)  # fmt: skip
    with pytest.raises(QuantTuneError, match="names row 100, but labelled.csv has 12 rows"):
        train.run(beyond, JobContext())


def test_a_wrong_explicit_split_is_refused(tiny_loaded, tmp_path):
    def problems(rows, **changes):
        p = train.TrainParams(
            loaded=tiny_loaded, dataset=tmp_path, output=tmp_path / "o", rows=rows, **changes
        )
        return " | ".join(p.validate())

    assert "overlap" in problems(((0, 1, 2), (2,), ()))
    assert "at least one training row" in problems(((), (1,), (2,)))
    assert "cannot be negative" in problems(((0, -1), (), ()))
    assert "early stopping" in problems(((0, 1), (), ()), early_stopping_patience=2)
    assert "early stopping" not in problems(((0, 1), (2,), ()), early_stopping_patience=2)
