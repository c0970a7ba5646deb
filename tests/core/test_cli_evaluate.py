"""`quanttune evaluate` on the tiny model: a dataset without a project, a project, --list, --json, the
report, k-fold, and clear errors."""

import json

import pytest

from core import cli, project
from core.evaluate import runs

PLANETS = [("Mars is red because of iron oxide dust.", "Why is Mars red?", "iron oxide dust"),
           ("Jupiter has a Great Red Spot, a storm.", "What is the Great Red Spot?", "a storm")]  # fmt: skip
SMALL = [
    "--max-examples",
    "3",
    "--max-new-tokens",
    "4",
    "--batch-size",
    "4",
    "--rag-top-k",
    "1",
    "--few-shot",
    "1",
]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "planets.jsonl"
    rows = [{"context": c, "question": q, "answer": a} for i in range(20) for c, q, a in [PLANETS[i % 2]]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def evaluate(capsys, *args):
    code = cli.main(["evaluate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_dataset_without_a_project_scores_the_base_and_baselines(capsys, tiny_model_dir, dataset, tmp_path):
    out_dir = tmp_path / "eval"
    report = tmp_path / "report.html"
    source = ["--model", str(tiny_model_dir), "--dataset", str(dataset), "--task", "qa"]
    code, out, err = evaluate(
        capsys, *source, "--output", str(out_dir), "--report", str(report), *SMALL, "--json"
    )
    assert code == 0, err
    data = json.loads(out)
    assert [v["id"] for v in data["variants"]] == ["base", "zero-shot", "few-shot", "rag"]
    assert data["task"] == "qa" and len(data["examples"]) == 2  # 10 % of 20 rows, under the limit of 3
    assert all(set(v["scores"]) >= {"exact_match", "token_f1", "perplexity"} for v in data["variants"])
    assert report.is_file() and "data:image/png;base64," in report.read_text(encoding="utf-8")
    assert list((out_dir / "artifacts" / "evaluate").iterdir())


def test_a_project_is_evaluated_and_keeps_the_result(capsys, tiny_model_dir, tiny_loaded, dataset, tmp_path):
    p = project.create_project("planets", root=tmp_path / "projects")
    p.load.model = tiny_loaded.ref.to_dict()
    p.finetune.dataset, p.finetune.task = str(dataset), "qa"
    project.save_project(p)
    code, out, err = evaluate(capsys, "--project", str(p.folder), "--list")
    assert code == 0, err
    assert out.split()[0] == "base" and "few-shot" in out
    code, out, err = evaluate(capsys, "--project", str(p.folder), "--variants", "base,rag", *SMALL)
    assert code == 0, err
    assert "Exact match" in out.splitlines()[0] and "RAG (BM25)" in out
    found, _folder = runs.latest_evaluation(project.load_project(p.folder))
    assert [v.id for v in found.variants] == ["base", "rag"]


def test_kfold_prints_mean_and_spread(capsys, tiny_model_dir, tiny_loaded, tmp_path):
    labels = ["billing", "login"]
    data = tmp_path / "support.csv"
    data.write_text(
        "text,label\n" + "".join(f"note {i} on {labels[i % 2]},{labels[i % 2]}\n" for i in range(20))
    )
    p = project.create_project("cv", root=tmp_path / "projects")
    p.load.model = tiny_loaded.ref.to_dict()
    p.finetune.dataset, p.finetune.task, p.finetune.method = (
        str(data),
        "classification",
        {"method": "feature"},
    )
    project.save_project(p)
    code, out, err = evaluate(capsys, "--project", str(p.folder), "--kfold", "2", "--kfold-steps", "1")
    assert code == 0, err
    assert out.startswith("2-fold cross-validation") and "Accuracy:" in out and "±" in out
    assert runs.latest_kfold(project.load_project(p.folder)).k == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "Nothing to evaluate"), (["--dataset", "x.jsonl"], "No output folder"),
     (["--project", "nowhere"], "There is no project 'nowhere'")],
)  # fmt: skip
def test_mistakes_name_the_problem_and_the_fix(capsys, args, message):
    code, _out, err = evaluate(capsys, *args)
    assert code == 1 and message in err and "fix:" in err


def test_ctrl_c_keeps_the_variants_scored_before_it(capsys, monkeypatch, tiny_loaded, dataset, tmp_path):
    from core.evaluate import scoring

    p = project.create_project("stopped", root=tmp_path / "projects")
    p.load.model = tiny_loaded.ref.to_dict()
    p.finetune.dataset, p.finetune.task = str(dataset), "qa"
    project.save_project(p)
    real, calls = scoring.score, []

    def interrupted_on_the_second(*args, **kwargs):  # Ctrl-C while the second variant is scored
        calls.append(args[0].id)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "score", interrupted_on_the_second)
    code, _out, err = evaluate(capsys, "--project", str(p.folder), "--variants", "base,rag", *SMALL)
    assert code == 130 and "kept the 1 variant(s) scored before the stop" in err
    found, _folder = runs.latest_evaluation(project.load_project(p.folder))
    assert [v.id for v in found.variants] == ["base"] and calls == ["base", "rag"]
