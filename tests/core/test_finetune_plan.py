"""The cost of a run before Start, on the tiny model."""

import pytest

from core.errors import QuantTuneError
from core.finetune import plan
from core.finetune.methods import MethodSettings
from core.jobs import JobContext


def test_lora_counts_and_an_estimate_that_grows_with_the_batch(tiny_loaded):
    small = plan.run(plan.PlanParams(tiny_loaded, MethodSettings(rank=4), batch_size=1), JobContext())
    big = plan.run(plan.PlanParams(tiny_loaded, MethodSettings(rank=4), batch_size=8), JobContext())
    assert 0 < small.trainable.trainable < small.trainable.total
    assert big.estimate.activations > small.estimate.activations
    assert small.estimate.fits is not None and small.device == str(tiny_loaded.device)
    assert all(p.requires_grad for p in tiny_loaded.model.parameters())  # the loaded model is untouched


def test_full_fine_tuning_trains_everything_and_costs_more(tiny_loaded):
    full = plan.run(plan.PlanParams(tiny_loaded, MethodSettings(method="full")), JobContext())
    lora = plan.run(plan.PlanParams(tiny_loaded, MethodSettings()), JobContext())
    assert full.trainable.trainable == full.trainable.total
    assert full.estimate.optimizer > lora.estimate.optimizer


def test_bitfit_on_a_model_without_biases_says_to_choose_norm_only(tiny_loaded):
    with pytest.raises(QuantTuneError, match="no bias"):
        plan.run(plan.PlanParams(tiny_loaded, MethodSettings(method="bitfit")), JobContext())


def test_feature_extraction_counts_the_new_head_of_the_files_labels(tiny_loaded, tmp_path):
    rows = ["text,label"] + [f"message {i},{('a', 'b', 'c')[i % 3]}" for i in range(30)]
    data = tmp_path / "labels.csv"
    data.write_text("\n".join(rows), encoding="utf-8")
    feature = MethodSettings(method="feature")
    params = plan.PlanParams(tiny_loaded, feature, task="classification", dataset=data)
    result = plan.run(params, JobContext())
    assert result.trainable.trainable == tiny_loaded.model.config.hidden_size * 3
