"""bitsandbytes NF4 / FP4 / LLM.int8() on the CPU: a smaller model, close outputs, exact reloads.

The model is a Llama slightly wider than tests/tiny_models.py's (hidden 64 instead of 32) so that
every 4-bit layer holds whole 64-weight blocks per row, as in real models, with tied embeddings
like the default model's.
"""

from __future__ import annotations

import json

import pytest
import torch

from core import atomic
from core.errors import Cancelled, CorruptModel, QuantTuneError, StorageError
from core.jobs import JobContext
from core.quant import bnb

TEXT = "The capital of France is Paris. Quantization maps weights to a small grid."


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A QuantTune home for the module's quantizations (their scratch folder lives in its cache)."""
    home = tmp_path_factory.mktemp("bnb-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTTUNE_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def small(tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def before(small):
    """The float32 model's weights before any quantization, to prove it is left untouched."""
    return {k: v.clone() for k, v in small.state_dict().items()}


@pytest.fixture(scope="module")
def results(home, small, tiny_tokenizer, before):
    return {kind: bnb.quantize_bnb(small, tiny_tokenizer, kind) for kind in bnb.BNB_KINDS}


@pytest.fixture(scope="module")
def ids(tiny_tokenizer):
    return tiny_tokenizer(TEXT, return_tensors="pt").input_ids


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", bnb.BNB_KINDS)
def test_each_kind_quantizes_a_copy(results, small, before, kind):
    import bitsandbytes

    result = results[kind]
    expected = [n for n, m in small.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert result.layers == expected and len(expected) == 14
    layer_type = bitsandbytes.nn.Linear8bitLt if kind == "int8" else bitsandbytes.nn.Linear4bit
    assert all(isinstance(result.model.get_submodule(n), layer_type) for n in expected)
    assert bnb.kind_of(result.model) == kind and result.model.lm_head.weight.dtype == torch.float32
    # The input model: same weights, still plain float32 Linear layers, no quantization config.
    assert all(torch.equal(v, before[k]) for k, v in small.state_dict().items())
    assert all(type(small.get_submodule(n)) is torch.nn.Linear for n in expected)
    assert getattr(small.config, "quantization_config", None) is None and bnb.kind_of(small) is None


@pytest.mark.parametrize(("kind", "max_error"), [("nf4", 0.25), ("fp4", 0.25), ("int8", 0.03)])
def test_logits_are_close_to_float32_but_not_equal(results, small, ids, kind, max_error):
    reference, quantized = logits(small, ids), logits(results[kind].model, ids)
    relative = ((quantized - reference).norm() / reference.norm()).item()
    assert 0 < relative < max_error
    assert torch.equal(quantized.argmax(-1), reference.argmax(-1))


def test_weights_bytes_shrink(results, small):
    fp32 = bnb.weights_bytes(small)
    assert fp32 == small.get_memory_footprint()  # tied embeddings counted once, like transformers
    sizes = {kind: r.weights_bytes for kind, r in results.items()}
    # Embeddings (a third of this model) stay float32, so the ratios are far from 1/8 and 1/4.
    assert sizes["nf4"] == sizes["fp4"] < 0.4 * fp32
    assert sizes["nf4"] < sizes["int8"] < 0.5 * fp32
    # The 4-bit block scales and int8 row scales are real memory outside parameters and buffers.
    assert all(r.weights_bytes > r.model.get_memory_footprint() for r in results.values())


def relative_mse(result, small) -> float:
    errors = []
    for name in result.layers:
        weight = small.get_submodule(name).weight.detach()
        errors.append(((result.dequantized_weight(name) - weight) ** 2).mean() / (weight**2).mean())
    return float(torch.stack(errors).mean())


def test_dequantized_weight_errors_are_ordered(results, small):
    error = {kind: relative_mse(r, small) for kind, r in results.items()}
    assert 0 < error["int8"] < error["nf4"] / 50
    assert error["nf4"] < error["fp4"]  # NF4's levels fit normally distributed weights better


@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_4bit_dequantized_weight_is_what_the_layer_computes_with(results, kind):
    layer = results[kind].model.get_submodule("model.layers.1.mlp.down_proj")
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, bnb.dequantized_weight(layer)))


def test_int8_dequantized_weight_is_within_half_a_step(results, small):
    name = "model.layers.0.self_attn.q_proj"
    layer = results["int8"].model.get_submodule(name)
    original = small.get_submodule(name).weight.detach()
    # LLM.int8() rounds each row on a grid of 255 steps up to the row's largest |w|, after casting
    # the weights to float16 (whose rounding adds up to 2^-11 |w|, or 2^-25 below its normal range).
    as_half = original.half().float()
    step = (as_half.abs().amax(dim=1) / 127).unsqueeze(1)
    bound = step / 2 + original.abs() * 2**-11 + 2**-25
    error = (bnb.dequantized_weight(layer) - original).abs()
    assert torch.all(error <= bound * 1.0001)
    assert error.max() > step.min() / 4  # the bound is tight: a real rounding, not a copy
    assert layer.weight.dtype == torch.int8


@pytest.mark.parametrize("kind", bnb.BNB_KINDS)
def test_save_and_reload_give_identical_logits(results, tiny_tokenizer, ids, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    result = results[kind]
    folder = bnb.save_bnb(result, tiny_tokenizer, tmp_path / "out", {"base": "small"})
    meta = json.loads((folder / bnb.META_FILE).read_text())
    assert meta["format"] == "bitsandbytes" and meta["kind"] == kind and meta["base"] == "small"
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes"
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    expected = logits(result.model, ids)

    model, tokenizer, loaded_meta = bnb.load_bnb(folder)
    assert loaded_meta == meta and tokenizer(TEXT).input_ids == tiny_tokenizer(TEXT).input_ids
    assert torch.equal(logits(model, ids), expected)

    # A plain transformers load holds the very same tensors. Its forward is run with autograd on:
    # under no_grad bitsandbytes would repack the 4-bit layers into its bfloat16 CPU layout on this
    # CPU (and crash on 32-input layers), which load_bnb switches off (see core/quant/bnb.py).
    plain = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu", local_files_only=True)
    mine, theirs = result.model.state_dict(), plain.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert torch.equal(plain(ids).logits.detach(), expected)


def test_bf16_cpu_kernel_is_close_and_skips_shapes_it_cannot_take(home, tiny_tokenizer, ids, tmp_path):
    import bitsandbytes

    from tests.tiny_models import build_tiny_model

    if not bitsandbytes.functional.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes never repacks")
    # hidden 32: only down_proj has whole 64-weight blocks in each row (64 inputs); every other
    # layer has 32 inputs, which the repacking cannot take.
    result = bnb.quantize_bnb(build_tiny_model(tiny_tokenizer), tiny_tokenizer, "nf4")
    exact = logits(result.model, ids)
    assert bnb.set_bf16_cpu_kernel(result.model, True) == 2
    fast = logits(result.model, ids)
    assert not torch.equal(fast, exact) and torch.allclose(fast, exact, atol=0.05)
    with pytest.raises(QuantTuneError, match="bfloat16 CPU kernel"):
        bnb.save_bnb(result, tiny_tokenizer, tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_failed_save_leaves_no_partial_folder(results, tiny_tokenizer, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError):
        bnb.save_bnb(results["nf4"], tiny_tokenizer, blocker / "sub" / "out", {})

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("the previous version")

    def full_disk(path, obj):
        atomic.write_bytes(path.parent / "partial", b"")  # something half-written, then failure
        raise StorageError("The disk is full.", "Free some space.")

    monkeypatch.setattr(atomic, "write_json", full_disk)
    with pytest.raises(StorageError, match="disk is full"):
        bnb.save_bnb(results["nf4"], tiny_tokenizer, target, {})
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "out"]  # no staging folder left


def test_load_refuses_folders_that_are_not_bitsandbytes(tiny_model_dir, tmp_path, results, tiny_tokenizer):
    with pytest.raises(CorruptModel, match="not a bitsandbytes model"):
        bnb.load_bnb(tiny_model_dir)
    folder = bnb.save_bnb(results["int8"], tiny_tokenizer, tmp_path / "q", {})
    (folder / bnb.META_FILE).write_text(json.dumps({"format": "quanttune-int", "version": 1}))
    with pytest.raises(CorruptModel, match="not one made with bitsandbytes"):
        bnb.load_bnb(folder)


def test_refuses_unknown_kinds_and_wrong_models(small, results, tiny_tokenizer, tmp_path):
    with pytest.raises(QuantTuneError, match="Choose one of nf4, fp4, int8"):
        bnb.quantize_bnb(small, tiny_tokenizer, "int4")
    with pytest.raises(QuantTuneError, match="already quantized"):
        bnb.quantize_bnb(results["nf4"].model, tiny_tokenizer, "int8")
    with pytest.raises(QuantTuneError, match="not quantized by bitsandbytes"):
        bnb.save_bnb(small, tiny_tokenizer, tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_cancel_stops_and_cleans_the_scratch_copy(small, tiny_tokenizer, quanttune_home):
    def cancel_while_writing(event):
        if event.data.get("message", "").startswith("Writing"):
            ctx.cancel()  # noticed before the (uninterruptible) quantizing load starts

    ctx = JobContext(cancel_while_writing)
    with pytest.raises(Cancelled):
        bnb.quantize_bnb(small, tiny_tokenizer, "nf4", ctx=ctx)
    scratch = quanttune_home / "cache" / "tmp"
    assert scratch.is_dir() and not list(scratch.iterdir())
