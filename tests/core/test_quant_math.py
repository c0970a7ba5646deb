"""Quantization formulas against torch's reference quantizers, storage, and each observer on
synthetic data whose best range is known."""

import math

import pytest
import torch

from core.quant.affine import Scheme, fake_quantize, qrange, quantize, scale_zero
from core.quant.observers import OBSERVERS, _expected_mse, make_observer
from core.quant.qtensor import QuantizedWeight, quantize_rtn

GEN = torch.Generator().manual_seed(0)
TORCH_QUANT_DEPRECATED = "ignore:torch.quantize_per:UserWarning"


@pytest.mark.filterwarnings(TORCH_QUANT_DEPRECATED)
def test_asymmetric_per_tensor_matches_torch():
    x = torch.randn(1000, generator=GEN) * 2 + 1
    scale, zero = scale_zero(x.min(), x.max(), 8, symmetric=False)
    reference = torch.quantize_per_tensor(x, float(scale), int(zero), torch.quint8)
    assert torch.equal(quantize(x, scale, zero, 8, False).to(torch.uint8), reference.int_repr())
    assert torch.allclose(quantize_rtn(x.reshape(1, -1), Scheme(8, False, "tensor")).dequantize()[0],
                          reference.dequantize(), atol=1e-6)  # fmt: skip


@pytest.mark.filterwarnings(TORCH_QUANT_DEPRECATED)
def test_symmetric_per_channel_matches_torch():
    w = torch.randn(16, 40, generator=GEN)
    q = quantize_rtn(w, Scheme(8, True, "channel"))
    scale = q.scale[:, 0].double()
    reference = torch.quantize_per_channel(w, scale, torch.zeros(16, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(q.codes, reference.int_repr())
    assert torch.allclose(q.dequantize(), reference.dequantize().float(), atol=1e-6)


def test_formulas_as_documented():
    # symmetric: S = max|x| / (2^(b-1) - 1), Z = 0, restricted range
    s, z = scale_zero(torch.tensor(-3.0), torch.tensor(1.5), 4, True)
    assert float(s) == pytest.approx(3.0 / 7) and float(z) == 0 and qrange(4, True) == (-7, 7)
    # asymmetric: S = (max - min) / (2^b - 1), Z = round(-min / S), range includes 0
    s, z = scale_zero(torch.tensor(-1.0), torch.tensor(3.0), 4, False)
    assert float(s) == pytest.approx(4.0 / 15) and float(z) == round(1.0 / (4.0 / 15))
    s, z = scale_zero(torch.tensor(2.0), torch.tensor(6.0), 8, False)  # all positive: min widened to 0
    assert float(z) == 0 and float(s) == pytest.approx(6.0 / 255)


@pytest.mark.parametrize(
    "scheme",
    [Scheme(4, True, "tensor"), Scheme(4, False, "channel"), Scheme(4, False, "group", 32),
     Scheme(3, True, "group", 64), Scheme(2, False, "group", 128), Scheme(8, True, "channel")],
    ids=lambda s: s.label,
)  # fmt: skip
def test_stored_weight_round_trips_and_matches_fake_quant(scheme):
    w = torch.randn(24, 100, generator=GEN)  # 100 is not a multiple of any group size
    q = quantize_rtn(w, scheme)
    qmin, qmax = qrange(scheme.bits, scheme.symmetric)
    assert int(q.codes.min()) >= qmin and int(q.codes.max()) <= qmax
    assert torch.equal(q.dequantize(), fake_quantize(w, scheme))
    again = QuantizedWeight.from_state(q.state("layer"), "layer", scheme)
    assert torch.equal(again.dequantize(), q.dequantize())
    assert q.nbytes_packed < w.numel() * 4 * scheme.bits / 16


def _feed(observer, x, chunks=10):
    for part in x.chunk(chunks):
        observer.observe(part)
    return observer


def test_minmax_and_moving_average():
    batches = [torch.full((10,), -1.0), torch.full((10,), 3.0)]
    minmax, moving = make_observer("minmax"), make_observer("moving_average")
    for b in batches:
        minmax.observe(torch.cat([b, -b]))
        moving.observe(torch.cat([b, -b]))
    assert (minmax.range(8, False).lo, minmax.range(8, False).hi) == (-3.0, 3.0)
    # first batch sets the range, the second moves it 1% of the way
    r = moving.range(8, False)
    assert r.hi == pytest.approx(1.0 + 0.01 * (3.0 - 1.0)) and r.lo == pytest.approx(-1.0 - 0.01 * 2.0)


def test_percentile_on_uniform_data():
    x = torch.rand(400_000, generator=GEN) * 10  # uniform on [0, 10]
    r = _feed(make_observer("percentile", percentile=99.0), x).range(8, False)
    # the central 99%: half a percent clipped at each end
    assert r.hi == pytest.approx(9.95, abs=0.02) and r.lo == pytest.approx(0.05, abs=0.02)


def test_mse_observer_finds_the_brute_force_optimum():
    x = torch.randn(200_000, generator=GEN)
    observer = _feed(make_observer("mse"), x)
    chosen = observer.range(4, True)
    # brute force on the raw data over a fine grid of clipping thresholds
    best = min((t / 100 for t in range(100, 460)), key=lambda t: _raw_mse(x, t, 4))
    assert chosen.hi == pytest.approx(best, abs=0.06)
    assert 2.3 < chosen.hi < 2.7  # the known optimum for a unit Gaussian at 15 levels is ~2.5σ
    assert _raw_mse(x, chosen.hi, 4) < _raw_mse(x, float(x.abs().max()), 4)


def _raw_mse(x, bound, bits):
    s, z = scale_zero(torch.tensor(-bound), torch.tensor(bound), bits, True)
    return float(((quantize(x, s, z, bits, True) - z) * s - x).square().mean())


def test_histogram_mse_agrees_with_raw_mse():
    x = torch.randn(100_000, generator=GEN)
    observer = _feed(make_observer("mse"), x)
    est = _expected_mse(observer._centres(), observer.counts, -2.5, 2.5, 4, True)
    assert est == pytest.approx(_raw_mse(x, 2.5, 4), rel=0.05)


def test_clipping_observers_ignore_a_lone_outlier():
    x = torch.cat([torch.randn(100_000, generator=GEN), torch.tensor([60.0])])
    for name in ("percentile", "mse", "entropy"):
        r = make_observer(name)
        r.observe(x)
        assert r.range(4, True).hi < 10, name


def test_entropy_keeps_the_full_range_of_uniform_data():
    x = torch.rand(200_000, generator=GEN) * 2 - 1
    assert _feed(make_observer("entropy"), x).range(8, True).hi > 0.95


@pytest.mark.parametrize("name", OBSERVERS)
def test_observers_refuse_to_guess_without_data(name):
    from core.errors import QuantTuneError

    with pytest.raises(QuantTuneError, match="no finite values"):
        make_observer(name).range(8, True)


@pytest.mark.parametrize("name", OBSERVERS)
def test_observers_skip_nan(name):
    observer = make_observer(name)
    x = torch.tensor([1.0, -2.0, float("nan"), 0.5] * 100)
    if name in ("minmax", "moving_average"):
        x = x[torch.isfinite(x)]  # min-max observers are fed finite values by the caller
    observer.observe(x)
    r = observer.range(8, False)
    assert math.isfinite(r.lo) and math.isfinite(r.hi) and r.lo < r.hi


@pytest.mark.parametrize(
    "scheme", [Scheme(4, False, "group", 32), Scheme(4, True, "channel"), Scheme(3, True, "tensor")], ids=str
)
def test_weight_mse_ranges_never_lose_to_minmax(scheme):
    from core.quant.qtensor import quantize_with_ranges
    from core.quant.weight_ranges import weight_ranges

    w = torch.distributions.StudentT(3.0).sample((64, 96))  # heavy tails: clipping pays
    errors = {}
    for observer in ("minmax", "mse", "percentile"):
        lo, hi = weight_ranges(w, scheme, observer)
        assert lo.shape == hi.shape == (64, 1 if scheme.granularity != "group" else 3)
        errors[observer] = float((quantize_with_ranges(w, lo, hi, scheme).dequantize() - w).square().mean())
    assert errors["mse"] < errors["minmax"]


def test_streaming_observers_are_refused_for_weights():
    from core.quant.weight_ranges import weight_ranges

    with pytest.raises(ValueError, match="not for weights"):
        weight_ranges(torch.randn(4, 8), Scheme(8, True, "channel"), "entropy")
