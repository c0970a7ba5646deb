"""The memory estimate before Start: its parts, how settings move it, and the advice."""

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
