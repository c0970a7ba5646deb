"""Mixed precision under a size budget (sensitivity, the knapsack against brute force) and the
multi-stage path FP32 → INT16 → INT8 against the direct one."""

import itertools
import math
import random

import pytest
import torch
from torch import nn

from core.errors import QuantTuneError
from core.quant import mixed
from core.quant.affine import Scheme, fake_quantize
from core.quant.multistage import multistage
from core.quant.qtensor import quantize_rtn

GEN = torch.Generator().manual_seed(0)


def scheme_for(bits: int) -> Scheme:
    return Scheme(bits, False, "group", 32)


def linear(out_features=48, in_features=96, seed=0) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        layer.weight.copy_(
            torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed))
        )
    return layer


def random_costs(rng: random.Random, n_layers: int, n_options: int) -> dict:
    """Layers of random size and sensitivity; error falls roughly 4× per extra bit, with noise."""
    costs = {}
    for i in range(n_layers):
        numel, sensitivity = rng.choice([64, 96, 256, 384]) * 64, rng.lognormvariate(0, 1.5)
        bits = sorted(rng.sample([2, 3, 4, 5, 6, 8, 16], n_options))
        costs[f"layer{i}"] = {
            b: mixed.LayerCost(b, numel * b // 8 + numel // 32 * 4 * (b < 16),
                               sensitivity * numel * 4.0 ** -b * rng.uniform(0.7, 1.3), 0.0)
            for b in bits
        }  # fmt: skip
    return costs


def brute_force(costs: dict, budget: int, fixed: int) -> float:
    best = math.inf
    names = list(costs)
    for combo in itertools.product(*(costs[n].values() for n in names)):
        if fixed + sum(c.bytes for c in combo) <= budget:
            best = min(best, sum(c.error for c in combo))
    return best


def budgets(costs: dict, fixed: int, n: int) -> list[int]:
    low = fixed + sum(min(c.bytes for c in o.values()) for o in costs.values())
    high = fixed + sum(max(c.bytes for c in o.values()) for o in costs.values())
    return [int(low + (high - low) * k / (n - 1)) for k in range(n)]


# -- sensitivity -----------------------------------------------------------------------------------
def test_costs_count_codes_and_scales_and_fall_with_more_bits():
    layer = linear()
    costs = mixed.measure_sensitivity({"fc": layer}, scheme_for, [2, 3, 4, 8, 16])["fc"]
    weight = layer.weight.detach()
    for b in (2, 3, 4, 8):
        q = quantize_rtn(weight, scheme_for(b))
        assert costs[b].bytes == q.nbytes_packed  # codes at b bits + a 16-bit S and Z per group of 32
        assert costs[b].mse == pytest.approx(float((q.dequantize() - weight).square().mean()))
    assert costs[16].bytes == 2 * layer.weight.numel()
    errors = [costs[b].error for b in (2, 3, 4, 8, 16)]
    assert errors == sorted(errors, reverse=True) and errors[-1] > 0


def test_input_weighted_error_predicts_the_output_error():
    layer = linear()
    energy = torch.rand(96, generator=GEN) * 4  # E[x_j²] per input channel, uneven
    cost = mixed.layer_cost(layer.weight.detach(), 3, scheme_for, energy)
    delta = layer.weight.detach() - fake_quantize(layer.weight.detach(), scheme_for(3))
    x = torch.randn(20000, 96, generator=GEN) * energy.sqrt()  # independent channels with that energy
    measured = float((x @ delta.T).square().sum(dim=1).mean())  # E‖(W − Q)x‖²
    assert cost.error == pytest.approx(measured, rel=0.05)


def test_input_second_moments_are_measured_per_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8))
    batches = torch.randint(0, 50, (3, 10), generator=GEN)
    means = mixed.input_sq_means(model, {"1": model[1]}, batches)
    expected = model[0].weight.detach()[batches.flatten()].square().mean(dim=0)
    assert torch.allclose(means["1"], expected, rtol=1e-5)
    assert not model[1]._forward_hooks  # hooks removed


def test_unknown_bit_width_is_refused():
    with pytest.raises(QuantTuneError, match="Choose among"):
        mixed.measure_sensitivity({"fc": linear()}, scheme_for, [4, 12])


# -- choosing --------------------------------------------------------------------------------------
def test_choice_matches_brute_force_on_small_random_cases():
    rng = random.Random(1)
    for case in range(40):
        costs = random_costs(rng, n_layers=rng.randint(2, 5), n_options=rng.randint(2, 4))
        fixed = rng.randint(0, 5000)
        for budget in budgets(costs, fixed, 5):
            plan = mixed.choose_bits(costs, budget, fixed)
            assert plan.total_bytes <= budget
            assert plan.total_error == pytest.approx(brute_force(costs, budget, fixed), rel=1e-12), case
            assert (plan.total_bytes, plan.total_error) == pytest.approx(
                mixed.plan_cost(costs, plan.bits, fixed)
            )


def test_bigger_budget_never_gives_more_error():
    costs = random_costs(random.Random(2), n_layers=30, n_options=4)
    plans = [mixed.choose_bits(costs, b, 10_000) for b in budgets(costs, 10_000, 25)]
    assert all(p.total_bytes <= p.budget_bytes for p in plans)
    errors = [p.total_error for p in plans]
    assert all(a >= b for a, b in zip(errors, errors[1:], strict=False)) and errors[0] > errors[-1]
    assert set(plans[-1].bits.values()) == {max(o) for o in costs.values()}  # everything fits: widest


def test_frontier_search_reaches_the_lagrangian_bound_and_thinning_stays_close():
    costs = random_costs(random.Random(3), n_layers=120, n_options=5)
    budget = budgets(costs, 0, 5)[1]
    exact = mixed.choose_bits(costs, budget, 0)
    thinned = mixed.choose_bits(costs, budget, 0, max_states=1000)  # the frontier here is longer
    # the Lagrangian dual: a lower bound on the least error of any plan within the budget
    bound = max(
        sum(min(c.error + lam * c.bytes for c in o.values()) for o in costs.values()) - lam * budget
        for lam in [0.0, *torch.logspace(-9, 2, 2000).tolist()]
    )
    assert exact.total_bytes <= budget and thinned.total_bytes <= budget
    assert bound <= exact.total_error <= 1.005 * bound
    assert exact.total_error < thinned.total_error <= 1.01 * bound


def test_more_bits_go_where_the_input_energy_is():
    loud, quiet = linear(seed=5), linear(seed=5)  # identical weights
    energy = {"loud": torch.full((96,), 100.0), "quiet": torch.full((96,), 0.01)}
    costs = mixed.measure_sensitivity({"loud": loud, "quiet": quiet}, scheme_for, [2, 4, 8], energy)
    budget = costs["loud"][8].bytes + costs["quiet"][2].bytes + 10  # room for one wide layer only
    plan = mixed.choose_bits(costs, budget, 0)
    assert plan.bits == {"loud": 8, "quiet": 2} and plan.count_by_bits == {8: 1, 2: 1}


def test_a_budget_below_the_smallest_choice_names_the_size_and_the_fix():
    costs = random_costs(random.Random(4), n_layers=3, n_options=3)
    floor = budgets(costs, 2_000_000, 2)[0]
    with pytest.raises(QuantTuneError) as err:
        mixed.choose_bits(costs, floor - 1, 2_000_000)
    assert f"{floor / 1e6:.2f} MB" in err.value.message and "Raise the budget" in err.value.fix
    assert mixed.choose_bits(costs, floor, 2_000_000).total_bytes == floor


# -- multi-stage -----------------------------------------------------------------------------------
WEIGHTS = {f"w{i}": torch.randn(64, 256, generator=GEN) * 0.02 + 0.005 * i for i in range(3)}
SETTINGS = [(True, "tensor"), (True, "channel"), (True, "group"), (False, "channel"), (False, "group")]


@pytest.mark.parametrize(("symmetric", "granularity"), SETTINGS)
def test_int16_stage_is_nearly_exact_and_the_detour_costs_almost_nothing(symmetric, granularity):
    report = multistage(WEIGHTS, (16, 8), symmetric=symmetric, granularity=granularity, group_size=64)
    assert report.summary.stage_sqnr_db[0] > 80
    assert abs(report.summary.detour_cost_db) < 0.01 and report.summary.codes_changed < 0.01
    for row in report.layers:
        int16, int8 = row.stages
        assert int16.sqnr_db > 80 and int8.sqnr_db == pytest.approx(row.direct_sqnr_db, abs=0.01)
        # on its own final grid, rounding FP32 straight there is never worse (float32 rounding aside)
        assert row.total_mse >= row.same_grid_mse * (1 - 1e-6)
        assert int8.total_mse == row.total_mse and int16.total_mse == int16.mse


def test_asymmetric_detour_gives_the_direct_codes():
    # 2^16 − 1 = 257 · (2^8 − 1): every INT8 rounding boundary is an INT16 cell boundary, so values
    # rounded to INT16 first still round to the same INT8 code (symmetric ranges lack this).
    report = multistage(WEIGHTS, (16, 8), symmetric=False, granularity="channel")
    assert report.summary.codes_changed < 1e-4
    symmetric = multistage(WEIGHTS, (16, 8), symmetric=True, granularity="channel")
    assert symmetric.summary.codes_changed > report.summary.codes_changed


def test_final_stage_is_a_stored_weight_that_saves_and_reloads(tmp_path, tiny_tokenizer):
    from core.quant.artifact import load_quantized, save_quantized
    from core.quant.calibration import linear_layers
    from tests.tiny_models import build_tiny_model

    model = build_tiny_model(tiny_tokenizer)
    weights = {name: layer.weight for name, layer in linear_layers(model).items()}
    report = multistage(weights, (16, 8), symmetric=True, granularity="group", group_size=32)
    assert report.scheme == "INT8 symmetric group-32" and set(report.quantized) == set(weights)
    with torch.no_grad():
        for name, q in report.quantized.items():
            model.get_submodule(name).weight.copy_(q.dequantize())
    save_quantized(model, tiny_tokenizer, report.quantized, tmp_path / "out", {"method": "multistage"})
    reloaded, _, stored, _ = load_quantized(tmp_path / "out")
    for name, q in report.quantized.items():
        assert torch.equal(stored[name].codes, q.codes)
        assert torch.equal(reloaded.get_submodule(name).weight, q.dequantize())


def test_three_stages_report_each_and_bad_stages_are_refused():
    report = multistage(WEIGHTS, (16, 8, 4), symmetric=False, granularity="group", group_size=64)
    assert [s.bits for s in report.layers[0].stages] == [16, 8, 4] and len(report.summary.stage_sqnr_db) == 3
    assert report.summary.total_sqnr_db < report.summary.stage_sqnr_db[1]  # INT4 dominates the total
    for stages in [(8, 16), (16, 12), (), (16, 1)]:
        with pytest.raises(QuantTuneError):
            multistage(WEIGHTS, stages)
    with pytest.raises(QuantTuneError, match="group size"):
        multistage(WEIGHTS, (16, 8), granularity="group", group_size=0)


def test_relative_error_does_not_depend_on_the_scale_of_weights_or_inputs():
    layer, loud = linear(seed=7), linear(seed=7)
    with torch.no_grad():
        loud.weight.mul_(8.0)  # a power of two: quantization scales exactly with it
    energy = {"layer": torch.rand(96, generator=GEN), "loud": None}
    energy["loud"] = energy["layer"] * 100
    absolute = mixed.measure_sensitivity({"layer": layer, "loud": loud}, scheme_for, [3, 8], energy)
    relative = mixed.measure_sensitivity(
        {"layer": layer, "loud": loud}, scheme_for, [3, 8], energy, relative=True
    )
    for b in (3, 8):
        assert absolute["loud"][b].error == pytest.approx(64 * 100 * absolute["layer"][b].error, rel=1e-6)
        assert relative["loud"][b].error == pytest.approx(relative["layer"][b].error, rel=1e-6)
        assert 0 < relative["layer"][b].error < 1  # a noise-to-signal ratio


def test_a_size_budget_in_the_quantize_job(tiny_loaded):
    from core.jobs import JobContext, run_job
    from core.quant import job

    fast = {"eval_window": 32, "eval_max_tokens": 256, "calibration_seq_len": 32, "group_size": 32}
    uniform = run_job(job.run, job.QuantizeParams(tiny_loaded, precision="int4", **fast), JobContext())
    budget_mb = uniform.size_after_bytes * 1.05 / 1e6
    mixed_run = run_job(
        job.run, job.QuantizeParams(tiny_loaded, precision="int4", budget_mb=budget_mb, **fast), JobContext()
    )
    bits = [layer.bits for layer in mixed_run.layers]
    assert 8 in bits and 4 in bits  # some layers raised, the rest as chosen
    assert uniform.size_after_bytes < mixed_run.size_after_bytes <= budget_mb * 1e6
    assert sum(layer.mse for layer in mixed_run.layers) < sum(layer.mse for layer in uniform.layers)
    assert dict(mixed_run.settings["overrides"])  # the plan is in the report
    too_small = job.QuantizeParams(tiny_loaded, precision="int4", budget_mb=0.001, **fast)
    with pytest.raises(QuantTuneError, match="over the budget"):
        run_job(job.run, too_small, JobContext())


def test_fisher_weighting_gives_bits_where_the_loss_is_sensitive():
    torch.manual_seed(0)
    same = torch.randn(16, 64)
    layers = {"loud": nn.Linear(64, 16, bias=False), "quiet": nn.Linear(64, 16, bias=False)}
    for layer in layers.values():
        layer.weight.data.copy_(same)
    fisher = {"loud": torch.full((16, 64), 100.0), "quiet": torch.full((16, 64), 0.01)}
    scheme_for = lambda bits: Scheme(bits, False, "group", 32)  # noqa: E731
    costs = mixed.measure_sensitivity(layers, scheme_for, (4, 8), fisher=fisher)
    assert costs["loud"][4].error == pytest.approx(costs["quiet"][4].error * 1e4, rel=1e-6)
    budget = costs["loud"][8].bytes + costs["quiet"][4].bytes
    assert mixed.choose_bits(costs, budget).bits == {"loud": 8, "quiet": 4}


def test_the_multistage_job_on_a_model(tiny_loaded):
    from core.jobs import JobContext, run_job
    from core.quant import multistage as stages

    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    report = run_job(stages.run, stages.MultistageParams(tiny_loaded), JobContext())
    assert len(report.layers) == 14 and report.stages == (16, 8)
    assert report.summary.stage_sqnr_db[0] > 80  # INT16 is nearly exact
    assert report.summary.detour_cost_db == pytest.approx(0.0, abs=0.05)
    assert all(torch.equal(v, tiny_loaded.model.state_dict()[k]) for k, v in before.items())  # untouched
