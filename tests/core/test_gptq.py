"""GPTQ (core.quant.gptq) and the calibration pass that feeds it (core.quant.calibration).

Layer tests use random correlated inputs X = Z·A, whose Hessian is ill-conditioned the way real
activations are; model tests use the tiny 2-layer Llama. The real default model is measured by a
benchmark script, not here.
"""

from __future__ import annotations

import random

import pytest
import torch

from core.errors import Cancelled, QuantTuneError
from core.jobs import JobContext
from core.quant.affine import Scheme, qrange
from core.quant.calibration import (
    TOKENS_PER_CHUNK,
    calibration_batches,
    decoder_blocks,
    linear_layers,
    quantize_sequential,
)
from core.quant.gptq import gptq_quantize, layer_output_error
from core.quant.qtensor import quantize_rtn
from tests.tiny_models import build_tiny_model

SCHEMES = [
    Scheme(4, True, "group", 32),
    Scheme(4, False, "group", 32),
    Scheme(4, True, "group", 64),
    Scheme(4, False, "group", 64),
    Scheme(4, True, "channel"),
    Scheme(4, False, "channel"),
]
TINY_SCHEME = Scheme(4, False, "group", 16)  # the tiny model is 32 wide
WORDS = ["the", "capital", "of", "france", "is", "paris", "and", "rome", "quantization", "maps"]
WORDS += ["weights", "to", "a", "small", "grid", "while", "fine", "tuning", "adapts", "them", "answer"]


@pytest.fixture(autouse=True)
def one_thread():
    # These matrices are tiny: on a loaded machine a second thread costs waits, not speed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def correlated_layer(rows=48, cols=256, tokens=1024, seed=0):
    """W, X and H = 2/N · XᵀX with strongly correlated, unevenly scaled input features."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=gen) / cols**0.5
    x = (torch.randn(tokens, cols, generator=gen) @ mixing) * (0.2 + 3 * torch.rand(cols, generator=gen))
    weight = 0.05 * torch.randn(rows, cols, generator=gen)
    return weight, x, 2 / tokens * x.t() @ x


# -- the algorithm on one layer ---------------------------------------------------------------------
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_gptq_output_error_is_below_rtn(scheme, act_order):
    weight, x, hessian = correlated_layer()
    rtn = quantize_rtn(weight, scheme)
    gptq = gptq_quantize(weight, hessian, scheme, act_order=act_order)

    assert layer_output_error(weight, gptq.dequantize(), x) < 0.75 * layer_output_error(
        weight, rtn.dequantize(), x
    )
    qmin, qmax = qrange(scheme.bits, scheme.symmetric)
    assert gptq.codes.dtype == rtn.codes.dtype and gptq.codes.shape == weight.shape
    assert qmin <= int(gptq.codes.min()) and int(gptq.codes.max()) <= qmax
    # Static groups: the same S and Z as RTN, so the result is the plain stored format.
    assert torch.equal(gptq.scale, rtn.scale) and torch.equal(gptq.zero, rtn.zero)


def test_width_that_is_not_a_multiple_of_the_group():
    weight, x, hessian = correlated_layer(cols=200)
    scheme = Scheme(4, False, "group", 64)
    gptq = gptq_quantize(weight, hessian, scheme)
    assert gptq.scale.shape == (48, 4) and gptq.dequantize().shape == weight.shape
    assert layer_output_error(weight, gptq.dequantize(), x) < layer_output_error(
        weight, quantize_rtn(weight, scheme).dequantize(), x
    )


def test_per_tensor_scheme():
    weight, x, hessian = correlated_layer()
    scheme = Scheme(8, True, "tensor")
    gptq = gptq_quantize(weight, hessian, scheme)
    assert gptq.scale.unique().numel() == 1
    rtn_error = layer_output_error(weight, quantize_rtn(weight, scheme).dequantize(), x)
    assert layer_output_error(weight, gptq.dequantize(), x) < rtn_error


def test_identity_hessian_gives_round_to_nearest():
    # Uncorrelated inputs of equal size: no column can compensate another's error.
    weight, _, _ = correlated_layer()
    scheme = Scheme(4, False, "group", 32)
    gptq = gptq_quantize(weight, torch.eye(weight.shape[1]), scheme)
    assert torch.equal(gptq.codes, quantize_rtn(weight, scheme).codes)


def test_lazy_block_updates_do_not_change_the_result():
    weight, _, hessian = correlated_layer()
    scheme = Scheme(4, True, "group", 64)
    one_block = gptq_quantize(weight, hessian, scheme, block_size=256)
    small_blocks = gptq_quantize(weight, hessian, scheme, block_size=16)
    # The same arithmetic regrouped: only float round-off may flip a code sitting on a tie.
    assert (one_block.codes == small_blocks.codes).float().mean() > 0.999


def test_dead_input_columns_are_rounded_to_nearest():
    weight, x, _ = correlated_layer()
    dead = torch.arange(0, 256, 7)
    x[:, dead] = 0.0  # these inputs never fire on the calibration data
    hessian = 2 / x.shape[0] * x.t() @ x
    scheme = Scheme(4, False, "group", 32)
    gptq, rtn = gptq_quantize(weight, hessian, scheme), quantize_rtn(weight, scheme)
    assert torch.isfinite(gptq.dequantize()).all()
    assert torch.equal(gptq.codes[:, dead], rtn.codes[:, dead])
    assert layer_output_error(weight, gptq.dequantize(), x) < layer_output_error(weight, rtn.dequantize(), x)


def test_singular_hessian_is_handled_by_damping():
    weight, x, _ = correlated_layer(tokens=16)  # 16 tokens, 256 inputs: H has rank 16
    hessian = 2 / 16 * x.t() @ x
    scheme = Scheme(4, False, "channel")
    gptq = gptq_quantize(weight, hessian, scheme)
    assert torch.isfinite(gptq.dequantize()).all()
    assert layer_output_error(weight, gptq.dequantize(), x) < layer_output_error(
        weight, quantize_rtn(weight, scheme).dequantize(), x
    )


def test_damping_grows_until_the_hessian_factors():
    # A negative eigenvalue of 5% of the mean diagonal (round-off can do this to a rank-deficient
    # XᵀX): the default 1% damping fails, ×10 succeeds.
    cols = 64
    basis, _ = torch.linalg.qr(torch.randn(cols, cols, generator=torch.Generator().manual_seed(1)))
    eigen = torch.ones(cols)
    eigen[-1] = -0.05
    hessian = basis @ torch.diag(eigen) @ basis.t()
    weight = torch.randn(16, cols)
    gptq = gptq_quantize(weight, hessian, Scheme(4, True, "channel"))
    assert torch.isfinite(gptq.dequantize()).all()


def test_a_hessian_that_cannot_be_factored_names_the_layer():
    weight = torch.randn(8, 32)
    with pytest.raises(QuantTuneError, match="model.layers.3.mlp.up_proj") as err:
        gptq_quantize(weight, -torch.eye(32), Scheme(4, True, "channel"), name="model.layers.3.mlp.up_proj")
    assert err.value.fix
    with pytest.raises(QuantTuneError, match="NaN"):
        gptq_quantize(weight, torch.full((32, 32), float("nan")), Scheme(4, True, "channel"))


def test_a_long_layer_checks_for_cancel_between_column_blocks():
    weight, _, hessian = correlated_layer()
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        gptq_quantize(weight, hessian, Scheme(4, True, "channel"), check_cancelled=ctx.check_cancelled)


def test_layer_output_error_is_the_mean_squared_output_difference():
    weight, x, _ = correlated_layer(rows=4, cols=8, tokens=10)
    other = weight + 0.01
    assert layer_output_error(weight, weight, x) == 0.0
    expected = float(((x @ weight.t() - x @ other.t()) ** 2).mean())
    assert layer_output_error(weight, other, x) == pytest.approx(expected, rel=1e-4)


# -- calibration data -------------------------------------------------------------------------------
def words(seed: int, count: int = 2500) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(count))


def test_calibration_batches_are_consecutive_windows(tiny_tokenizer):
    text = words(1)
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    batches = calibration_batches(tiny_tokenizer, text, n_samples=3, seq_len=50)
    assert batches.shape == (3, 50) and batches.dtype == torch.long
    assert batches.flatten().tolist() == ids[:150]
    # Only as many windows as the text holds.
    assert calibration_batches(tiny_tokenizer, text, n_samples=10_000, seq_len=50).shape[0] == len(ids) // 50


def test_too_short_calibration_text_says_how_short(tiny_tokenizer):
    n_tokens = len(tiny_tokenizer("Paris is the capital.", add_special_tokens=False)["input_ids"])
    with pytest.raises(QuantTuneError) as err:
        calibration_batches(tiny_tokenizer, "Paris is the capital.", n_samples=4, seq_len=512)
    assert f"{n_tokens} tokens" in err.value.message and "512" in err.value.message
    assert "longer text" in err.value.fix
    with pytest.raises(QuantTuneError, match="empty"):
        calibration_batches(tiny_tokenizer, "  \n", n_samples=4, seq_len=512)


def test_linear_layers_leave_out_the_head_unless_asked(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    assert len(linear_layers(model)) == 14 and "lm_head" not in linear_layers(model)
    assert "lm_head" in linear_layers(model, include_head=True)


def test_unknown_model_structure_is_a_clear_error():
    with pytest.raises(QuantTuneError, match="decoder blocks"):
        decoder_blocks(torch.nn.Sequential(torch.nn.Linear(4, 4)))


# -- the sequential pass on the tiny model ------------------------------------------------------------
def gptq_layer(scheme=TINY_SCHEME):
    return lambda name, linear, hessian: gptq_quantize(linear.weight, hessian, scheme, name=name)


def rtn_layer(scheme=TINY_SCHEME):
    return lambda name, linear, hessian: quantize_rtn(linear.weight, scheme)


@pytest.fixture(scope="module")
def tiny_data(tiny_tokenizer):
    """Calibration batches and held-out batches from different texts."""
    return (
        calibration_batches(tiny_tokenizer, words(1), 8, 64),
        calibration_batches(tiny_tokenizer, words(2), 8, 64),
    )


@torch.no_grad()
def logits_error(model, reference, batches) -> float:
    return float((model(batches).logits - reference(batches).logits).square().mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_lowers_the_models_output_error_against_rtn(tiny_tokenizer, tiny_data, seed):
    calibration, held_out = tiny_data
    reference = build_tiny_model(tiny_tokenizer, seed=seed)
    rtn, gptq = build_tiny_model(tiny_tokenizer, seed=seed), build_tiny_model(tiny_tokenizer, seed=seed)

    quantize_sequential(rtn, None, rtn_layer(), JobContext(), needs_hessian=False)
    result = quantize_sequential(gptq, calibration, gptq_layer(), JobContext(), needs_hessian=True)

    assert sorted(result) == sorted(linear_layers(gptq))
    assert logits_error(gptq, reference, held_out) < 0.8 * logits_error(rtn, reference, held_out)
    # The model now holds exactly the dequantized weights.
    down = gptq.model.layers[1].mlp.down_proj.weight
    assert torch.equal(down, result["model.layers.1.mlp.down_proj"].dequantize())


def test_layers_go_in_forward_order_and_readers_of_one_input_share_its_hessian(tiny_tokenizer, tiny_data):
    seen: list[tuple[str, torch.Tensor]] = []

    def record(name, linear, hessian):
        seen.append((name, hessian))
        return quantize_rtn(linear.weight, TINY_SCHEME)

    model = build_tiny_model(tiny_tokenizer)
    quantize_sequential(model, tiny_data[0], record, JobContext(), needs_hessian=True)
    stage = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert [name.rsplit(".", 1)[1] for name, _ in seen] == stage * 2
    h = dict(seen)
    assert h["model.layers.0.self_attn.q_proj"] is h["model.layers.0.self_attn.v_proj"]
    assert h["model.layers.0.mlp.gate_proj"] is h["model.layers.0.mlp.up_proj"]
    assert h["model.layers.0.mlp.down_proj"].shape == (64, 64)
    assert torch.allclose(h["model.layers.0.mlp.down_proj"], h["model.layers.0.mlp.down_proj"].t())


def test_each_layer_is_calibrated_on_the_model_quantized_up_to_it(tiny_tokenizer):
    # Whatever is quantized after a layer lies downstream of it, so the finished model must give
    # every layer the very inputs (hence H) that it was calibrated on.
    seen = {}

    def record(name, linear, hessian):
        seen[name] = hessian.clone()
        return gptq_layer()(name, linear, hessian)

    batches = calibration_batches(tiny_tokenizer, words(3, count=4000), 40, 64)
    assert batches.numel() > TOKENS_PER_CHUNK  # several chunks: their order and sums count too
    model = build_tiny_model(tiny_tokenizer)
    quantize_sequential(model, batches, record, JobContext(), needs_hessian=True)
    sums = {}

    def gram(name):
        def hook(module, args):
            x = args[0].reshape(-1, args[0].shape[-1])
            sums[name] = sums.get(name, 0) + 2 / x.shape[0] * x.t() @ x

        return hook

    handles = [linear.register_forward_pre_hook(gram(name)) for name, linear in linear_layers(model).items()]
    with torch.no_grad():
        model(batches)
    for handle in handles:
        handle.remove()
    assert sorted(sums) == sorted(seen)
    for name, hessian in seen.items():
        assert torch.allclose(hessian, sums[name], rtol=1e-4, atol=1e-6), name


def test_the_head_when_included_is_calibrated_last(tiny_tokenizer, tiny_data):
    model = build_tiny_model(tiny_tokenizer)
    names: list[str] = []

    def record(name, linear, hessian):
        names.append(name)
        assert hessian is not None and hessian.shape == (linear.in_features,) * 2
        return quantize_rtn(linear.weight, TINY_SCHEME)

    layers = linear_layers(model, include_head=True)
    quantize_sequential(model, tiny_data[0], record, JobContext(), needs_hessian=True, layers=layers)
    assert names[-1] == "lm_head" and len(names) == 15


def test_gptq_without_calibration_data_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(QuantTuneError, match="calibration data"):
        quantize_sequential(build_tiny_model(tiny_tokenizer), None, gptq_layer(), JobContext(), True)


def test_without_hessians_no_activations_are_needed(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    hessians = []

    def record(name, linear, hessian):
        hessians.append(hessian)
        return quantize_rtn(linear.weight, TINY_SCHEME)

    quantize_sequential(model, None, record, JobContext(), needs_hessian=False)
    assert hessians == [None] * 14


def test_cancel_before_and_while_running(tiny_tokenizer, tiny_data):
    model = build_tiny_model(tiny_tokenizer)
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        quantize_sequential(model, tiny_data[0], gptq_layer(), ctx, needs_hessian=True)

    calls = []

    def quantize_then_cancel(name, linear, hessian):
        calls.append(name)
        ctx.cancel()  # as if the user pressed Cancel while this layer was being quantized
        return gptq_layer()(name, linear, hessian)

    ctx = JobContext()
    with pytest.raises(Cancelled):
        quantize_sequential(model, tiny_data[0], quantize_then_cancel, ctx, needs_hessian=True)
    assert calls == ["model.layers.0.self_attn.q_proj"]


def test_nan_activations_name_the_layer(tiny_tokenizer, tiny_data):
    model = build_tiny_model(tiny_tokenizer)
    with torch.no_grad():
        model.model.layers[1].post_attention_layernorm.weight[0] = float("nan")
    expected = r"NaN activations in layer model\.layers\.1\.mlp\.gate_proj"
    with pytest.raises(QuantTuneError, match=expected) as err:
        quantize_sequential(model, tiny_data[0], gptq_layer(), JobContext(), needs_hessian=True)
    assert "RTN" in err.value.fix
