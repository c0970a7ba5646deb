"""What the Train step saves: peft's adapter format, which plain peft loads, and with save_merged a
plain transformers folder, which transformers alone loads; both answer as the trained model did."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.errors import QuantTuneError
from core.finetune import saving, train
from core.finetune.methods import MethodSettings
from core.jobs import JobContext
from tests.core.test_finetune_train import write_alpaca

TEXT = "What is the capital of France? Paris is the answer."


@pytest.fixture
def data(tmp_path):
    return write_alpaca(tmp_path / "alpaca.jsonl", 8)


def trained(loaded, data, output, method, **changes):
    p = train.TrainParams(loaded=loaded, dataset=data, output=output, method=method, max_length=64,
                          validation_ratio=0.0, learning_rate=1e-2, max_steps=4, save_merged=True,
                          **changes)  # fmt: skip
    assert p.validate() == []
    return train.run(p, JobContext())


def logits(model, tokenizer):
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([tokenizer.encode(TEXT)])).logits


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_the_adapter_loads_with_plain_peft_and_the_merged_model_with_transformers_alone(
    tiny_loaded, tiny_model_dir, data, tmp_path, method
):
    report = trained(tiny_loaded, data, tmp_path / "out", MethodSettings(method=method, rank=4))
    tokenizer, final = tiny_loaded.tokenizer, tmp_path / "out/final"
    expected = logits(report.model, tokenizer)
    assert not torch.allclose(expected, logits(tiny_loaded.model, tokenizer))  # training changed it
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert torch.equal(logits(PeftModel.from_pretrained(base, final), tokenizer), expected)
    merged = AutoModelForCausalLM.from_pretrained(final / saving.MERGED)
    assert not any(".lora_" in name or "ia3_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, tokenizer), expected, atol=1e-5, rtol=0)
    assert AutoTokenizer.from_pretrained(final / saving.MERGED).encode(TEXT) == tokenizer.encode(TEXT)


def test_a_freezing_method_saves_the_whole_trained_model(tiny_loaded, data, tmp_path):
    report = trained(tiny_loaded, data, tmp_path / "out", MethodSettings(method="ln"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out/final" / saving.MERGED)
    assert torch.equal(logits(merged, tiny_loaded.tokenizer), logits(report.model, tiny_loaded.tokenizer))


def test_qlora_merges_into_the_decoded_4bit_weights_as_a_float32_model(tiny_loaded, data, tmp_path):
    report = trained(tiny_loaded, data, tmp_path / "out", MethodSettings(method="qlora", rank=4))
    folder = tmp_path / "out/final" / saving.MERGED
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    expected = logits(report.model, tiny_loaded.tokenizer)
    torch.testing.assert_close(logits(merged, tiny_loaded.tokenizer), expected, atol=1e-5, rtol=0)
    # the float model it came from answers differently: the merge kept the 4-bit rounding it trained on
    assert not torch.allclose(logits(tiny_loaded.model, tiny_loaded.tokenizer), expected, atol=1e-2)


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning", "adapters"])
def test_methods_that_cannot_merge_say_so_before_training(tiny_loaded, data, tmp_path, method):
    settings = MethodSettings(method=method)
    p = train.TrainParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "out", method=settings,
                          save_merged=True)  # fmt: skip
    problems = p.validate()
    assert len(problems) == 1 and "cannot be merged" in problems[0] and "adapter alone" in problems[0]
    with pytest.raises(QuantTuneError, match="cannot be merged"):
        saving.save_final(tiny_loaded.model, settings, tmp_path / "final", merged=True)
    assert not (tmp_path / "final").exists()
