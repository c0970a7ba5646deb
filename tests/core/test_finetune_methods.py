"""The menu of adaptation methods on the tiny model: each trains what it says, and only that."""

import pytest
import torch

from core.errors import QuantTuneError
from core.finetune import methods
from tests.tiny_models import build_tiny_model


@pytest.fixture
def model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


def counts(model):
    return methods.trainable(model)


@pytest.mark.parametrize("key", [k for k in methods.METHODS if k not in ("bitfit", "feature")])
def test_every_method_trains_something_and_the_model_still_runs(model, key):
    total = counts(model).total
    adapted = methods.apply(model, methods.MethodSettings(method=key, virtual_tokens=4))
    c = counts(adapted)
    assert c.trainable > 0
    if key != "full":
        assert c.trainable < total
    ids = torch.tensor([[1, 5, 9, 12]])
    out = adapted(input_ids=ids, labels=ids)
    out.loss.backward()  # gradients reach what is trainable
    grads = [p.grad for p in adapted.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)


def test_the_parameter_counts_are_what_each_method_adds(model):
    full = counts(model).total
    lora = methods.apply(build_tiny_model_like(model), methods.MethodSettings(method="lora", rank=4))
    # LoRA adds r·(in + out) per target layer; the tiny model: 7 layers × 2 blocks
    expected = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in methods.LINEAR_TARGETS:
            expected += 4 * (module.in_features + module.out_features)
    assert counts(lora).trainable == expected
    partial = methods.apply(model, methods.MethodSettings(method="partial", top_layers=1))
    block = sum(p.numel() for p in model.model.layers[-1].parameters())
    assert counts(partial).trainable == block + model.lm_head.weight.numel()
    assert counts(partial).total == full


def build_tiny_model_like(model):
    import copy

    return copy.deepcopy(model)


def test_bitfit_without_biases_points_to_norm_tuning(model):
    with pytest.raises(QuantTuneError, match="no bias terms") as caught:
        methods.apply(model, methods.MethodSettings(method="bitfit"))
    assert "norm-only" in caught.value.fix


def test_bad_settings_are_listed_together(model):
    with pytest.raises(QuantTuneError) as caught:
        methods.apply(model, methods.MethodSettings(method="lora", rank=0, dropout=1.5))
    assert "rank" in str(caught.value) and "dropout" in str(caught.value)
