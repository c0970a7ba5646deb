"""From project settings to a job: the size estimate agrees with what the job measures."""

import pytest

from core.jobs import JobContext, run_job
from core.project import QuantizeSettings
from core.quant import job, plan


def test_recommended_scheme_is_the_majority():
    assert plan.recommended_symmetric({}) is None
    recs = {"a": {"symmetric": True}, "b": {"symmetric": False}, "c": {"symmetric": False}}
    assert plan.recommended_symmetric(recs) is False
    assert plan.symmetric_of(QuantizeSettings(symmetric=True), recs) is True  # the user's choice wins
    assert plan.symmetric_of(QuantizeSettings(), recs) is False


@pytest.mark.parametrize(
    "settings",
    [
        QuantizeSettings(precision="int4", symmetric=False, granularity="group", group_size=32),
        QuantizeSettings(precision="int8", symmetric=True, granularity="channel"),
        QuantizeSettings(precision="int3", symmetric=False, granularity="tensor"),
        QuantizeSettings(
            precision="int4",
            symmetric=True,
            granularity="group",
            group_size=64,
            overrides={"model.layers.0.mlp.down_proj": "int8", "model.layers.1.self_attn.q_proj": "fp16"},
        ),  # fmt: skip
        QuantizeSettings(precision="bf16"),
    ],
)
def test_estimate_matches_the_measured_size(tiny_loaded, settings):
    estimate = plan.estimate_size(tiny_loaded.model, settings)
    params = plan.job_params(settings, {}, tiny_loaded, method="rtn", measure_perplexity=False)
    report = run_job(job.run, params, JobContext())
    assert estimate.bytes_before == report.size_before_bytes
    assert estimate.bytes_after == pytest.approx(report.size_after_bytes, rel=1e-3)
    assert estimate.bits_per_weight == pytest.approx(report.bits_per_weight, rel=1e-3)


def test_fewer_bits_and_bigger_groups_are_smaller(tiny_loaded):
    sizes = [
        plan.estimate_size(
            tiny_loaded.model, QuantizeSettings(precision=p, granularity="group", group_size=g)
        )
        for p, g in (("int8", 32), ("int4", 32), ("int4", 128), ("int2", 128))
    ]
    after = [s.bytes_after for s in sizes]
    assert after == sorted(after, reverse=True)
    assert sizes[1].ratio > 1
