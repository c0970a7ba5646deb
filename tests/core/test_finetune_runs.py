"""Training runs in a project: recorded at start, settings mapped to the job, reloaded after."""

import json

import pytest
import torch

from core import project as projects
from core.finetune import runs, train
from core.jobs import JobContext
from tests.core.test_finetune_train import write_alpaca


@pytest.fixture
def project(tmp_path):
    return projects.create_project("ft", root=tmp_path)


def test_the_bundled_datasets_are_found():
    for name, (_title, task) in runs.BUNDLED.items():
        assert runs.bundled_dataset(name).is_file()
        assert task in ("instruction", "classification", "qa", "summarization")
    assert runs.dataset_path(projects.FinetuneSettings()).name == runs.DEFAULT_DATASET


@pytest.mark.parametrize("method", ["lora", "ln", "qat", "qlora", "adapters"])
def test_a_run_is_recorded_trained_and_reloaded(project, tiny_loaded, tmp_path, method):
    settings = projects.FinetuneSettings(
        dataset=str(write_alpaca(tmp_path / "rows.jsonl", 40)), method={"method": method, "rank": 4},
        max_length=64, max_steps=3, learning_rate=5e-3, eval_every=0, save_every=2,
    )  # fmt: skip
    run_id, folder = runs.new_train_run(project, settings)
    record = runs.find(project, run_id)
    assert record["status"] == "running" and record["settings"]["method"]["method"] == method
    assert record["label"].endswith("· rows")
    params = runs.train_params(settings, tiny_loaded, folder)
    assert params.method.rank == 4 and params.test_ratio == 0.1
    report = train.run(params, JobContext())
    runs.finish_train_run(project, run_id, "finished", report.to_dict())
    assert record["summary"]["steps"] == 3 and runs.has_final(project, record)
    assert [c[0] for c in runs.checkpoints(project, record)] == [2, 3]
    assert [h["step"] for h in runs.history(project, record)] == [1, 2, 3]
    projects.save_project(project)
    json.dumps(projects.load_project(project.folder).to_dict())  # the record is plain JSON

    reloaded = runs.load_trained(tiny_loaded, folder / "final")
    ids = torch.tensor([[1, 5, 9, 13]])
    report.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, report.model(input_ids=ids).logits)
    runs.delete_train_run(project, run_id)
    assert not folder.exists() and project.train_runs == []


def test_question_answering_and_summaries_train_as_instructions():
    assert runs.core_task("qa") == runs.core_task("summarization") == "instruction"
    assert runs.core_task("classification") == "classification"


def test_a_bundled_sample_is_saved_by_name_and_a_run_knows_its_model(project, tiny_loaded):
    settings = projects.FinetuneSettings(dataset="bundled:qa-planets.jsonl")
    assert runs.dataset_path(settings) == runs.bundled_dataset("qa-planets.jsonl")
    run_id, _folder = runs.new_train_run(project, settings, tiny_loaded.ref.to_dict())
    record = runs.find(project, run_id)
    assert record["label"].endswith("· qa-planets") and runs.model_problem(record, tiny_loaded) == ""
    record["model"] = {"kind": "folder", "location": "/elsewhere", "name": "other-model"}
    assert "This run trained other-model" in runs.model_problem(record, tiny_loaded)
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "val_loss": 1.7}, {"step": 3, "loss": 1.2}]
    assert runs.summary_from_history(history) == {
        "steps": 3, "final_train_loss": 1.2, "best_validation_loss": 1.7
    }  # fmt: skip
