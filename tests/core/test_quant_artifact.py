"""A quantized model saved into a folder reloads with identical outputs, and damage is reported."""

import json

import pytest
import torch

from core.errors import CorruptModel
from core.quant.affine import Scheme
from core.quant.artifact import META_FILE, WEIGHTS_FILE, load_quantized, save_quantized
from core.quant.qtensor import quantize_rtn


def quantize_linears(model, scheme):
    quantized = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            quantized[name] = quantize_rtn(module.weight, scheme)
            with torch.no_grad():
                module.weight.copy_(quantized[name].dequantize())
    return quantized


@pytest.mark.parametrize("scheme", [Scheme(4, False, "group", 32), Scheme(8, True, "channel")], ids=str)
def test_reload_gives_identical_outputs(tiny_loaded, tmp_path, scheme):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    quantized = quantize_linears(model, scheme)
    folder = save_quantized(model, tokenizer, quantized, tmp_path / "q", {"method": "rtn"})
    assert {p.name for p in folder.iterdir()} >= {META_FILE, WEIGHTS_FILE, "config.json", "tokenizer.json"}
    again, tok, stored, meta = load_quantized(folder)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert meta["method"] == "rtn" and set(stored) == set(quantized)
    assert stored["model.layers.0.mlp.up_proj"].codes.dtype in (torch.int8, torch.uint8)
    assert tok("Paris").input_ids == tokenizer("Paris").input_ids


def test_no_half_written_folder_on_failure(tiny_loaded, tmp_path, monkeypatch):
    import core.quant.artifact as artifact

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", fail)
    with pytest.raises(Exception, match="disk is full"):
        artifact.save_quantized(tiny_loaded.model, None, {}, tmp_path / "q", {})
    assert list(tmp_path.iterdir()) == []


def test_damaged_meta_is_reported(tiny_loaded, tmp_path):
    folder = save_quantized(tiny_loaded.model, tiny_loaded.tokenizer, {}, tmp_path / "q", {})
    (folder / META_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptModel, match="not a QuantTune quantized model"):
        load_quantized(folder)
