"""Input statistics of linear layers (core.quant.activations.collect_input_stats) and static
activation quantization (W8A8 hooks), on the tiny 2-layer Llama."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import Cancelled, QuantTuneError
from core.jobs import JobContext
from core.quant import activations
from core.quant.activations import (
    activation_ranges,
    attach_activation_quant,
    collect_input_stats,
    ranges_from_json,
    ranges_to_json,
    remove,
)
from core.quant.calibration import linear_layers
from tests.core.calibration_data import one_thread, words  # noqa: F401 - an autouse fixture
from tests.tiny_models import build_tiny_model

DOWN = "model.layers.1.mlp.down_proj"


@pytest.fixture
def model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


def no_hooks_left(model) -> bool:
    return all(not module._forward_pre_hooks for module in model.modules())


def captured_inputs(model, name: str, batches) -> torch.Tensor:
    """Every input row a layer gets in a plain forward pass, by a hook of the test's own."""
    rows = []
    handle = model.get_submodule(name).register_forward_pre_hook(
        lambda module, args: rows.append(args[0].reshape(-1, args[0].shape[-1]).clone())
    )
    with torch.no_grad():
        model(batches)
    handle.remove()
    return torch.cat(rows)


# -- collect_input_stats ---------------------------------------------------------------------------
def test_stats_match_the_inputs_a_separate_hook_sees(model, data, monkeypatch):
    monkeypatch.setattr(activations, "TOKENS_PER_CHUNK", 128)  # 4 chunks of 2 samples
    calibration = data[0]
    layers = linear_layers(model)
    stats = collect_input_stats(model, calibration, layers, JobContext(), keep_rows=100)

    assert sorted(stats) == sorted(layers)
    x = captured_inputs(model, DOWN, calibration)
    down = stats[DOWN]
    assert x.shape == (8 * 64, 64) and down.tokens == 8 * 64
    assert down.absmax.shape == down.absmean.shape == down.sq_mean.shape == (64,)
    assert down.absmax.dtype == torch.float32
    assert torch.equal(down.absmax, x.abs().amax(dim=0))
    assert torch.allclose(down.absmean, x.abs().mean(dim=0), rtol=1e-5)
    assert torch.allclose(down.sq_mean, x.square().mean(dim=0), rtol=1e-5)
    observed = down.observer.range(8, False)
    assert (observed.lo, observed.hi) == (float(x.min()), float(x.max()))
    # The sample: 100 distinct rows of the real inputs, drawn from every chunk.
    assert down.sample.shape == (100, 64)
    matches = (down.sample.unsqueeze(1) == x.unsqueeze(0)).all(dim=2)
    where = matches.float().argmax(dim=1)
    assert matches.any(dim=1).all() and where.unique().numel() == 100
    assert where.min() < 128 and where.max() >= 3 * 128
    assert no_hooks_left(model)


def test_readers_of_one_input_share_their_statistics(model, data):
    stats = collect_input_stats(model, data[0], linear_layers(model), JobContext(), keep_rows=16)
    attn = "model.layers.0.self_attn."
    assert stats[attn + "q_proj"] is stats[attn + "k_proj"] is stats[attn + "v_proj"]
    assert stats[attn + "o_proj"] is not stats[attn + "q_proj"]
    assert stats["model.layers.0.mlp.gate_proj"] is stats["model.layers.0.mlp.up_proj"]
    assert stats[attn + "q_proj"].tokens == 8 * 64  # counted once, not three times
    again = collect_input_stats(model, data[0], linear_layers(model), JobContext(), keep_rows=16)
    assert torch.equal(again[DOWN].sample, stats[DOWN].sample)  # a fixed seed


def test_the_head_is_calibrated_only_when_listed(model, data):
    layers = linear_layers(model, include_head=True)
    stats = collect_input_stats(model, data[0], layers, JobContext(), observer="percentile", keep_rows=0)
    assert stats["lm_head"].absmax.shape == (32,) and stats["lm_head"].sample.shape == (0, 32)
    clipped = stats["lm_head"].observer.range(8, True)
    assert clipped.lo == -clipped.hi and clipped.hi > 0


def test_cancel_before_and_between_chunks(model, data, monkeypatch):
    monkeypatch.setattr(activations, "TOKENS_PER_CHUNK", 128)
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        collect_input_stats(model, data[0], linear_layers(model), ctx)

    events = []

    def cancel_after_first_chunk(event):
        events.append(event)
        ctx.cancel()

    ctx = JobContext(cancel_after_first_chunk)
    with pytest.raises(Cancelled):
        collect_input_stats(model, data[0], linear_layers(model), ctx)
    assert [(e.data["done"], e.data["total"]) for e in events] == [(1, 4)]
    assert no_hooks_left(model)


def test_nan_activations_name_the_layer_and_the_fix(model, data):
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[0] = float("nan")
    with pytest.raises(
        QuantTuneError, match=r"NaN activations in layer model\.layers\.1\.mlp\.gate_proj"
    ) as err:
        collect_input_stats(model, data[0], linear_layers(model), JobContext())
    assert "calibration text" in err.value.fix
    assert no_hooks_left(model)


def test_no_calibration_data_is_a_clear_error(model):
    with pytest.raises(QuantTuneError, match="calibration data"):
        collect_input_stats(model, torch.empty(0, 64, dtype=torch.long), linear_layers(model), JobContext())


# -- static activation quantization (W8A8) ---------------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
def test_hooks_put_each_input_on_a_grid_of_at_most_256_values(model, data, symmetric):
    calibration, held_out = data
    stats = collect_input_stats(model, calibration, linear_layers(model), JobContext())
    ranges = activation_ranges(stats, bits=8, symmetric=symmetric)
    handles = attach_activation_quant(model, ranges, bits=8, symmetric=symmetric)
    x = captured_inputs(model, DOWN, held_out)  # this hook runs after the quantizing one
    remove(handles)

    distinct = x.unique()
    assert 32 < distinct.numel() <= (255 if symmetric else 256)
    steps = distinct.diff()
    assert torch.allclose(steps, steps.min().expand_as(steps) * (steps / steps.min()).round(), rtol=1e-3)
    lo, hi = ranges[DOWN]
    if symmetric:  # the grid spans ±max(|lo|, |hi|)
        lo, hi = -max(-lo, hi), max(-lo, hi)
    half_step = (hi - lo) / 255 / 2  # a rounded zero point may shift the grid by up to this much
    assert lo < 0 < hi and x.min() >= lo - half_step and x.max() <= hi + half_step


def test_quantized_activations_stay_close_and_removing_restores_fp32(model, data):
    calibration, held_out = data
    with torch.no_grad():
        reference = model(held_out).logits
    stats = collect_input_stats(model, calibration, linear_layers(model), JobContext())
    handles = attach_activation_quant(model, activation_ranges(stats))
    with torch.no_grad():
        quantized = model(held_out).logits
    remove(handles)
    with torch.no_grad():
        restored = model(held_out).logits

    error = float((quantized - reference).norm() / reference.norm())
    assert 0 < error < 0.05
    assert torch.equal(restored, reference)
    assert no_hooks_left(model)


def test_ranges_survive_json_and_give_identical_hooks(model, data):
    stats = collect_input_stats(model, data[0], linear_layers(model), JobContext(), observer="mse")
    ranges = activation_ranges(stats, bits=8, symmetric=True)
    loaded = ranges_from_json(json.loads(json.dumps(ranges_to_json(ranges, 8, True))))
    assert loaded == (ranges, 8, True)

    outputs = []
    for saved in (ranges, loaded.ranges):
        handles = attach_activation_quant(model, saved, loaded.bits, loaded.symmetric)
        with torch.no_grad():
            outputs.append(model(data[1]).logits)
        remove(handles)
    assert torch.equal(outputs[0], outputs[1])


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d.pop("layers"),
        lambda d: d.update(format="something else"),
        lambda d: d["layers"].update(x=[1.0, float("nan")]),
        lambda d: d["layers"].update(x=[2.0, 1.0]),
        lambda d: d.update(bits="eight"),
    ],
)
def test_damaged_ranges_are_a_clear_error(damage):
    data = ranges_to_json({"a": (-1.0, 2.0)}, 8, False)
    damage(data)
    with pytest.raises(QuantTuneError, match="damaged") as err:
        ranges_from_json(data)
    assert "Quantize the model again" in err.value.fix


def test_ranges_for_a_layer_the_model_lacks_are_a_clear_error(model):
    with pytest.raises(QuantTuneError, match="model.layers.9.mlp.up_proj"):
        attach_activation_quant(model, {DOWN: (-1.0, 1.0), "model.layers.9.mlp.up_proj": (-1.0, 1.0)})
    assert no_hooks_left(model)  # the hook already attached was taken off again
