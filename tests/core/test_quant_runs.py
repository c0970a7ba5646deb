"""Quantize runs recorded in the project, compared and deleted."""

import pytest
import torch

from core import project as projects
from core.errors import QuantTuneError
from core.jobs import JobContext, run_job
from core.quant import job, runs
from core.quant.artifact import load_quantized

FAST = {"eval_window": 32, "eval_max_tokens": 256}


def test_runs_are_recorded_reloaded_and_deleted(tiny_loaded, tmp_path):
    p = projects.create_project("runs", root=tmp_path)
    ids = []
    for precision in ("int8", "int4"):
        run_id, folder = runs.new_run_folder(p, {"precision": precision, "method": "rtn"})
        params = job.QuantizeParams(
            tiny_loaded, precision=precision, group_size=32, output=str(folder), **FAST
        )
        report = run_job(job.run, params, JobContext())
        record = runs.record_run(p, run_id, report.to_dict())
        assert record["folder"].startswith("artifacts/quantized/")
        ids.append(run_id)
    projects.save_project(p)
    again = projects.load_project(p.folder)
    listed = runs.quantize_runs(again)
    assert [r["id"] for r in listed] == ids and ids[0] != ids[1]
    assert listed[0]["label"] == "INT8 asymmetric group-32 · RTN · minmax"
    assert listed[1]["summary"]["size_after_bytes"] < listed[0]["summary"]["size_after_bytes"]
    assert len(runs.read_report(again, listed[1])["layers"]) == 14
    model, *_ = load_quantized(runs.run_path(again, listed[1]))
    assert model is not None
    runs.delete_run(again, ids[0])
    assert [r["id"] for r in runs.quantize_runs(again)] == ids[1:]
    assert sorted(x.name for x in (p.folder / "artifacts" / "quantized").iterdir()) == ids[1:]


def test_a_missing_report_names_the_run(tmp_path):
    p = projects.create_project("gone", root=tmp_path)
    record = {"id": "x", "kind": "quantize", "label": "INT4 · RTN", "folder": "artifacts/quantized/x"}
    with pytest.raises(QuantTuneError, match="INT4 · RTN") as caught:
        runs.read_report(p, record)
    assert "delete the run" in caught.value.fix


def test_a_reloaded_run_answers_exactly_as_when_it_was_quantized(tiny_loaded, tmp_path):
    params = job.QuantizeParams(
        tiny_loaded, precision="int4", group_size=32, output=str(tmp_path / "r"), **FAST
    )
    report = run_job(job.run, params, JobContext())
    assert report.fingerprint and set(report.quantized) == {layer.name for layer in report.layers}
    reloaded = run_job(runs.reload_run, runs.ReloadParams(tmp_path / "r"), JobContext())
    assert reloaded.identical is True and reloaded.max_difference == 0.0
    assert set(reloaded.quantized) == set(report.quantized)
    # a tampered file is noticed
    from safetensors.torch import load_file, save_file

    path = tmp_path / "r" / "quantized.safetensors"
    tensors = load_file(path)
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 1.5
    save_file(tensors, path)
    changed = run_job(runs.reload_run, runs.ReloadParams(tmp_path / "r"), JobContext())
    assert changed.identical is False and changed.max_difference > 0


def test_a_saved_run_and_its_copy_load_like_any_model(tiny_loaded, tmp_path):
    from core.models import loading, sources

    folder = tmp_path / "run"
    params = job.QuantizeParams(tiny_loaded, precision="int4", group_size=32, output=str(folder), **FAST)
    report = run_job(job.run, params, JobContext())
    copy = run_job(runs.copy_run, runs.CopyParams(folder, tmp_path / "copy"), JobContext())
    assert runs.CopyParams(folder, copy).validate()  # the target exists now: refused
    loaded = run_job(loading.run, loading.LoadParams(sources.resolve(str(copy)), device="cpu"), JobContext())
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, report.model(ids).logits)
