"""Inspect: statistics against scipy, recommendations on known shapes, streaming, bad tensors."""

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import save_file

from core.jobs import JobContext
from core.quant.affine import Scheme, fake_quantize
from core.weights import inspect
from core.weights.detail import clip_ranges, detail_of
from core.weights.recommend import Criteria, recommend
from core.weights.stats import classify, tensor_stats

ROOT = Path(__file__).resolve().parents[2]
GEN = torch.Generator().manual_seed(0)


def _student_t(df: int, n: int):
    """Student's t with ``df`` degrees of freedom: Z / sqrt(χ²_df / df), all drawn from GEN."""
    z = torch.randn(n, generator=GEN)
    chi2 = torch.randn(df, n, generator=GEN).square().sum(0)
    return z / (chi2 / df).sqrt()


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize(
    "tensor",
    [
        torch.randn(300, 200, generator=GEN) * 0.02,
        torch.relu(torch.randn(128, 700, generator=GEN)) + 0.05,
        _student_t(3, 200_000),  # from GEN: the same heavy-tailed sample whatever ran before
        torch.randn(600_000, generator=GEN).exp(),  # log-normal: heavy skew, spans many chunks
    ],
    ids=["gaussian", "relu", "student-t", "lognormal-multichunk"],
)
def test_statistics_match_scipy(tensor):
    stats = tensor_stats("w", tensor)
    values = tensor.double().numpy().ravel()
    assert _rel(stats.mean, values.mean()) < 1e-5 or abs(stats.mean - values.mean()) < 1e-9
    assert _rel(stats.std, values.std()) < 1e-5
    assert _rel(stats.skew, scipy.stats.skew(values)) < 1e-4 or abs(stats.skew) < 1e-4
    assert _rel(stats.kurtosis, scipy.stats.kurtosis(values)) < 1e-4
    assert stats.min == values.min() and stats.max == values.max()
    z = np.abs(values - values.mean()) / values.std()
    for k in (2.0, 3.0, 4.5):
        assert stats.outlier_share(k) == pytest.approx(np.mean(z > k), abs=2e-6)


def test_channel_spread_and_zeros():
    w = torch.ones(4, 8)
    w[2] *= 10  # one loud output channel
    w[0, :4] = 0
    stats = tensor_stats("w", w)
    assert stats.channel_spread == pytest.approx(10.0)
    assert stats.zero_share == pytest.approx(4 / 32)


@pytest.mark.parametrize("bits", [4, 8])
def test_shifted_relu_like_is_asymmetric_and_gaussian_symmetric(bits):
    relu = torch.relu(torch.randn(256, 512, generator=GEN)) * 0.05
    gauss = torch.randn(256, 512, generator=GEN) * 0.02
    for tensor, want_symmetric in ((relu, False), (gauss, True)):
        rec = recommend(tensor_stats("w", tensor), tensor, bits, 64, Criteria())
        assert rec.rule_symmetric is want_symmetric
        assert rec.best.symmetric is want_symmetric
        assert rec.agree is True


def test_measured_errors_are_real_quantization_errors():
    w = torch.randn(64, 128, generator=GEN)
    rec = recommend(tensor_stats("w", w), w, 4, 32, Criteria())
    by_label = {r.label: r for r in rec.measured}
    direct = fake_quantize(w, Scheme(4, False, "group", 32))
    mse = float((direct - w).square().mean())
    assert by_label["INT4 asymmetric group-32"].mse == pytest.approx(mse, rel=1e-5)
    # finer granularity never loses to coarser
    assert by_label["INT4 symmetric per-tensor"].mse >= by_label["INT4 symmetric per-channel"].mse
    assert by_label["INT4 symmetric per-channel"].mse >= by_label["INT4 symmetric group-32"].mse


def test_disagreement_is_reported_and_measurement_decides():
    # Centred but bimodal: the rule says symmetric; at 2 bits asymmetric wins by far (4 levels, not 3).
    w = torch.randn(128, 256, generator=GEN) * 0.02
    rec = recommend(tensor_stats("w", w), w, 2, 64, Criteria())
    assert rec.rule_symmetric is True and rec.best.symmetric is False
    assert rec.agree is False and rec.symmetric is False


@pytest.mark.parametrize(
    "tensor, flag",
    [
        (torch.tensor([1.0, float("nan"), 3.0, float("inf")]), "NaN/Inf"),
        (torch.zeros(8, 8), "all zero"),
        (torch.tensor([0.5]), "single value"),
        (torch.arange(10), "integer"),
        (torch.ones(3, dtype=torch.bool), "boolean"),
        (torch.empty(0, 4), "empty"),
        (torch.full((2, 2), float("nan")), "NaN/Inf"),
    ],
)
def test_bad_tensors_are_flagged_not_fatal(tensor, flag):
    stats = tensor_stats("model.layers.0.self_attn.q_proj.weight", tensor)
    assert any(flag in f for f in stats.flags)
    rec = recommend(stats, tensor if stats.quantizable and not stats.nonfinite else None, 4, 64, Criteria())
    assert rec.label  # something to show, never a crash
    detail_of("t", tensor, 10, 4)


def test_nan_tensor_statistics_use_finite_values():
    stats = tensor_stats("w", torch.tensor([1.0, float("nan"), 3.0]))
    assert stats.nonfinite == 1 and stats.mean == 2.0


@pytest.mark.parametrize(
    "name, layer, module",
    [
        ("model.layers.11.self_attn.k_proj.weight", 11, "attn.k"),
        ("model.layers.0.mlp.down_proj.weight", 0, "mlp.down"),
        ("blk.3.ffn_gate.weight", 3, "mlp.gate"),
        ("blk.2.attn_output.weight", 2, "attn.o"),
        ("model.embed_tokens.weight", None, "embedding"),
        ("token_embd.weight", None, "embedding"),
        ("model.norm.weight", None, "norm"),
        ("lm_head.weight", None, "head"),
        ("model.layers.1.self_attn.q_proj.bias", 1, "attn.q bias"),
    ],
)
def test_classify_names(name, layer, module):
    assert classify(name) == (layer, module)


def test_clip_ranges_formulas():
    sym, asym = clip_ranges(-1.0, 3.0, 8)
    assert sym.scale == pytest.approx(3.0 / 127) and sym.zero == 0
    assert asym.scale == pytest.approx(4.0 / 255) and asym.zero == round(1.0 / (4.0 / 255))
    assert asym.lo <= 0 <= asym.hi


@pytest.fixture
def checkpoint(tmp_path):
    tensors = {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=GEN),
        "model.layers.0.mlp.up_proj.weight": torch.relu(torch.randn(32, 16, generator=GEN)),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=GEN) * 0.1,
        "model.layers.0.input_layernorm.weight": torch.ones(16),
        "model.rotary.inv_freq_index": torch.arange(8),
    }
    save_file(
        {k: v[:25] if k.startswith("model.embed") else v for k, v in tensors.items()},
        str(tmp_path / "model-00001.safetensors"),
    )
    save_file(
        {"lm_head.weight": torch.randn(50, 16, generator=GEN)}, str(tmp_path / "model-00002.safetensors")
    )
    return tmp_path


def test_inspect_job_streams_every_shard_and_exports_csv(checkpoint, tmp_path):
    events = []
    report = inspect.run(inspect.InspectParams(str(checkpoint)), JobContext(events.append))
    names = {t.stats.name for t in report.tensors}
    assert "lm_head.weight" in names and "model.layers.0.mlp.up_proj.weight" in names
    assert len(report.tensors) == 6
    assert [e for e in events if e.kind == "progress"][-1].data["done"] == report.parameters
    assert "of 6 tensors" in report.summary()
    rows = list(csv.DictReader(io.StringIO(report.csv_text(3.0))))
    assert len(rows) == 6 and "excess kurtosis" in rows[0]
    ints = next(r for r in rows if r["name"] == "model.rotary.inv_freq_index")
    assert "integer" in ints["flags"] and ints["recommendation"] == "keep as is"
    report.write_csv(tmp_path / "out.csv")
    json.dumps(report.to_dict())  # serialisable for --json


def test_inspect_params_list_every_problem(tmp_path):
    problems = inspect.InspectParams(str(tmp_path / "missing"), bits=5, group_size=0).validate()
    assert len(problems) == 3


def test_inspect_reads_gguf(tmp_path):
    from gguf import GGMLQuantizationType, GGUFWriter

    path = tmp_path / "tiny.gguf"
    writer = GGUFWriter(str(path), "llama")
    weight = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    writer.add_tensor("blk.0.ffn_up.weight", weight, raw_dtype=GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    report = inspect.run(inspect.InspectParams(str(path)), JobContext())
    (only,) = report.tensors
    assert only.stats.shape == (8, 32) and only.stats.module == "mlp.up" and only.stats.layer == 0
    assert only.stats.mean == pytest.approx(float(weight.mean()), rel=1e-5)


STREAM_CHILD = r"""
import json, sys
import torch
from core.jobs import JobContext
from core.weights import inspect
from core.weights.memory_probe import PeakSampler
with PeakSampler() as sampler:
    inspect.run(inspect.InspectParams(sys.argv[1]), JobContext())
print(json.dumps({"growth": sampler.growth}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RssAnon is Linux-only")
def test_streaming_memory_stays_near_the_largest_tensor(tmp_path):
    rows, cols, count = 512, 4096, 24  # 8 MB tensors, 192 MB checkpoint
    for shard in range(0, count, 6):
        save_file(
            {
                f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, cols)
                for i in range(shard, shard + 6)
            },
            str(tmp_path / f"m{shard}.safetensors"),
        )
    out = subprocess.run(
        [sys.executable, "-c", STREAM_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    growth = json.loads(out.stdout.strip().splitlines()[-1])["growth"]
    largest, total = rows * cols * 4, rows * cols * 4 * count
    assert growth < 5 * largest + 32 * 2**20, f"peak anonymous growth {growth / 2**20:.0f} MB"
    assert growth < total / 2


def test_cancel_stops_inspection(checkpoint):
    ctx = JobContext()
    ctx.cancel()
    from core.errors import Cancelled

    with pytest.raises(Cancelled):
        inspect.run(inspect.InspectParams(str(checkpoint)), ctx)


def test_sqnr_is_infinite_when_exact():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    rec = recommend(tensor_stats("w", w), w, 8, 64, Criteria())
    assert any(math.isinf(r.sqnr_db) for r in rec.measured)


def test_rejudging_with_new_thresholds_matches_a_fresh_run(checkpoint):
    strict = Criteria(max_abs_skew=0.01, max_mean_over_std=0.001, asym_margin_db=0.0)
    report = inspect.run(inspect.InspectParams(str(checkpoint)), JobContext())
    fresh = inspect.run(inspect.InspectParams(str(checkpoint), criteria=strict), JobContext())
    rejudged = report.with_criteria(strict)
    assert rejudged.criteria == strict and report.criteria == Criteria()
    for a, b in zip(rejudged.tensors, fresh.tensors, strict=True):
        ra, rb = a.recommendation, b.recommendation
        assert (ra.rule_symmetric, ra.rule_reason, ra.label, ra.agree) == (
            rb.rule_symmetric,
            rb.rule_reason,
            rb.label,
            rb.agree,
        )
        assert [r.score_db for r in ra.measured] == pytest.approx([r.score_db for r in rb.measured])
    assert rejudged.summary() == fresh.summary()
