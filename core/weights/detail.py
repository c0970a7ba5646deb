"""What the Inspect pane draws for one selected tensor: its histogram, the clipping ranges that
symmetric and asymmetric quantization would use, and the per-channel abs-max."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.quant.affine import qrange, scale_zero
from core.weights.sources import open_source
from core.weights.stats import TensorStats, channel_absmax, tensor_stats


@dataclass
class ClipRange:
    lo: float
    hi: float
    scale: float
    zero: int


@dataclass
class TensorDetail:
    stats: TensorStats
    edges: list[float]  # bins + 1 edges
    counts: list[int]
    symmetric: ClipRange
    asymmetric: ClipRange
    channel_absmax: list[float]


def clip_ranges(lo: float, hi: float, bits: int) -> tuple[ClipRange, ClipRange]:
    """Per-tensor min-max ranges of both schemes at ``bits``, with their S and Z."""
    out = []
    for symmetric in (True, False):
        scale, zero = scale_zero(torch.tensor(lo), torch.tensor(hi), bits, symmetric)
        qmin, qmax = qrange(bits, symmetric)
        s, z = float(scale), int(zero)
        out.append(ClipRange(s * (qmin - z), s * (qmax - z), s, z))
    return out[0], out[1]


def tensor_detail(source_path: str, name: str, bins: int = 100, bits: int = 4) -> TensorDetail:
    tensor = open_source(Path(source_path)).load(name)
    return detail_of(name, tensor, bins, bits)


def detail_of(name: str, tensor: torch.Tensor, bins: int, bits: int) -> TensorDetail:
    stats = tensor_stats(name, tensor)
    values = tensor.detach().float().reshape(-1)
    values = values[torch.isfinite(values)] if stats.nonfinite else values
    lo, hi = (stats.min, stats.max) if values.numel() else (0.0, 0.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5  # a constant tensor still gets a visible bin
    counts = torch.histc(values, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    sym, asym = clip_ranges(stats.min if values.numel() else 0.0, stats.max if values.numel() else 0.0, bits)
    return TensorDetail(
        stats,
        edges.tolist(),
        [int(c) for c in counts.tolist()],
        sym,
        asym,
        channel_absmax(tensor).tolist() if tensor.is_floating_point() and tensor.numel() else [],
    )


def learn_numbers(detail: TensorDetail, recommendation_label: str, rule: str, k: float, bits: int) -> dict:
    """The selected tensor's numbers for the Inspect step's Learn panel (core.learn.render)."""
    s = detail.stats
    return {
        "tensor": s.name,
        "mean": s.mean,
        "std": s.std,
        "skew": s.skew,
        "kurtosis": s.kurtosis,
        "outliers": s.outlier_share(k),
        "k": k,
        "bits": bits,
        "sym_scale": detail.symmetric.scale,
        "sym_hi": detail.symmetric.hi,
        "asym_scale": detail.asymmetric.scale,
        "asym_zero": detail.asymmetric.zero,
        "asym_lo": detail.asymmetric.lo,
        "asym_hi": detail.asymmetric.hi,
        "rule": rule,
        "recommendation": recommendation_label,
    }
