"""Quantization-aware training on the tiny model: the grid in the forward pass, straight-through and
LSQ gradients, moving averages, training, resume, and an export that reloads as the trained model."""

import copy
import json
import math

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import load_file
from torch.nn.utils import parametrize
from transformers import LlamaForSequenceClassification

from core.errors import QuantTuneError
from core.finetune import qat, train
from core.finetune.checkpoints import WEIGHTS
from core.finetune.methods import MethodSettings
from core.jobs import JobContext
from core.models import loading
from core.models.sources import resolve
from core.quant.affine import Scheme, dequantize, fake_quantize, qrange, quantize, scale_zero
from core.quant.calibration import calibration_batches, linear_layers
from core.quant.qtensor import block_ranges, quantize_rtn
from tests.core.calibration_data import words
from tests.core.test_finetune_train import write_alpaca
from tests.core.training import train_steps

pytestmark = pytest.mark.usefixtures("single_thread")  # runs repeat bit for bit

LAYERS = 14  # 2 decoder blocks × (q, k, v, o, gate, up, down)


def settings(**changes) -> MethodSettings:
    base = dict(method="qat", rank=4, dropout=0.0, qat_bits=4, qat_group_size=16)
    return MethodSettings(**{**base, **changes})


def windows(tokenizer, seed=1):
    return calibration_batches(tokenizer, words(seed), 4, 48)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["group", "channel"])
def test_the_differentiable_quantizer_equals_the_quantize_step_in_value(symmetric, granularity):
    torch.manual_seed(0)
    rows = torch.randn(6, 40)  # 40 = 2 groups of 16 and a short one
    scheme = Scheme(4, symmetric, granularity, 16)
    lo, hi = block_ranges(rows, scheme)
    scale, zero = scale_zero(lo, hi, 4, symmetric)
    group_len = 16 if granularity == "group" else 40
    ours = qat.fake_quantize_ste(rows, scale, zero, scheme, group_len)
    assert torch.equal(ours, quantize_rtn(rows, scheme).dequantize())
    assert torch.equal(ours, fake_quantize(rows, scheme))
    q = quantize(rows[:, :16], scale[:, :1], zero[:, :1], 4, symmetric)
    assert torch.equal(ours[:, :16], dequantize(q, scale[:, :1], zero[:, :1]))


def test_straight_through_gradients_pass_the_rounding_and_stop_at_the_clamp():
    rows = torch.tensor([[0.26, -0.83, 0.11, 3.0]], requires_grad=True)
    scheme = Scheme(4, True, "channel")
    scale = torch.tensor([[0.1]])  # the codes reach ±7: −8.3 and 30 are clipped
    out = qat.fake_quantize_ste(rows, scale, torch.zeros(1, 1), scheme, 4)
    assert out[0].tolist() == pytest.approx([0.3, -0.7, 0.1, 0.7])
    out.sum().backward()
    assert rows.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_lsq_gradient_of_a_scale_follows_the_paper():
    weight = torch.tensor([[0.26, -0.83, 0.11, 0.02]])
    quantizer = qat.FakeQuantizer(weight, Scheme(4, True, "channel"), "lsq", "w", True)
    with torch.no_grad():
        quantizer.scale.fill_(0.1)
    quantizer(weight).sum().backward()
    x = weight / 0.1  # in range: round(x) − x; clipped: the clamp bound (−7 for −8.3)
    expected = (torch.round(x[0, [0, 2, 3]]) - x[0, [0, 2, 3]]).sum() + (-7)
    assert quantizer.scale.grad.item() == pytest.approx(expected.item() / math.sqrt(4 * 7), rel=1e-5)


def test_every_decoder_linear_is_fake_quantized_and_peft_wraps_it(tiny_loaded):
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings())
    wrapped = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert len(wrapped) == LAYERS and all(
        parametrize.is_parametrized(m.base_layer, "weight") for m in wrapped
    )
    assert not parametrize.is_parametrized(model.get_output_embeddings())
    assert len(qat.quantizers(model)) == LAYERS
    assert [q.layer for q in qat.quantizers(model) if q.watched] == ["model.layers.0.self_attn.q_proj"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    averages = [n for n in trainable if n.endswith((".0.observed_lo", ".0.observed_hi"))]
    lora = [n for n in trainable if ".lora_A." in n or ".lora_B." in n]
    assert len(averages) == len(lora) == 2 * LAYERS and len(trainable) == 4 * LAYERS
    layer = tiny_loaded.model.get_submodule("model.layers.1.mlp.down_proj").weight
    seen = model.get_submodule("base_model.model.model.layers.1.mlp.down_proj.base_layer").weight
    assert torch.equal(seen, quantize_rtn(layer, qat.scheme_of(settings())).dequantize())


def test_lora_through_the_quantizer_gets_the_straight_through_gradient(tiny_loaded):
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_scales="lsq"))
    lora = model.get_submodule("base_model.model.model.layers.0.mlp.up_proj")
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_(0, 0.05)
    quantizer = lora.base_layer.parametrizations.weight[0]
    x = torch.randn(3, 32)
    lora(x).square().sum().backward()
    peft_grad = lora.lora_B["default"].weight.grad.clone()
    lora.zero_grad()
    # the same layer written plainly: x · fake_quantize(W + ΔW)ᵀ
    target = lora.base_layer.parametrizations.weight.original + lora.get_delta_weight("default")
    torch.nn.functional.linear(x, quantizer.fake_quantize(target)).square().sum().backward()
    assert torch.allclose(peft_grad, lora.lora_B["default"].weight.grad, atol=1e-5)
    assert peft_grad.abs().sum() > 0


def test_full_qat_trains_every_base_weight_through_the_quantizer(tiny_loaded, tiny_tokenizer):
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_lora=False))
    ids = windows(tiny_tokenizer)
    model(input_ids=ids, labels=ids).loss.backward()
    originals = [m.parametrizations.weight.original for m in linear_layers(model).values()
                 if parametrize.is_parametrized(m)]  # fmt: skip
    assert len(originals) == LAYERS and all(w.grad is not None and w.grad.abs().sum() > 0 for w in originals)
    assert model.get_input_embeddings().weight.grad is not None  # the rest trains too, unquantized


def test_moving_averages_move_once_per_new_weight_and_not_in_eval(tiny_loaded, tiny_tokenizer):
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_lora=False))
    quantizer = qat.quantizers(model)[0]
    start = quantizer.observed_hi.detach().clone()
    ids = windows(tiny_tokenizer)
    train_steps(model, ids, 3)
    stepped = quantizer.observed_hi.detach().clone()
    model(input_ids=ids)  # the first look at the weights of the last step
    after = quantizer.observed_hi.detach().clone()
    assert not torch.equal(stepped, start) and not torch.equal(after, stepped)
    assert quantizer.observed_hi.grad is None
    for mode in (model.train, model.eval):
        mode()
        model(input_ids=ids)  # the same weights again (train), or evaluation: no new observation
        assert torch.equal(quantizer.observed_hi, after)


def test_lsq_scales_and_zero_points_get_gradients_and_change(tiny_loaded, tiny_tokenizer):
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_scales="lsq"))
    quantizer = qat.quantizers(model)[3]
    start = quantizer.scale.detach().clone()
    ids = windows(tiny_tokenizer)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    assert quantizer.scale.grad.abs().sum() > 0 and quantizer.zero.grad is not None
    model.zero_grad()
    train_steps(model, ids, 3, lr=1e-3)
    assert not torch.equal(quantizer.scale.detach(), start)


@pytest.mark.parametrize(
    "method",
    [settings(), settings(qat_lora=False, qat_scales="lsq", qat_symmetric=True, qat_group_size=0)],
    ids=["lora-moving-average", "full-lsq-symmetric-per-channel"],
)
def test_training_learns_reports_s_and_z_and_saves_a_quantized_model(tiny_loaded, tmp_path, method):
    data = write_alpaca(tmp_path / "few.jsonl", 4)
    events = []
    p = train.TrainParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "out", method=method,
                          max_length=64, validation_ratio=0.0, batch_size=4, learning_rate=1e-2,
                          max_steps=20)  # fmt: skip
    report = train.run(p, JobContext(events.append))
    # rank-4 LoRA on the random 2-layer model learns slowly: 5.78 -> 5.41 measured (plain LoRA: 5.36)
    assert report.losses[-1] < report.losses[0] - 0.3, report.losses
    metrics = [e.data for e in events if e.kind == "metric"]
    scales = [m["value"] for m in metrics if m["name"] == "qat_scale"]
    zeros = [m["value"] for m in metrics if m["name"] == "qat_zero_point"]
    assert len(scales) == len(zeros) == 20 and all(math.isfinite(v) for v in scales + zeros)
    assert len(set(scales)) > 1 and all(z == int(z) for z in zeros)
    folder = tmp_path / "out" / qat.EXPORT_FOLDER
    reloaded = loading.run(loading.LoadParams(resolve(str(folder)), device="cpu"), JobContext())
    ids = windows(tiny_loaded.tokenizer)
    report.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded.model(input_ids=ids).logits, report.model(input_ids=ids).logits,
                              atol=1e-5)  # fmt: skip
    comparison = json.loads((folder / qat.REPORT_FILE).read_text())
    assert comparison["export_max_abs_difference"] == 0.0 and comparison["qat"] > 1.0


def test_the_export_holds_the_learned_scales_and_reloads_exactly(tiny_loaded, tiny_tokenizer, tmp_path):
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_lora=False, qat_scales="lsq"))
    ids = windows(tiny_tokenizer)
    train_steps(model, ids, 4, lr=1e-4)
    model.eval()
    folder = qat.export_quantized(model, settings(), tmp_path / "q", tiny_tokenizer)
    stored = load_file(folder / "quantized.safetensors")
    for quantizer in qat.quantizers(model):
        scale, zero = quantizer.current()
        assert torch.equal(stored[f"{quantizer.layer}.scale"], scale.detach())
        assert torch.equal(stored[f"{quantizer.layer}.zero"].float(), zero.detach())
        assert torch.equal(scale, quantizer.scale)  # learned, not re-derived (and still positive)
    reloaded = loading.run(loading.LoadParams(resolve(str(folder)), device="cpu"), JobContext())
    with torch.no_grad():  # the same weights bit for bit, so the same logits
        assert torch.equal(reloaded.model(input_ids=ids).logits, model(input_ids=ids).logits)
    meta = json.loads((folder / "quantization.json").read_text())
    assert len(meta["layers"]) == LAYERS and meta["qat"]["export_max_abs_difference"] == 0.0


def test_untrained_qat_is_plain_rtn_and_training_on_the_text_beats_it(tiny_loaded, tiny_tokenizer):
    method = settings(qat_lora=False, qat_bits=3)
    model = qat.apply(copy.deepcopy(tiny_loaded.model), method)
    ids = windows(tiny_tokenizer)
    untrained = qat.compare_with_ptq(tiny_loaded, model, method, ids)
    assert untrained.qat == untrained.ptq  # the grid starts as RTN's: min-max per group
    train_steps(model, ids, 8)
    trained = qat.compare_with_ptq(tiny_loaded, model, method, ids)
    assert trained.qat < trained.ptq and trained.ptq == untrained.ptq and trained.base == untrained.base


@pytest.mark.parametrize(
    "method",
    [settings(dropout=0.1), settings(qat_lora=False, qat_scales="lsq")],
    ids=["lora-ema", "full-lsq"],
)
def test_resume_continues_scales_and_averages_bit_for_bit(tiny_loaded, tmp_path, method):
    data = write_alpaca(tmp_path / "rows.jsonl", 24)
    p = train.TrainParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "a", method=method,
                          max_length=64, validation_ratio=0.0, batch_size=4, learning_rate=5e-3,
                          max_steps=6, save_every=3)  # fmt: skip
    straight = train.run(p, JobContext())
    resumed = train.run(
        train.TrainParams(
            **{**p.__dict__, "output": tmp_path / "b", "resume_from": tmp_path / "a/checkpoints/step-3"}
        ),
        JobContext(),
    )
    assert resumed.losses == straight.losses
    a = load_file(tmp_path / "a/checkpoints/step-6" / WEIGHTS)
    b = load_file(tmp_path / "b/checkpoints/step-6" / WEIGHTS)
    state = [k for k in a if k.endswith((".observed_lo", ".observed_hi", ".scale", ".zero"))]
    assert len(state) == 2 * LAYERS and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_settings_with_problems_are_named(tiny_loaded):
    with pytest.raises(QuantTuneError, match="2 to 8 bits.*unknown QAT scales"):
        qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_bits=1, qat_scales="minmax"))
    classifier = LlamaForSequenceClassification(tiny_loaded.model.config)
    with pytest.raises(QuantTuneError, match="QAT trains language models"):
        qat.apply(classifier, settings())
    with pytest.raises(QuantTuneError, match="no linear layer 'lm_head'"):
        qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_watch="lm_head"))
    model = qat.apply(copy.deepcopy(tiny_loaded.model), settings(qat_watch="model.layers.1.mlp.down_proj"))
    watched = [q for q in qat.quantizers(model) if q.watched]
    assert [q.layer for q in watched] == ["model.layers.1.mlp.down_proj"]
    assert qat.metrics(model)["qat_scale"] == watched[0].current()[0][0, 0].item()


@pytest.mark.parametrize("symmetric", [False, True])
def test_the_hand_written_gradients_equal_autograd_through_the_formula(symmetric):
    torch.manual_seed(1)
    scheme = Scheme(3, symmetric, "group", 16)
    rows = torch.randn(4, 48)
    lo, hi = block_ranges(rows, scheme)
    start_scale, start_zero = scale_zero(0.8 * lo, 0.8 * hi, 3, symmetric)  # a tight grid: some clipping
    grad_out = torch.randn(4, 48)
    results = []
    for formula in ("ours", "autograd"):
        x = rows.clone().requires_grad_(True)
        scale, zero = start_scale.clone().requires_grad_(True), start_zero.clone().requires_grad_(True)
        if formula == "ours":
            out = qat.fake_quantize_ste(x, scale, zero, scheme, 16)
        else:
            s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
            codes = torch.clamp(qat.round_ste(x.reshape(4, 3, 16) / s) + z, *qrange(3, symmetric))
            out = (s * (codes - z)).reshape(4, 48)
        out.backward(grad_out)
        results.append((out.detach(), x.grad, scale.grad, zero.grad))
    (out, dx, ds, dz), (ref, ref_dx, ref_ds, ref_dz) = results
    assert torch.equal(out, ref) and torch.equal(dx.eq(0), ref_dx.eq(0)) and 0 < dx.eq(0).sum() < dx.numel()
    assert torch.allclose(dx, ref_dx)  # autograd's is g·S/S, ours g itself
    assert torch.allclose(ds, ref_ds, atol=1e-5) and ds.abs().sum() > 0
    if not symmetric:
        assert torch.allclose(dz, ref_dz, atol=1e-6) and dz.abs().sum() > 0
