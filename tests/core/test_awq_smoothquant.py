"""SmoothQuant (core.quant.smoothquant) and AWQ scaling (core.quant.awq) on the tiny 2-layer Llama.

Real LLMs have a few input channels 10–100× larger than the rest: the case both methods are for.
``with_outliers`` makes them here by scaling a few channels of each norm weight by 40.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from core.errors import Cancelled, QuantTuneError
from core.jobs import JobContext
from core.quant.activations import activation_ranges, attach_activation_quant, collect_input_stats, remove
from core.quant.affine import Scheme, fake_quantize
from core.quant.awq import awq_scale, awq_scales, output_error, search_alpha
from core.quant.calibration import linear_layers
from core.quant.smoothquant import smooth, smoothing_groups
from tests.core.calibration_data import one_thread, words  # noqa: F401 - an autouse fixture
from tests.tiny_models import build_tiny_model

W8 = Scheme(8, True, "channel")
W4 = Scheme(4, False, "group", 16)  # the tiny model is 32 and 64 wide


def with_outliers(model):
    with torch.no_grad():
        for block in model.model.layers:
            block.input_layernorm.weight[[3, 17]] *= 40
            block.post_attention_layernorm.weight[[5, 20]] *= 40
    return model


def multi_head_model(tokenizer):
    """The tiny model with as many value heads as query heads (no grouped-query attention)."""
    config = copy.deepcopy(build_tiny_model(tokenizer).config)
    config.num_key_value_heads = config.num_attention_heads
    torch.manual_seed(1)
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def logits(model, batches) -> torch.Tensor:
    return model(batches).logits


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def stats_of(model, batches, keep_rows=256):
    return collect_input_stats(model, batches, linear_layers(model), JobContext(), keep_rows=keep_rows)


@torch.no_grad()
def quantize_weights(model, scheme: Scheme) -> None:
    for linear in linear_layers(model).values():
        linear.weight.copy_(fake_quantize(linear.weight, scheme))


# -- the groups ------------------------------------------------------------------------------------
def test_groups_of_a_llama_block(tiny_tokenizer):
    groups = {g.source_name: g.names for g in smoothing_groups(build_tiny_model(tiny_tokenizer))}
    p = "model.layers.1."
    assert len(groups) == 6  # three per block: grouped-query attention leaves o_proj out
    assert groups[p + "input_layernorm"] == tuple(p + f"self_attn.{x}_proj" for x in "qkv")
    assert groups[p + "post_attention_layernorm"] == (p + "mlp.gate_proj", p + "mlp.up_proj")
    assert groups[p + "mlp.up_proj"] == (p + "mlp.down_proj",)

    groups = {g.source_name: g.names for g in smoothing_groups(multi_head_model(tiny_tokenizer))}
    assert len(groups) == 8 and groups[p + "self_attn.v_proj"] == (p + "self_attn.o_proj",)


def test_other_architectures_are_a_clear_error(tiny_tokenizer, data):
    from transformers import GemmaConfig, GemmaForCausalLM, GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=320, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    size = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    # Gemma has Llama's layout, but its RMSNorm multiplies by (1 + weight): 1/s cannot be folded.
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=320, num_hidden_layers=2, head_dim=8, **size))
    for model in (gpt2, gemma):
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(QuantTuneError, match="SmoothQuant supports Llama-style blocks") as err:
            smooth(model, {}, alpha=0.5)
        assert "plain W8A8" in err.value.fix
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


# -- SmoothQuant -----------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [build_tiny_model, multi_head_model], ids=["gqa", "mha"])
def test_smoothing_alone_keeps_the_model_the_same_function(tiny_tokenizer, data, build):
    calibration, held_out = data
    model = with_outliers(build(tiny_tokenizer))
    reference = logits(model, held_out)
    norm_before = model.model.layers[0].input_layernorm.weight.clone()

    scales = smooth(model, stats_of(model, calibration), alpha=0.5)

    assert len(scales) == len(smoothing_groups(model))
    assert relative(logits(model, held_out), reference) < 1e-4
    assert not torch.allclose(model.model.layers[0].input_layernorm.weight, norm_before)
    # The outlier channels were divided down the most.
    s = scales["model.layers.0.input_layernorm"]
    assert set(s.topk(2).indices.tolist()) == {3, 17}


def w8a8_error(model, calibration, held_out, reference, alpha=None) -> float:
    """Logit error of W8A8: per-channel INT8 weights, static per-tensor INT8 activations."""
    model = copy.deepcopy(model)
    if alpha is not None:
        smooth(model, stats_of(model, calibration), alpha)
    ranges = activation_ranges(stats_of(model, calibration))  # after smoothing: collected again
    quantize_weights(model, W8)
    handles = attach_activation_quant(model, ranges)
    error = relative(logits(model, held_out), reference)
    remove(handles)
    return error


@pytest.mark.parametrize("seed", [0, 1])
def test_smoothing_lowers_the_w8a8_error_with_outlier_channels(tiny_tokenizer, data, seed):
    calibration, held_out = data
    model = with_outliers(build_tiny_model(tiny_tokenizer, seed=seed))
    reference = logits(model, held_out)

    plain = w8a8_error(model, calibration, held_out, reference)
    smoothed = w8a8_error(model, calibration, held_out, reference, alpha=0.5)
    assert smoothed < 0.7 * plain


def test_alpha_outside_0_1_is_refused(tiny_tokenizer):
    with pytest.raises(QuantTuneError, match="between 0 and 1"):
        smooth(build_tiny_model(tiny_tokenizer), {}, alpha=1.5)


# -- AWQ -------------------------------------------------------------------------------------------
def test_awq_folding_keeps_the_model_the_same_function(tiny_tokenizer, data):
    calibration, held_out = data
    model = with_outliers(multi_head_model(tiny_tokenizer))
    reference = logits(model, held_out)

    alphas = awq_scale(model, stats_of(model, calibration), W4, JobContext(), grid=10)

    assert len(alphas) == 8 and all(a in [i / 10 for i in range(11)] for a in alphas.values())
    assert any(a > 0 for a in alphas.values())
    assert relative(logits(model, held_out), reference) < 1e-4


def layer_errors(model, original, held_out) -> float:
    """Σ over the linear layers of ‖X Wᵀ − X' Q(W')ᵀ‖² on held-out inputs: X, W the original
    model's, X', W' the (possibly rescaled) model's, Q INT4 group RTN.

    A layer whose output rows were divided by a later group's scales (up_proj) is compared in the
    original units: each output channel times X Wᵀ / X' W'ᵀ (1 for every other layer).
    """
    before, after = stats_of(original, held_out, keep_rows=512), stats_of(model, held_out, keep_rows=512)
    total = 0.0
    for name, linear in linear_layers(model).items():
        exact = before[name].sample @ original.get_submodule(name).weight.detach().t()
        fp = after[name].sample @ linear.weight.detach().t()
        units = (exact * fp).sum(dim=0) / fp.square().sum(dim=0)
        quantized = after[name].sample @ fake_quantize(linear.weight.detach(), W4).t()
        total += float((exact - units * quantized).square().sum())
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_awq_lowers_the_held_out_layer_error_of_int4_rtn(tiny_tokenizer, data, seed):
    calibration, held_out = data
    original = with_outliers(build_tiny_model(tiny_tokenizer, seed=seed))
    scaled = copy.deepcopy(original)
    awq_scale(scaled, stats_of(original, calibration), W4, JobContext())

    assert layer_errors(scaled, original, held_out) < 0.5 * layer_errors(original, original, held_out)
    reference = logits(original, held_out)
    rtn, awq = copy.deepcopy(original), scaled
    quantize_weights(rtn, W4)
    quantize_weights(awq, W4)
    assert relative(logits(awq, held_out), reference) < 0.9 * relative(logits(rtn, held_out), reference)


def test_alpha_zero_is_plain_rounding_so_the_search_never_loses(tiny_tokenizer, data):
    model = build_tiny_model(tiny_tokenizer)  # no outliers: scaling has little to gain here
    stats = stats_of(model, data[0])
    for group in smoothing_groups(model):
        entry = group.stats_of(stats)
        ones = awq_scales(entry.absmean, 0.0)
        assert torch.equal(ones, torch.ones_like(ones))
        rtn = sum(
            float((entry.sample @ (m.weight - fake_quantize(m.weight, W4)).detach().t()).square().sum())
            for m in group.layers
        )
        weights = [m.weight.detach() for m in group.layers]
        assert output_error(entry.sample, weights, W4, ones) == pytest.approx(rtn, rel=1e-6)
        alpha, scales = search_alpha(entry.sample, entry.absmean, group.layers, W4, grid=20)
        assert output_error(entry.sample, weights, W4, scales) <= rtn
        assert alpha in [i / 20 for i in range(21)]


def test_awq_cancel_leaves_the_model_untouched(tiny_tokenizer, data):
    model = with_outliers(build_tiny_model(tiny_tokenizer))
    stats = stats_of(model, data[0])
    before = copy.deepcopy(model.state_dict())
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        awq_scale(model, stats, W4, ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_awq_without_kept_rows_is_a_clear_error(tiny_tokenizer, data):
    model = build_tiny_model(tiny_tokenizer)
    with pytest.raises(QuantTuneError, match="no calibration rows") as err:
        awq_scale(model, stats_of(model, data[0], keep_rows=0), W4, JobContext())
    assert "keep_rows" in err.value.fix
