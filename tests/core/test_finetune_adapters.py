"""Bottleneck adapters on the tiny model: unchanged at the start, the expected size, learning,
and a saved run that loads back into a fresh copy of the model."""

import pytest
import torch

from core.errors import QuantTuneError
from core.finetune import adapters, methods, runs, train
from core.finetune.methods import MethodSettings
from core.jobs import JobContext
from tests.core.test_finetune_train import write_alpaca
from tests.tiny_models import build_tiny_model

SETTINGS = MethodSettings(method="adapters")  # 16 units wide
TEXT = "The capital of France is Paris. The capital of Italy is Rome."


@pytest.fixture
def model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


def test_the_model_is_unchanged_at_the_start_and_only_the_adapters_train(model, tiny_tokenizer):
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    adapted = methods.apply(model, SETTINGS)
    with torch.no_grad():
        assert torch.equal(adapted(input_ids=ids).logits, before)  # up starts at zero
    c = model.config
    size = SETTINGS.adapter_size
    counts = methods.trainable(adapted)
    assert counts.trainable == c.num_hidden_layers * (2 * c.hidden_size * size + size + c.hidden_size)
    trained = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert trained == list(adapters.adapter_tensors(adapted))
    blocks = [f"model.layers.{i}.adapter." for i in range(c.num_hidden_layers)]
    assert {name.rsplit("adapter.", 1)[0] + "adapter." for name in trained} == set(blocks)
    with pytest.raises(QuantTuneError, match="adapters already"):
        adapters.add_adapters(adapted, 4)


def test_adapters_memorise_a_batch(model, tiny_tokenizer):
    adapted = methods.apply(model, SETTINGS).train()
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(40):
        loss = adapted(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    # measured 5.76 -> 5.59 (step 10) -> 5.33: the frozen random head (weights ~0.02) caps what any
    # method that leaves it alone can reach on the tiny model, about 5.1
    assert losses[-1] < losses[0] - 0.3, losses
    assert losses[-1] < losses[10] - 0.15, losses  # still falling: more than a constant shift learnt


def test_a_trained_run_loads_back_into_a_fresh_copy(tiny_loaded, tiny_tokenizer, tmp_path):
    data = write_alpaca(tmp_path / "alpaca.jsonl", 8)
    p = train.TrainParams(loaded=tiny_loaded, dataset=data, output=tmp_path / "out", method=SETTINGS,
                          max_length=64, validation_ratio=0.0, learning_rate=1e-2, max_steps=6)  # fmt: skip
    report = train.run(p, JobContext())
    assert report.losses[-1] < report.losses[0]
    fresh = runs.load_trained(tiny_loaded, tmp_path / "out/final")  # method.json + trainable.safetensors
    ids = torch.tensor([tiny_tokenizer.encode(TEXT)])
    with torch.no_grad():
        trained = report.model.eval()(input_ids=ids).logits
        assert not torch.equal(trained, tiny_loaded.model(input_ids=ids).logits)  # it did learn
        assert torch.equal(fresh(input_ids=ids).logits, trained)
    assert not hasattr(tiny_loaded.model.model.layers[0], "adapter")  # the loaded model stays as it was
    with pytest.raises(QuantTuneError, match="no readable trained model"):
        runs.load_trained(tiny_loaded, tmp_path)  # not a final folder


def test_a_model_without_decoder_blocks_is_refused(model):
    model.model.layers = torch.nn.ModuleList()
    model.config.num_hidden_layers = 3
    with pytest.raises(QuantTuneError, match="decoder blocks") as caught:
        methods.apply(model, SETTINGS)
    assert "LoRA" in caught.value.fix
