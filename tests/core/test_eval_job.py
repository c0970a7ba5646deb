"""The Evaluate job on a tiny project: every kind of variant and baseline on the same test rows."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from core import project as projects
from core.errors import Cancelled, InvalidSettings, QuantTuneError
from core.evaluate import job, results, runs, variants
from core.jobs import JobContext, run_job

UNITS = [("metres", "feet", 3.28084), ("kilograms", "pounds", 2.20462), ("litres", "pints", 1.75975)]


def _rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        unit, other, factor = UNITS[i % 3]
        out.append({"instruction": f"How many {other} are in {i + 1} {unit}?", "input": "",
                    "output": f"{i + 1} {unit} is {round((i + 1) * factor, 2)} {other}."})  # fmt: skip
    return out


@pytest.fixture
def project(tmp_path, tiny_loaded):
    data = tmp_path / "units.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _rows(30)), encoding="utf-8")
    p = projects.create_project("eval", root=tmp_path / "projects")
    p.load.model = tiny_loaded.ref.to_dict()
    p.finetune = replace(p.finetune, dataset=str(data), test_ratio=0.2, validation_ratio=0.1, max_length=64)
    p.evaluate = replace(p.evaluate, max_new_tokens=6, batch_size=4, few_shot=2, rag_top_k=1)
    return p


def _quantize(p, loaded):
    from core.quant import job as quant_job
    from core.quant import runs as quant_runs

    run_id, folder = quant_runs.new_run_folder(p, {"precision": "int8", "method": "rtn"})
    params = quant_job.QuantizeParams(loaded, precision="int8", group_size=32, output=str(folder),
                                      measure_perplexity=False)  # fmt: skip
    quant_runs.record_run(p, run_id, run_job(quant_job.run, params, JobContext()).to_dict())


def _train(p, loaded, method="lora"):
    from core.finetune import runs as train_runs
    from core.finetune import train

    settings = replace(p.finetune, method={"method": method}, max_steps=2, batch_size=4, eval_every=0)
    run_id, folder = train_runs.new_train_run(p, settings, loaded.ref.to_dict())
    report = run_job(train.run, train_runs.train_params(settings, loaded, folder), JobContext())
    train_runs.finish_train_run(p, run_id, "finished", report.to_dict())
    return run_id


def _evaluate(p, loaded, ids=(), sink=None):
    params = job.evaluate_params(p, loaded, ids)
    ctx = JobContext(sink)
    return run_job(job.run, params, ctx), params


def test_every_variant_answers_the_same_test_rows(project, tiny_loaded):
    _quantize(project, tiny_loaded)
    run_id = _train(project, tiny_loaded)
    listed = {v.id: v for v in variants.list_variants(project, tiny_loaded)}
    kinds = [v.kind for v in listed.values() if v.available]
    assert kinds == ["base", "quantized", "finetuned", "finetuned+quantized", "few-shot", "rag"]
    assert "already the zero-shot answer" in listed["zero-shot"].why  # instruction rows are their own prompts
    events = []
    evaluation, params = _evaluate(project, tiny_loaded, sink=events.append)
    assert [v.kind for v in evaluation.variants] == kinds
    scored = [e.data["result"].id for e in events if e.kind == "variant"]
    assert scored == [i for i, v in listed.items() if v.available]
    assert len(evaluation.examples) == 6  # 20 % of 30 rows
    assert evaluation.metrics[:2] == ["token_f1", "rougeL"]
    for v in evaluation.variants:
        assert not v.error, v.error
        assert len(v.outputs) == len(v.example_scores) == 6
        assert 0.0 <= v.scores["token_f1"] <= 1.0 and v.scores["perplexity"] > 1.0
        assert v.size_bytes > 0 and v.peak_memory_bytes > 0 and v.tokens_per_second > 0
    base, quant = (
        evaluation.variant("base"),
        evaluation.variant(next(i for i in listed if i.startswith("quant:"))),
    )
    assert quant.size_bytes < base.size_bytes  # INT8 against FP32
    assert evaluation.variant(f"train:{run_id}").scores["perplexity"] != base.scores["perplexity"]
    # the held-out text's perplexity, as the Quantize step measures it, for the models only
    assert evaluation.metrics[-1] == "text_perplexity"
    models = [v for v in evaluation.variants if v.kind not in variants.BASELINES]
    assert all(v.scores["text_perplexity"] > 1.0 for v in models)
    assert all(v.scores.get("text_perplexity") is None for v in evaluation.variants if v not in models)
    assert quant.scores["text_perplexity"] != base.scores["text_perplexity"]
    # the test rows are the Train step's own: no run of these settings trained on them
    trained = variants.trained_rows(project, project.train_runs[0])
    assert trained and not trained & {e.row for e in evaluation.examples}
    again = results.read_evaluation(params.output)
    assert again.to_dict() == evaluation.to_dict()


def test_a_recorded_evaluation_comes_back_with_the_project(project, tiny_loaded):
    evaluation, params = _evaluate(project, tiny_loaded, ids=("base",))
    runs.record_evaluation(project, evaluation, params.output)
    projects.save_project(project)
    reopened = projects.load_project(project.folder)
    found, folder = runs.latest_evaluation(reopened)
    assert folder == params.output and [v.id for v in found.variants] == ["base"]
    runs.set_mark(reopened, "base", found.examples[0].row, found.variants[0].outputs[0], "bad")
    assert runs.mark_of(reopened, "base", found.examples[0].row, found.variants[0].outputs[0]) == "bad"
    assert runs.mark_of(reopened, "base", found.examples[0].row, "another answer") is None


def test_cancel_stops_between_batches_and_keeps_finished_variants(project, tiny_loaded):
    ctx = JobContext()

    def cancel_after_first(event):
        if event.kind == "variant":
            ctx.cancel()

    ctx._sink = cancel_after_first
    params = job.evaluate_params(project, tiny_loaded, ("base", "few-shot"))
    with pytest.raises(Cancelled):
        run_job(job.run, params, ctx)
    assert [v.id for v in results.read_evaluation(params.output).variants] == ["base"]


def test_a_variant_that_fails_says_why_and_the_others_are_scored(project, tiny_loaded):
    import shutil

    from core.quant.runs import run_path

    _quantize(project, tiny_loaded)
    record, quant_id = project.runs[0], f"quant:{project.runs[0]['id']}"
    for weights in run_path(project, record).glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    evaluation, _ = _evaluate(project, tiny_loaded, ids=("base", quant_id))
    broken = evaluation.variants[1]
    assert broken.id == quant_id and broken.error and not broken.outputs
    assert not evaluation.variants[0].error and evaluation.variants[0].outputs
    shutil.rmtree(run_path(project, record))  # a folder deleted by hand: listed, not offered
    gone = next(v for v in variants.list_variants(project, tiny_loaded) if v.id == quant_id)
    assert not gone.available and "is gone" in gone.why


def test_bad_settings_are_listed_at_once(project, tiny_loaded):
    project.evaluate = replace(project.evaluate, max_new_tokens=0, few_shot=40, rag_top_k=9)
    with pytest.raises(InvalidSettings) as caught:
        run_job(job.run, job.evaluate_params(project, tiny_loaded), JobContext())
    text = str(caught.value)
    assert "answer length" in text and "few-shot" in text and "RAG" in text


def test_classification_scores_a_trained_classifier_and_the_base_by_likelihood(tmp_path, tiny_loaded):
    labels = ["billing", "login", "shipping"]
    lines = ["text,label"] + [f"message {i} about {labels[i % 3]},{labels[i % 3]}" for i in range(30)]
    data = tmp_path / "support.csv"
    data.write_text("\n".join(lines), encoding="utf-8")
    p = projects.create_project("cls", root=tmp_path / "projects")
    p.finetune = replace(p.finetune, dataset=str(data), task="classification", test_ratio=0.2, max_length=32)
    p.evaluate = replace(p.evaluate, batch_size=4, few_shot=3, rag_top_k=2)
    run_id = _train(p, tiny_loaded, method="feature")
    listed = {v.id: v for v in variants.list_variants(p, tiny_loaded)}
    assert not listed["zero-shot"].available and "Base row" in listed["zero-shot"].why
    assert not listed[f"train:{run_id}"].why
    evaluation, _ = _evaluate(p, tiny_loaded)
    assert [v.id for v in evaluation.variants] == ["base", f"train:{run_id}", "few-shot", "rag"]
    assert evaluation.labels == labels
    for v in evaluation.variants:
        assert not v.error, v.error
        assert set(v.outputs) <= set(labels) and len(v.outputs) == len(evaluation.examples)
        assert sum(map(sum, v.confusion)) == len(evaluation.examples)
        assert 0.0 <= v.scores["accuracy"] <= 1.0


def test_the_window_and_the_cli_score_the_same_chosen_variants(project, tiny_loaded):
    _quantize(project, tiny_loaded)
    quant_id = f"quant:{project.runs[0]['id']}"
    assert job.default_variant_ids(project, tiny_loaded) == ("base", quant_id, "few-shot", "rag")
    project.evaluate.skipped = ["base", quant_id]  # every model unchecked: the baselines alone
    project.evaluate.rag_top_k = 0
    assert job.default_variant_ids(project, tiny_loaded) == ("few-shot",)
    with pytest.raises(InvalidSettings, match="there is no variant quant:nope"):
        run_job(job.run, job.evaluate_params(project, tiny_loaded, ("base", "quant:nope")), JobContext())


def test_plain_text_is_continued_as_it_was_trained_without_a_chat_template(tmp_path, tiny_loaded):
    from core.evaluate import generation

    data = tmp_path / "notes.txt"
    data.write_text(
        "\n".join(f"Note {i}: the team met on day {i} and planned the next release." for i in range(20))
    )
    p = projects.create_project("text", root=tmp_path / "projects")
    p.finetune = replace(p.finetune, dataset=str(data), task="causal_lm", test_ratio=0.2)
    p.evaluate = replace(p.evaluate, max_new_tokens=4, batch_size=4)
    assert [v.id for v in variants.list_variants(p, tiny_loaded) if v.available] == ["base"]
    evaluation, _ = _evaluate(p, tiny_loaded)
    base = evaluation.variants[0]
    assert not base.error and base.scores["perplexity"] > 1.0 and base.scores["text_perplexity"] > 1.0
    turns = [{"role": generation.PLAIN_TEXT, "content": "Note 3: the team"}]
    assert (
        generation.prompt_ids(tiny_loaded.tokenizer, turns)
        == tiny_loaded.tokenizer("Note 3: the team")["input_ids"]
    )


def test_a_task_that_does_not_fit_the_data_says_which_column_is_missing(project, tiny_loaded):
    project.finetune = replace(project.finetune, task="classification")
    with pytest.raises(QuantTuneError, match="reads a text and a label column") as caught:
        run_job(job.run, job.evaluate_params(project, tiny_loaded, ("base",)), JobContext())
    assert "Fine-tuning method step" in caught.value.fix
