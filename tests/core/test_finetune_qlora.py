"""QLoRA on the tiny model: an NF4 base from bitsandbytes, LoRA on top, training, resuming."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from core.finetune import methods, train
from core.finetune.checkpoints import WEIGHTS
from core.finetune.methods import MethodSettings
from core.jobs import JobContext
from core.quant import bnb
from tests.core.test_finetune_train import write_alpaca
from tests.core.training import train_steps
from tests.tiny_models import build_tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")  # runs repeat bit for bit

TEXT = "The capital of France is Paris. The capital of Italy is Rome."
SETTINGS = MethodSettings(method="qlora", rank=4, alpha=8, dropout=0.0)


def lora_parameter_count(model, rank):
    """What LoRA adds: r·(in + out) per target layer."""
    targets = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in methods.LINEAR_TARGETS]
    return sum(rank * (m.in_features + m.out_features) for m in targets)


def test_the_base_is_nf4_with_double_quantization_and_only_lora_trains(tiny_tokenizer):
    model = build_tiny_model(tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = methods.apply(model, SETTINGS)
    bnb_nn = bnb._bnb().nn
    bases = {name: m.base_layer for name, m in adapted.named_modules() if hasattr(m, "base_layer")}
    assert len(bases) == 2 * len(methods.LINEAR_TARGETS)
    for layer in bases.values():
        assert isinstance(layer, bnb_nn.Linear4bit)
        state = layer.weight.quant_state
        assert state.quant_type == "nf4" and state.nested  # nested: the block scales are quantized too
        assert layer.compute_dtype == torch.float32
    assert type(adapted.get_base_model().lm_head) is torch.nn.Linear  # the head stays float
    trained = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in name or ".lora_B." in name for name in trained)
    assert methods.trainable(adapted).trainable == lora_parameter_count(model, SETTINGS.rank)
    # 4-bit weights count as weights, not as the bytes that pack them
    assert methods.trainable(adapted).total == methods.trainable(model).total + lora_parameter_count(model, 4)
    after = model.state_dict()  # the float model handed in is left as it was
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32 for k in before)


def test_qlora_memorises_a_batch_about_as_well_as_lora(tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    qlora, lora = (
        train_steps(
            methods.apply(build_tiny_model(tiny_tokenizer), replace(SETTINGS, method=key)).train(), ids, 20
        )
        for key in ("qlora", "lora")
    )
    # measured: 5.76 -> 5.27 for both (a random 2-layer model with frozen embeddings learns slowly)
    assert qlora[-1] < qlora[0] - 0.4, qlora
    assert abs(qlora[-1] - lora[-1]) < 0.05, (qlora, lora)


def test_a_qlora_run_resumes_bit_for_bit_and_saves_a_peft_adapter(tiny_loaded, tmp_path):
    data = write_alpaca(tmp_path / "alpaca.jsonl", 24)

    def params(output, **changes):
        return train.TrainParams(loaded=tiny_loaded, dataset=data, output=output, method=SETTINGS,
                                 max_length=64, batch_size=4, learning_rate=5e-3, max_steps=4,
                                 **changes)  # fmt: skip

    # evaluating after every step runs no-grad forwards in between, where bitsandbytes would repack
    # its layers for the bfloat16 CPU kernel if quantize_bnb had not switched that off
    straight = train.run(params(tmp_path / "a", save_every=2, eval_every=1), JobContext())
    step2 = tmp_path / "a/checkpoints/step-2"
    resumed = train.run(params(tmp_path / "b", eval_every=1, resume_from=step2), JobContext())
    assert resumed.losses == straight.losses and resumed.steps == 4
    assert resumed.best_validation_loss == straight.best_validation_loss is not None
    a, b = (load_file(tmp_path / run / "checkpoints/step-4" / WEIGHTS) for run in "ab")
    assert a and all(".lora_" in name for name in a)  # a checkpoint holds the LoRA tensors only
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = tmp_path / "a/final"
    assert (final / "adapter_model.safetensors").is_file()
    assert json.loads((final / "adapter_config.json").read_text())["r"] == SETTINGS.rank
    assert json.loads((final / "method.json").read_text())["method"] == "qlora"
