"""The Quantize job end to end on a tiny model: report, size, perplexity, save and exact reload."""

import dataclasses
import json

import pytest
import torch

from core.errors import InvalidSettings
from core.jobs import JobContext, run_job
from core.quant import job, runs
from core.quant.artifact import load_quantized

FAST = {"eval_window": 32, "eval_max_tokens": 256}


def test_rtn_report_and_exact_reload(tiny_loaded, tmp_path):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    params = job.QuantizeParams(tiny_loaded, precision="int4", granularity="group", group_size=32,
                                output=str(tmp_path / "int4"), **FAST)  # fmt: skip
    report = run_job(job.run, params, JobContext())
    assert len(report.layers) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 blocks; no head
    assert report.size_after_bytes < report.size_before_bytes
    assert report.perplexity_before > 1 and report.perplexity_after > 1
    assert all(layer.sqnr_db > 10 for layer in report.layers)
    # the loaded model is untouched
    assert all(torch.equal(v, tiny_loaded.model.state_dict()[k]) for k, v in before.items())
    model, _, stored, meta = load_quantized(tmp_path / "int4")
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, report.model(ids).logits)
    assert meta["report"]["settings"]["scheme"] == "INT4 asymmetric group-32"
    saved = json.loads((tmp_path / "int4" / "report.json").read_text())
    assert saved["perplexity_after"] == pytest.approx(report.perplexity_after)


def test_more_bits_lose_less(tiny_loaded):
    errors = {}
    for precision in ("int8", "int4", "int2"):
        params = job.QuantizeParams(tiny_loaded, precision=precision, granularity="channel", **FAST)
        report = run_job(job.run, params, JobContext())
        errors[precision] = sum(layer.mse for layer in report.layers)
    assert errors["int8"] < errors["int4"] < errors["int2"]


def test_fp16_cast_and_kept_layers(tiny_loaded):
    report = run_job(job.run, job.QuantizeParams(tiny_loaded, precision="bf16", **FAST), JobContext())
    assert report.size_after_bytes == report.size_before_bytes // 2
    kept = job.QuantizeParams(
        tiny_loaded, precision="int4", keep_layers=("down_proj",), measure_perplexity=False
    )
    layers = run_job(job.run, kept, JobContext()).layers
    assert layers and all((layer.bits == 32) == ("down_proj" in layer.name) for layer in layers)
    assert all(layer.mse == 0.0 for layer in layers if layer.bits == 32)  # left as they were


def test_every_problem_is_listed(tiny_loaded):
    bad = {"precision": "int5", "group_size": 48, "method": "awq", "observer": "entropy", "percentile": 10}
    params = job.QuantizeParams(tiny_loaded, granularity="group", **bad)
    with pytest.raises(InvalidSettings) as info:
        run_job(job.run, params, JobContext())
    assert len(info.value.problems) == 5


def test_cli_quantize_json(tiny_model_dir, tmp_path, capsys):
    from core import cli

    args = ["--precision", "int8", "--granularity", "channel", "--eval-text", str(_text(tmp_path))]
    code = cli.main(["quantize", str(tiny_model_dir), *args, "--output", str(tmp_path / "q"), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert (
        report["settings"]["scheme"] == "INT8 asymmetric per-channel"
        and (tmp_path / "q" / "report.json").is_file()
    )


def _text(tmp_path):
    from core.evaluate.perplexity import bundled_text

    path = tmp_path / "eval.txt"
    path.write_text(bundled_text("heldout"))
    return path


def test_gptq_with_mse_ranges_runs_and_reloads(tiny_loaded, tmp_path):
    calibration = {"calibration_samples": 4, "calibration_seq_len": 32}
    params = job.QuantizeParams(tiny_loaded, precision="int4", group_size=32, method="gptq", observer="mse",
                                output=str(tmp_path / "g"), **calibration, **FAST)  # fmt: skip
    report = run_job(job.run, params, JobContext())
    assert report.settings["method"] == "gptq" and len(report.layers) == 14
    model, _, _, _ = load_quantized(tmp_path / "g")
    ids = torch.tensor([[3, 8, 13, 21]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, report.model(ids).logits)


def test_layer_overrides_keep_chosen_layers_at_other_precisions(tiny_loaded, tmp_path):
    down, up = "model.layers.0.mlp.down_proj", "model.layers.1.mlp.up_proj"
    overrides = ((down, "int8"), (up, "fp32"))
    params = job.QuantizeParams(tiny_loaded, precision="int4", granularity="group", group_size=32,
                                overrides=overrides, output=str(tmp_path / "mixed"), **FAST)  # fmt: skip
    report = run_job(job.run, params, JobContext())
    bits = {layer.name: layer.bits for layer in report.layers}
    assert bits[down] == 8 and bits[up] == 32 and bits["model.layers.0.mlp.up_proj"] == 4
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name[up].mse == 0.0  # left as it was
    plain = run_job(job.run, job.QuantizeParams(tiny_loaded, precision="int4", group_size=32, **FAST),
                    JobContext())  # fmt: skip
    assert report.size_after_bytes > plain.size_after_bytes  # 8 and 32 bits cost more than 4
    model, _, stored, _ = load_quantized(tmp_path / "mixed")
    assert stored[down].scheme.bits == 8 and up not in stored
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, report.model(ids).logits)


def test_unknown_layer_precision_is_refused(tiny_loaded):
    params = job.QuantizeParams(tiny_loaded, overrides=(("model.layers.0.mlp.down_proj", "int5"),))
    with pytest.raises(InvalidSettings, match="int5"):
        run_job(job.run, params, JobContext())


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_bitsandbytes_runs_report_and_reload_exactly(tiny_loaded, tmp_path, precision):
    from core.quant import runs

    folder = tmp_path / precision
    params = job.QuantizeParams(
        tiny_loaded, precision=precision, method="bitsandbytes", output=str(folder), **FAST
    )
    report = run_job(job.run, params, JobContext())
    assert len(report.layers) == 14 and all(layer.sqnr_db > 5 for layer in report.layers)
    assert report.size_after_bytes < report.size_before_bytes and report.quantized is None
    assert report.settings["scheme"] == f"bitsandbytes {precision.upper()}"
    assert json.loads((folder / "config.json").read_text())["quantization_config"]
    reloaded = run_job(runs.reload_run, runs.ReloadParams(folder), JobContext())
    assert reloaded.identical is True and reloaded.quantized is None


def test_bitsandbytes_settings_are_checked(tiny_loaded):
    for bad, message in (
        ({"precision": "nf4", "method": "rtn"}, "choose the method bitsandbytes"),
        ({"precision": "int4", "method": "bitsandbytes"}, "NF4, FP4 or INT8"),
        ({"precision": "int8", "method": "bitsandbytes", "overrides": (("x", "fp16"),)}, "per-layer"),
    ):
        with pytest.raises(InvalidSettings, match=message):
            run_job(job.run, job.QuantizeParams(tiny_loaded, **bad), JobContext())


CALIBRATED = {"calibration_samples": 2, "calibration_seq_len": 32}


def test_awq_run_reports_against_the_rescaled_weights(tiny_loaded):
    params = job.QuantizeParams(
        tiny_loaded, precision="int4", group_size=32, method="awq", **CALIBRATED, **FAST
    )
    report = run_job(job.run, params, JobContext())
    assert report.settings["method"] == "awq" and len(report.layers) == 14
    assert all(10 < layer.sqnr_db < 40 for layer in report.layers)  # Q(W·s) against W·s, not against W


def test_w8a8_with_smoothquant_saves_its_ranges_and_reloads_exactly(tiny_loaded, tmp_path):
    from core.quant import runs

    params = job.QuantizeParams(tiny_loaded, precision="int8", granularity="channel", symmetric=True,
                                activations=True, smoothquant=True, output=str(tmp_path / "w8a8"),
                                **CALIBRATED, **FAST)  # fmt: skip
    report = run_job(job.run, params, JobContext())
    plain = dataclasses.replace(params, activations=False, smoothquant=False, output="")
    weight_only = run_job(job.run, plain, JobContext())
    assert report.perplexity_after != weight_only.perplexity_after  # the inputs are quantized too
    meta = json.loads((tmp_path / "w8a8" / "quantization.json").read_text())
    assert len(meta["activations"]["layers"]) == 14
    reloaded = run_job(runs.reload_run, runs.ReloadParams(tmp_path / "w8a8"), JobContext())
    assert reloaded.identical is True


def test_activation_settings_are_checked(tiny_loaded):
    for bad, message in (
        ({"precision": "int4", "activations": True}, "W8A8"),
        ({"precision": "int8", "smoothquant": True}, "SmoothQuant prepares W8A8"),
        ({"precision": "fp16", "method": "awq"}, "AWQ is for integer"),
    ):
        with pytest.raises(InvalidSettings, match=message):
            run_job(job.run, job.QuantizeParams(tiny_loaded, **bad), JobContext())


def test_embeddings_quantized_with_a_tied_head_reload_exactly_and_shrink(tiny_loaded, tmp_path):
    from core.project import QuantizeSettings
    from core.quant import plan

    base = {"precision": "int4", "group_size": 32, **FAST}
    plain = run_job(job.run, job.QuantizeParams(tiny_loaded, **base), JobContext())
    params = job.QuantizeParams(tiny_loaded, include_embeddings=True, output=str(tmp_path / "emb"), **base)
    report = run_job(job.run, params, JobContext())
    assert report.layers[0].name == "model.embed_tokens" and report.layers[0].bits == 4
    assert report.size_after_bytes < plain.size_after_bytes
    settings = QuantizeSettings(precision="int4", group_size=32, symmetric=False, include_embeddings=True)
    assert plan.estimate_size(tiny_loaded.model, settings).bytes_after == pytest.approx(
        report.size_after_bytes, rel=1e-3
    )
    model, _, stored, _ = load_quantized(tmp_path / "emb")
    assert "model.embed_tokens" in stored
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, report.model(ids).logits)
    if tiny_loaded.model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.fixture
def tied_loaded(tiny_loaded, tiny_tokenizer):
    from tests.tiny_models import build_tiny_model

    model = build_tiny_model(tiny_tokenizer, tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return dataclasses.replace(tiny_loaded, model=model)


def test_a_tied_head_with_embeddings_is_rounded_once(tied_loaded, tmp_path):
    from core.project import QuantizeSettings
    from core.quant import plan

    base = {"precision": "int4", "group_size": 32, "include_head": True, "include_embeddings": True}
    params = job.QuantizeParams(tied_loaded, output=str(tmp_path / "tied"), **base, **FAST)
    report = run_job(job.run, params, JobContext())
    names = [layer.name for layer in report.layers]
    assert "model.embed_tokens" in names and "lm_head" not in names
    assert 0 < report.size_after_bytes < report.size_before_bytes / 4
    estimate = plan.estimate_size(tied_loaded.model, QuantizeSettings(symmetric=False, **base))
    assert estimate.bytes_after == pytest.approx(report.size_after_bytes, rel=1e-3)
    reloaded = run_job(runs.reload_run, runs.ReloadParams(tmp_path / "tied"), JobContext())
    assert reloaded.identical is True
    budget = estimate.bytes_after * 1.05 / 1e6  # the budget the Precision pane suggests fits
    mixed = job.QuantizeParams(tied_loaded, budget_mb=budget, calibration_seq_len=32, **base, **FAST)
    assert run_job(job.run, mixed, JobContext()).size_after_bytes <= budget * 1e6


def test_fp16_runs_are_saved_at_half_the_size_and_reload_exactly(tiny_loaded, tmp_path):
    params = job.QuantizeParams(tiny_loaded, precision="fp16", output=str(tmp_path / "half"), **FAST)
    report = run_job(job.run, params, JobContext())
    stored = (tmp_path / "half" / "quantized.safetensors").stat().st_size
    assert stored < report.size_before_bytes * 0.6
    reloaded = run_job(runs.reload_run, runs.ReloadParams(tmp_path / "half"), JobContext())
    assert reloaded.identical is True
