"""Range observers: how calibration chooses the range [lo, hi] that S and Z are computed from.

Each observer watches values (weights, or activations batch after batch) and proposes a range:
- min-max: the extremes seen; no value is ever clipped, but one outlier stretches the grid;
- moving-average min-max: each batch's extremes folded into a running average (as
  torch.ao.quantization's MovingAverageMinMaxObserver), so one odd batch matters less;
- percentile: clip at a percentile of |x| (99.9, 99.99, …) and let the rare tails saturate;
- MSE: the clipping threshold that minimises the mean squared quantization error on the data seen;
- entropy (KL): the threshold whose quantized histogram stays closest, in KL divergence, to the
  original one (the method TensorRT popularised for activations).
The last three work on a histogram of the values, so memory stays fixed however much data passes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from core.quant.affine import qrange

OBSERVERS = ("minmax", "moving_average", "percentile", "mse", "entropy")
HIST_BINS = 2048


@dataclass
class Range:
    lo: float
    hi: float


class MinMaxObserver:
    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))

    def range(self, bits: int, symmetric: bool) -> Range:
        _require_data(self.lo)
        return Range(self.lo, self.hi)


class MovingAverageObserver(MinMaxObserver):
    def __init__(self, averaging_constant: float = 0.01) -> None:
        super().__init__()
        self.c = averaging_constant

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
        if math.isinf(self.lo):
            self.lo, self.hi = lo, hi
        else:
            self.lo += self.c * (lo - self.lo)
            self.hi += self.c * (hi - self.hi)


class _HistogramObserver(ABC):
    """A histogram of the values over a range that grows (by re-binning) as data arrives."""

    def __init__(self, bins: int = HIST_BINS) -> None:
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.lo, self.hi = math.inf, -math.inf

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        x = x[torch.isfinite(x)]
        if x.numel() == 0:
            return
        lo, hi = (float(v) for v in torch.aminmax(x))
        new_lo, new_hi = min(lo, self.lo), max(hi, self.hi)
        if new_hi <= new_lo:
            new_hi = new_lo + 1e-12
        if (new_lo, new_hi) != (self.lo, self.hi):
            self._rebin(new_lo, new_hi)
        self.counts += torch.histc(x, self.bins, self.lo, self.hi).double()

    def _rebin(self, lo: float, hi: float) -> None:
        # Move the old counts to the new, wider bins by their bin centres.
        if self.counts.sum() > 0:
            centres = self._centres()
            index = ((centres - lo) / (hi - lo) * self.bins).long().clamp(0, self.bins - 1)
            counts = torch.zeros_like(self.counts).index_add_(0, index, self.counts)
            self.counts = counts
        self.lo, self.hi = lo, hi

    def _centres(self) -> torch.Tensor:
        width = (self.hi - self.lo) / self.bins
        return self.lo + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def range(self, bits: int, symmetric: bool) -> Range:
        _require_data(self.lo)
        return self._choose(bits, symmetric)

    @abstractmethod
    def _choose(self, bits: int, symmetric: bool) -> Range:
        """How this observer turns its histogram into a range."""


class PercentileObserver(_HistogramObserver):
    def __init__(self, percentile: float = 99.99, bins: int = HIST_BINS) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def _choose(self, bits: int, symmetric: bool) -> Range:
        # The range covers the central ``percentile`` % of the values: half the rest is clipped
        # on each side.
        cdf = self.counts.cumsum(0) / self.counts.sum()
        tail = (100.0 - self.percentile) / 200.0
        width = (self.hi - self.lo) / self.bins
        upper = self.lo + width * torch.arange(1, self.bins + 1, dtype=torch.float64)
        hi = float(upper[int(torch.searchsorted(cdf, 1.0 - tail))])
        lo = float(upper[int(torch.searchsorted(cdf, tail))] - width)
        if symmetric:
            bound = max(abs(lo), abs(hi))
            return Range(-bound, bound)
        return Range(max(lo, self.lo), min(hi, self.hi))


def _expected_mse(centres, counts, lo: float, hi: float, bits: int, symmetric: bool) -> float:
    """Mean squared error of quantizing the histogram's values with range [lo, hi]."""
    from core.quant.affine import dequantize, quantize, scale_zero

    scale, zero = scale_zero(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
    restored = dequantize(quantize(centres.float(), scale, zero, bits, symmetric), scale, zero).double()
    return float((counts * (centres - restored) ** 2).sum() / counts.sum())


class MSEObserver(_HistogramObserver):
    """Grid search over clipping ratios (100 steps from 1% to 100% of the observed range)."""

    steps = 100

    def _candidates(self, symmetric: bool):
        bound = max(abs(self.lo), abs(self.hi))
        for i in range(1, self.steps + 1):
            ratio = i / self.steps
            yield (Range(-bound * ratio, bound * ratio) if symmetric
                   else Range(min(self.lo, 0.0) * ratio, max(self.hi, 0.0) * ratio))  # fmt: skip

    def _choose(self, bits: int, symmetric: bool) -> Range:
        centres = self._centres()
        return min(
            self._candidates(symmetric),
            key=lambda r: _expected_mse(centres, self.counts, r.lo, r.hi, bits, symmetric),
        )


class EntropyObserver(_HistogramObserver):
    """KL-divergence calibration: keep the clipping range whose 2^b-cell histogram loses least."""

    def _choose(self, bits: int, symmetric: bool) -> Range:
        centres, counts = self._centres(), self.counts
        bound = max(abs(self.lo), abs(self.hi))
        lo, hi = (-bound, bound) if symmetric else (min(self.lo, 0.0), max(self.hi, 0.0))
        cells = 2**bits
        best, best_kl = Range(lo, hi), math.inf
        for ratio in torch.linspace(0.05, 1.0, 96).tolist():
            candidate = Range(lo * ratio, hi * ratio)
            kl = _kl_after_quantizing(centres, counts, candidate, cells)
            if kl < best_kl:
                best, best_kl = candidate, kl
        return best


def _kl_after_quantizing(centres, counts, clip: Range, cells: int) -> float:
    """KL(P‖Q), as in TensorRT's entropy calibration. P: the histogram with the mass outside
    ``clip`` folded into its edge bins (what clipping does). Q: the inside mass only, quantized to
    ``cells`` equal cells across ``clip``, each cell's mass spread evenly over its non-empty bins.
    Clipping too much leaves a spike in P that Q lacks; too wide a range blurs Q's cells."""
    inside = (centres >= clip.lo) & (centres <= clip.hi)
    if not inside.any():
        return math.inf
    index = inside.nonzero().flatten()
    first, last = int(index[0]), int(index[-1])
    kept = torch.where(inside, counts, torch.zeros_like(counts))
    p = kept.clone()
    p[first] += counts[:first].sum()
    p[last] += counts[last + 1 :].sum()
    width = max(clip.hi - clip.lo, 1e-30)
    cell = ((centres - clip.lo) / width * cells).long().clamp(0, cells - 1)
    mass = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, kept)
    filled = torch.zeros(cells, dtype=torch.float64).index_add_(0, cell, (kept > 0).double())
    q = torch.where(kept > 0, mass[cell] / filled[cell].clamp_min(1), torch.zeros_like(p))
    keep = p > 0
    if bool((q[keep] == 0).any()):
        return math.inf  # P has mass where Q has none: the clip dropped a whole edge
    p, q = p[keep] / p.sum(), q[keep] / q.sum()
    return float((p * (p / q).log()).sum())


def _require_data(lo: float) -> None:
    if math.isinf(lo):
        from core.errors import QuantTuneError

        raise QuantTuneError("The observer has seen no finite values.", "Calibrate on some data first.")


def make_observer(name: str, percentile: float = 99.99):
    factories = {
        "minmax": MinMaxObserver,
        "moving_average": MovingAverageObserver,
        "percentile": lambda: PercentileObserver(percentile),
        "mse": MSEObserver,
        "entropy": EntropyObserver,
    }
    if name not in factories:
        raise ValueError(f"unknown observer {name!r}; choose one of {', '.join(OBSERVERS)}")
    return factories[name]()


def levels(bits: int, symmetric: bool) -> int:
    qmin, qmax = qrange(bits, symmetric)
    return qmax - qmin + 1
