"""Symmetric or asymmetric, per-tensor, per-channel or group-wise: two kinds of evidence.

1. The rule of thumb: a distribution centred on zero (|skewness| small and |mean| small next to
   std) suits symmetric quantization (Z = 0); otherwise asymmetric.
2. The measurement: quantize the tensor each way at the chosen bit width and compare the error.
   Finer granularity always lowers the error but spends bits on more scales, so each scheme is
   scored by its SQNR minus the bits it spends on scales and zero points, valued at 6.02 dB per
   bit (what one more bit of precision buys). An asymmetric scheme must also win by a margin
   (default 1.5 dB, a quarter of a bit): its zero point adds a correction term to every integer
   dot product, and kernels for symmetric weights are simpler and more widely available. The best
   score wins.
Where the two disagree, the measurement decides by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch

from core.quant.affine import GRANULARITIES, QuantError, Scheme, fake_quantize
from core.weights.stats import TensorStats

DB_PER_BIT = 20 * math.log10(2)  # ≈ 6.02 dB: the SQNR one extra bit of precision buys


@dataclass(frozen=True)
class Criteria:
    max_abs_skew: float = 0.5
    max_mean_over_std: float = 0.1
    asym_margin_db: float = 1.5


@dataclass
class SchemeResult:
    label: str
    symmetric: bool
    granularity: str
    mse: float
    sqnr_db: float
    overhead_bits: float
    score_db: float = math.nan  # SQNR less the cost of scales (and the asymmetric margin)


@dataclass
class Recommendation:
    rule_symmetric: bool | None  # None: the rule cannot judge (no spread, non-finite stats)
    rule_reason: str
    measured: list[SchemeResult] = field(default_factory=list)
    best: SchemeResult | None = None
    agree: bool | None = None

    @property
    def symmetric(self) -> bool | None:
        if self.best is not None:
            return self.best.symmetric
        return self.rule_symmetric

    @property
    def label(self) -> str:
        if self.best is not None:
            return self.best.label
        if self.rule_symmetric is None:
            return "keep as is"
        return "symmetric" if self.rule_symmetric else "asymmetric"

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(symmetric=self.symmetric, label=self.label)
        return data


def rule_of_thumb(stats: TensorStats, criteria: Criteria) -> tuple[bool | None, str]:
    if not stats.quantizable or not math.isfinite(stats.skew) or stats.std == 0:
        return None, "no spread to judge (constant, empty or not a float weight)"
    ratio = abs(stats.mean) / stats.std
    centred = abs(stats.skew) <= criteria.max_abs_skew and ratio <= criteria.max_mean_over_std
    verdict = "symmetric" if centred else "asymmetric"
    return centred, (
        f"|skewness| = {abs(stats.skew):.3g} (limit {criteria.max_abs_skew:g}), "
        f"|mean|/std = {ratio:.3g} (limit {criteria.max_mean_over_std:g}) → {verdict}"
    )


def measure(tensor: torch.Tensor, bits: int, group_size: int, asym_margin_db: float) -> list[SchemeResult]:
    """Error of every symmetric/asymmetric × granularity scheme at ``bits`` (min-max ranges)."""
    x = tensor.detach().float()
    signal = float(x.square().sum())
    results = []
    for symmetric in (True, False):
        for granularity in GRANULARITIES:
            scheme = Scheme(bits, symmetric, granularity, group_size)
            error = _error(x, fake_quantize(x, scheme), signal)
            overhead = scheme.overhead_bits(tuple(x.shape))
            score = _score(error.sqnr_db, overhead, symmetric, asym_margin_db)
            results.append(
                SchemeResult(scheme.label, symmetric, granularity, error.mse, error.sqnr_db, overhead, score)
            )
    return results


def _score(sqnr_db: float, overhead_bits: float, symmetric: bool, asym_margin_db: float) -> float:
    return sqnr_db - DB_PER_BIT * overhead_bits - (0.0 if symmetric else asym_margin_db)


def _error(x: torch.Tensor, x_hat: torch.Tensor, signal: float) -> QuantError:
    noise = float(x_hat.sub_(x).square_().sum())
    mse = noise / max(x.numel(), 1)
    if noise == 0.0:
        return QuantError(mse, math.inf)
    return QuantError(mse, 10 * math.log10(signal / noise) if signal > 0 else -math.inf)


def recommend(
    stats: TensorStats,
    tensor: torch.Tensor | None,
    bits: int,
    group_size: int,
    criteria: Criteria,
) -> Recommendation:
    rule, reason = rule_of_thumb(stats, criteria)
    rec = Recommendation(rule, reason)
    if tensor is None or rule is None or stats.nonfinite:
        return rec
    rec.measured = measure(tensor, bits, group_size, criteria.asym_margin_db)
    rec.best = max(rec.measured, key=lambda r: r.score_db)
    rec.agree = rec.best.symmetric == rule
    return rec


def rejudge(stats: TensorStats, rec: Recommendation, criteria: Criteria) -> Recommendation:
    """``rec`` judged again with other thresholds, without reading the tensor again: the rule is
    re-run on the statistics and the measured errors are re-scored with the new asymmetric
    margin (the errors themselves do not depend on the thresholds)."""
    rule, reason = rule_of_thumb(stats, criteria)
    new = Recommendation(rule, reason)
    if not rec.measured or rule is None:
        return new
    new.measured = [
        replace(r, score_db=_score(r.sqnr_db, r.overhead_bits, r.symmetric, criteria.asym_margin_db))
        for r in rec.measured
    ]
    new.best = max(new.measured, key=lambda r: r.score_db)
    new.agree = new.best.symmetric == rule
    return new
