"""The estimates before Start: memory (its parts, how settings move it, the advice) and time."""

import json

import pytest

from core.finetune import estimate as est

SMOL = est.ModelShape(parameters=134_515_008, trainable=134_515_008, layers=30, hidden=576, heads=9,
                      intermediate=1536, vocab=49_152)  # fmt: skip


def test_full_fine_tuning_counts_weights_gradients_and_adam():
    e = est.estimate(SMOL, batch=4, seq_len=512)
    assert e.weights == SMOL.parameters * 4
    assert e.gradients == SMOL.parameters * 4 and e.optimizer == SMOL.parameters * 8
    assert 2e9 < e.activations < 20e9  # a few GB at batch 4 × 512 tokens in FP32
    assert e.fits is None  # no memory given: unknown


def test_settings_move_the_estimate_the_right_way():
    base = est.estimate(SMOL, 4, 512).peak
    assert est.estimate(SMOL, 8, 512).peak > base
    assert est.estimate(SMOL, 4, 1024).peak > base
    assert est.estimate(SMOL, 4, 512, checkpointing=True).peak < base
    assert est.estimate(SMOL, 4, 512, compute_bytes=2).peak < base
    lora = est.ModelShape(**{**SMOL.__dict__, "trainable": 1_000_000})
    assert est.estimate(lora, 4, 512).peak < base


def test_a_run_that_does_not_fit_says_what_would():
    e = est.estimate(SMOL, 16, 1024, available=8_000_000_000)
    assert e.fits is False and e.advice
    assert any("batch size" in a or "checkpointing" in a for a in e.advice)
    assert est.estimate(SMOL, 1, 128, available=64_000_000_000).fits is True


def test_the_shape_of_a_real_model(tiny_loaded):
    shape = est.ModelShape.of(tiny_loaded.model)
    config = tiny_loaded.model.config
    assert (shape.layers, shape.hidden, shape.vocab) == (
        config.num_hidden_layers,
        config.hidden_size,
        config.vocab_size,
    )
    assert shape.trainable == shape.parameters == sum(p.numel() for p in tiny_loaded.model.parameters())


def test_available_memory_of_the_cpu():
    assert est.available_memory("cpu") > 100_000_000
    assert est.available_memory("cpu") == pytest.approx(est.available_memory("cpu"), rel=0.2)


# -- time -------------------------------------------------------------------------------------------
def rows(*shapes):
    """Examples of (length, learnt answer tokens): the prompt unlabelled, the answer labelled."""
    from core.finetune.batches import IGNORE, Example

    return [Example(list(range(n)), [IGNORE] * (n - a) + list(range(a))) for n, a in shapes]


def test_the_flop_count_follows_what_the_step_computes():
    lora = est.ModelShape(**{**SMOL.__dict__, "trainable": 1_000_000})
    batch = rows((40, 10), (120, 30), (60, 20), (80, 5))
    full, adapted = est.step_flops(SMOL, batch, False), est.step_flops(lora, batch, False)
    assert 1.4 < full / adapted < 1.5  # 6·N against about 4·N, attention alike
    assert est.step_flops(lora, batch, False, backward=False) < adapted / 1.9  # a forward pass: 2·N
    packed = est.step_flops(lora, batch, True)
    assert packed < adapted * 0.7  # 300 tokens, not 4 × 120, and logits on 65 answer positions only
    same = rows(*[(64, 64)] * 4)  # no padding to save, every position learnt: only attention grows
    assert (
        est.step_flops(lora, same, False)
        < est.step_flops(lora, same, True)
        < 1.2 * est.step_flops(lora, same, False)
    )
    assert est.step_flops(lora, rows((100, 10)), False) < est.step_flops(lora, rows((200, 10)), False) / 1.9


def test_time_estimate_of_a_run_on_the_tiny_model(tiny_loaded, tmp_path):
    from core.finetune import train
    from core.finetune.methods import MethodSettings

    data = tmp_path / "rows.jsonl"
    row = {"instruction": "What is the capital of France?", "input": "", "output": "Paris."}
    data.write_text((json.dumps(row) + "\n") * 40, encoding="utf-8")

    def params(**changes):
        base = dict(loaded=tiny_loaded, dataset=data, output=tmp_path / "run", method=MethodSettings(rank=4),
                    max_length=64, max_steps=8, eval_every=4)  # fmt: skip
        return train.TrainParams(**{**base, **changes})

    e = est.time_estimate(params())
    assert e.steps == 8 and e.train_seconds > 0 and e.eval_seconds > 0 and e.tokens_per_second > 0
    assert e.speed.flops_per_second > 1e6 and e.speed.step_seconds > 0
    assert e.shape.trainable < e.shape.parameters  # the model as it trains: LoRA applied
    assert not (tmp_path / "run").exists()  # nothing written where the run will go
    longer = est.time_estimate(params(max_steps=16))
    assert longer.speed is e.speed  # measured once per model and settings
    assert 1.6 < longer.train_seconds / e.train_seconds < 2.4 and longer.eval_seconds > e.eval_seconds
    epochs = est.time_estimate(params(max_steps=0, epochs=2, eval_every=0, validation_ratio=0.0))
    assert epochs.steps == 2 * 10 and epochs.eval_seconds == 0  # 40 rows in batches of 4, twice
    checkpoint = tmp_path / "checkpoint"  # a run stopped at step 4 has half its steps left
    checkpoint.mkdir()
    (checkpoint / "state.json").write_text(json.dumps({"step": 4}), encoding="utf-8")
    resumed = est.time_estimate(params(resume_from=checkpoint))
    assert 0.3 < resumed.train_seconds / e.train_seconds < 0.7
    json_ready = e.to_dict()
    assert json_ready["seconds"] == pytest.approx(e.train_seconds + e.eval_seconds)
