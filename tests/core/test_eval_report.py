"""The exported report: one self-contained, escaped HTML file; CSV and JSON that give every number back."""

import base64
import csv
import io
import json
import math
import re
import subprocess
import sys

from core.evaluate import report
from core.evaluate.curves import curves_from_history
from core.evaluate.metrics import TASK_METRICS, format_value
from core.evaluate.results import EvalExample, Evaluation, KFoldResult, VariantResult

ATTACK = "<script>alert('x')</script>"
PNG_URI = "data:image/png;base64,"


def qa_evaluation() -> Evaluation:
    examples = [
        EvalExample(5, "What is the largest planet?", "Jupiter"),
        EvalExample(9, "Which planet has rings & moons?", "Saturn"),
        EvalExample(12, "Name the red planet, please.", "Mars"),
    ]
    base = VariantResult(
        "base", "Base model", "base",
        scores={"exact_match": 1 / 3, "token_f1": 0.5555555555555556, "rougeL": 0.5, "perplexity": 12.345},
        outputs=["Jupiter", "Saturn, with rings", ATTACK],
        example_scores=[{"exact_match": 1.0, "token_f1": 1.0}, {"exact_match": 0.0, "token_f1": 0.5},
                        {"exact_match": 0.0, "token_f1": 0.0}],
        size_bytes=538_000_000, peak_memory_bytes=912_000_000, tokens_per_second=35.25, seconds=4.5,
    )  # fmt: skip
    tuned = VariantResult(
        "train:run1", "LoRA r8 · planets", "finetuned",
        scores={"exact_match": 1.0, "token_f1": 1.0, "rougeL": None, "perplexity": math.nan},
        outputs=["Jupiter", "Saturn", "Mars"],
        example_scores=[{"exact_match": 1.0, "token_f1": 1.0}] * 3,
        size_bytes=None, peak_memory_bytes=1_000_000_000, tokens_per_second=20.0, seconds=6.25,
    )  # fmt: skip
    return Evaluation(
        "eval-1", "2025-03-01T10:20:30+00:00", "qa", "bundled:qa-planets.jsonl", list(TASK_METRICS["qa"]),
        examples, [base, tuned], unavailable={"meteor": "WordNet is not installed"},
    )  # fmt: skip


def kfold_result() -> KFoldResult:
    folds = [{"exact_match": 0.5, "token_f1": 0.7}, {"exact_match": 0.7, "token_f1": None},
             {"exact_match": 0.6, "token_f1": 0.8}]  # fmt: skip
    return KFoldResult(3, "qa", "lora", ["exact_match", "token_f1"], folds, [(20, 10)] * 3)


def overfit_curves():
    rows = [{"step": s, "loss": 2.0 - 0.015 * s} for s in range(1, 101)]
    for row, val in zip(rows[19::20], [0.9, 0.71, 0.76, 0.83, 0.88], strict=True):
        row["val_loss"] = val
    return curves_from_history("run1", "LoRA <r8> & friends", rows)


def test_html_holds_each_variant_its_formatted_numbers_and_an_image_per_plot(tmp_path):
    evaluation, curves = qa_evaluation(), overfit_curves()
    path = report.write_html(
        tmp_path / "out" / "report.html", evaluation, kfold_result(), [curves], "Planets"
    )
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<h1>Evaluation — Planets</h1>" in html
    assert "Base model" in html and "LoRA r8 · planets" in html
    for variant in evaluation.variants:
        for key, value in variant.scores.items():
            if value is not None and math.isfinite(value):
                assert format_value(key, value) in html
    assert "33.3 %" in html and "55.6 %" in html and "12.3" in html
    assert "<b>100.0 %</b>" in html and "<b>12.3</b>" in html  # the best exact match; the lower perplexity
    assert "538.0 MB" in html and "35.2" in html and "1.0 GB" in html  # the cost columns
    assert "Test examples</dt><dd>3</dd>" in html and "qa-planets.jsonl" in html
    assert "METEOR has no value: WordNet is not installed" in html
    assert "60.0 % ± 10.0 %" in html and "75.0 % ± 7.1 %" in html  # k-fold mean ± sample std
    assert "checkpoint at step 40" in html and "LoRA &lt;r8&gt; &amp; friends" in html  # the curves' note
    images = re.findall(r'<img src="(data:image/png;base64,[^"]+)"', html)
    assert len(images) == html.count(PNG_URI) == 4  # metric bars, cost, one training run, k-fold
    assert all(base64.b64decode(uri.removeprefix(PNG_URI)).startswith(b"\x89PNG\r\n") for uri in images)


def test_html_escapes_every_text_and_loads_nothing_from_outside(tmp_path):
    evaluation = qa_evaluation()
    evaluation.examples[0].prompt = f"Prompt {ATTACK}"
    evaluation.variants[1].label = f'Tuned "{ATTACK}"'
    evaluation.variants[1].notes = [ATTACK]
    html = report.write_html(tmp_path / "r.html", evaluation, project_name=ATTACK).read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "rings &amp; moons" in html
    assert re.search(r"https?://", html) is None and "<link" not in html  # no external resource at all


def test_missing_scores_show_as_a_dash_never_none_or_nan(tmp_path):
    html = report.render_html(qa_evaluation())
    assert re.search(r">\s*(None|nan|NaN|inf)\s*<", html) is None
    tuned_row = re.search(r"<tr><th>LoRA r8 · planets.*?</tr>", html).group(0)
    assert tuned_row.count('<td class="num">—</td>') == 3  # ROUGE-L, perplexity (NaN), size


def test_wrong_outputs_and_the_users_marks_are_shown():
    evaluation = qa_evaluation()
    marks = {"base|5": {"mark": "good", "output": "Jupiter"},
             "train:run1|12": {"mark": "bad", "output": "an older answer"},
             "base|9": {"mark": "", "output": "Saturn, with rings"}}  # fmt: skip
    html = report.render_html(evaluation, marks=marks)
    assert html.count('class="text wrong"') == 2  # base's rows 9 and 12 are not exact matches
    assert 'class="mark good">marked good</span>' in html
    assert 'class="mark bad">marked bad (on an earlier output)</span>' in html
    assert html.count("marked ") == 2
    assert html.count('<tr class="differs">') == 2 and html.count('<tr class="same">') == 1
    assert "text-decoration:line-through" in html  # the reference's missing words, struck through


def test_classification_report_has_a_confusion_matrix_with_unlabelled_answers_apart():
    labels = ["billing", "bug", "other"]
    examples = [
        EvalExample(i, f"message {i}", label) for i, label in enumerate(["billing", "bug", "bug", "other"])
    ]
    variant = VariantResult(
        "base", "Base", "base", scores={"accuracy": 0.5},
        outputs=["billing", "billing", "bug", "I think other"],
        example_scores=[{"exact_match": float(i in (0, 2))} for i in range(4)],
    )  # fmt: skip
    html = report.render_html(
        Evaluation("e", "2025-01-01", "classification", "x.csv", ["accuracy"], examples, [variant], labels)
    )
    table = html[html.index("<h2>Confusion matrices</h2>") : html.index("<h2>Outputs</h2>")]
    assert "<th>(not a label)</th>" in table
    counts = [
        [int(n) for n in re.findall(r">(\d+)</td>", row)]
        for row in re.findall(r"<tr><th>\w+</th>.*?</tr>", table)
    ]
    assert counts == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 0, 1],
    ]  # rows billing, bug, other; the last column: not a label
    variant.outputs[3] = "other"
    html = report.render_html(
        Evaluation("e", "", "classification", "x.csv", ["accuracy"], examples, [variant], labels)
    )
    assert "(not a label)" not in html  # no column when every answer is a label


def read_csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def test_csv_gives_every_number_back(tmp_path):
    evaluation, kfold = qa_evaluation(), kfold_result()
    path = report.write_csv(tmp_path / "results.csv", evaluation, kfold)
    rows = read_csv(path)
    tests = [r for r in rows if r["section"] == "test"]
    assert len(tests) == 2 * len(evaluation.metrics)
    for row in tests:
        variant = evaluation.variant(row["variant_id"])
        value = variant.scores.get(row["metric"])
        expected = "" if value is None or not math.isfinite(value) else value
        assert (float(row["value"]) if row["value"] else "") == expected
        assert row["size_bytes"] == ("" if variant.size_bytes is None else str(variant.size_bytes))
        assert float(row["tokens_per_second"]) == variant.tokens_per_second
    assert "None" not in path.read_text(encoding="utf-8") and "nan" not in path.read_text(encoding="utf-8")
    means = {r["metric"]: r for r in rows if r["variant_id"] == "mean"}
    for key, (mean, std) in kfold.summary().items():
        assert float(means[key]["value"]) == mean and float(means[key]["std"]) == std
    folds = [r for r in rows if r["variant_id"].startswith("fold ")]
    assert [(r["variant_id"], r["value"]) for r in folds if r["metric"] == "token_f1"] == [
        ("fold 1", "0.7"), ("fold 2", ""), ("fold 3", "0.8")]  # fmt: skip

    examples = read_csv(report.examples_csv_path(path))
    assert [e["row of the file (from 1)"] for e in examples] == ["6", "10", "13"]  # as the app numbers them
    assert examples[2]["base: output"] == ATTACK and examples[1]["base: output"] == "Saturn, with rings"
    assert examples[1]["input"] == "Which planet has rings & moons?"
    assert float(examples[1]["base: token_f1"]) == 0.5 and examples[2]["train:run1: output"] == "Mars"


def test_json_loads_back_to_the_same_numbers(tmp_path):
    evaluation, kfold, curves = qa_evaluation(), kfold_result(), overfit_curves()
    data = json.loads(report.write_json(tmp_path / "r.json", evaluation, kfold, [curves]).read_text("utf-8"))
    back = Evaluation.from_dict(data["evaluation"])
    assert back.variants[0].scores == evaluation.variants[0].scores
    assert back.variants[1].scores == {
        "exact_match": 1.0,
        "token_f1": 1.0,
        "rougeL": None,
        "perplexity": None,
    }
    assert (
        back.examples == evaluation.examples
        and back.variants[0].example_scores == evaluation.variants[0].example_scores
    )
    assert back.variants[0].tokens_per_second == 35.25 and back.variants[1].size_bytes is None
    assert KFoldResult.from_dict(data["kfold"]).folds == kfold.folds
    assert data["kfold"]["summary"]["exact_match"] == list(kfold.summary()["exact_match"])
    assert data["curves"][0]["val_loss"] == curves.val_loss and data["curves"][0]["diverges_at"] == 40
    assert list(tmp_path.iterdir()) == [tmp_path / "r.json"]  # written atomically: no temp file left


def test_an_empty_evaluation_still_makes_a_report(tmp_path):
    evaluation = Evaluation("e", "2025-01-01", "qa", "x.jsonl", ["exact_match"])
    html = report.write_html(tmp_path / "r.html", evaluation).read_text(encoding="utf-8")
    assert "<h2>Results</h2>" in html and PNG_URI not in html and "<h2>Outputs</h2>" not in html
    report.write_csv(tmp_path / "r.csv", evaluation)
    header = report.examples_csv_path(tmp_path / "r.csv").read_text(encoding="utf-8")
    assert header == "row of the file (from 1),input,reference\n"


def test_drawing_leaves_pyplot_and_qt_alone():
    code = (
        "import sys\n"
        "from tests.core.test_eval_report import qa_evaluation, kfold_result\n"
        "from core.evaluate import report\n"
        "assert report.render_html(qa_evaluation(), kfold_result()).count('data:image/png') == 3\n"
        "unwanted = ('PySide6', 'matplotlib.pyplot', 'matplotlib.backends.backend_qt')\n"
        "loaded = [m for m in sys.modules if m.startswith(unwanted)]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
