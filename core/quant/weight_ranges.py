"""Per-block ranges for weights, by observer: what calibration chooses for each (S, Z).

Weights are all known in advance, so the observers work block by block (per tensor, channel or
group) on the values themselves:
- min-max: each block's extremes;
- percentile: each block's central ``percentile`` % of values (torch.quantile);
- MSE: for each block, the clipping ratio (of its min-max range) whose quantization error is
  smallest, searched over a grid: the classic weight-clipping search (as in AWQ's auto_clip or
  llama.cpp's quantizers).
Entropy (KL) and moving-average observers need streams of data: they are for activations.
"""

from __future__ import annotations

import torch

from core.quant.affine import Scheme, dequantize, quantize, scale_zero
from core.quant.qtensor import block_ranges, groups_per_row

WEIGHT_OBSERVERS = ("minmax", "percentile", "mse")
MSE_RATIOS = torch.linspace(0.5, 1.0, 26)  # 2% steps: finer grids changed results by < 0.1%


def weight_ranges(
    rows: torch.Tensor, scheme: Scheme, observer: str = "minmax", percentile: float = 99.99
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), each [rows, groups], for a [rows, width] weight."""
    if observer == "minmax":
        return block_ranges(rows, scheme)
    if observer == "percentile":
        return _percentile_ranges(rows, scheme, percentile)
    if observer == "mse":
        return _mse_ranges(rows, scheme)
    raise ValueError(f"observer {observer!r} is not for weights; choose one of {', '.join(WEIGHT_OBSERVERS)}")


def _blocks(rows: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """[rows, groups, block_len] (group blocks padded with zeros; padding never moves a range
    that includes 0, and both schemes' ranges do)."""
    if scheme.granularity == "tensor":
        return rows.reshape(1, 1, -1)
    if scheme.granularity == "channel":
        return rows.unsqueeze(1)
    groups = groups_per_row(rows.shape[1], scheme)
    padded = torch.nn.functional.pad(rows, (0, groups * scheme.group_size - rows.shape[1]))
    return padded.reshape(rows.shape[0], groups, scheme.group_size)


def _fit(lo: torch.Tensor, hi: torch.Tensor, rows: torch.Tensor, scheme: Scheme):
    """Per-tensor results computed on one block are repeated for every row."""
    if scheme.granularity == "tensor":
        return lo.reshape(1, 1).expand(rows.shape[0], 1).clone(), hi.reshape(1, 1).expand(
            rows.shape[0], 1
        ).clone()
    return lo, hi


def _percentile_ranges(rows: torch.Tensor, scheme: Scheme, percentile: float):
    blocks = _blocks(rows.float(), scheme)
    tail = (100.0 - percentile) / 200.0
    flat = blocks.reshape(-1, blocks.shape[-1])
    lo = torch.quantile(flat, tail, dim=1).reshape(blocks.shape[:2])
    hi = torch.quantile(flat, 1.0 - tail, dim=1).reshape(blocks.shape[:2])
    return _fit(lo, hi, rows, scheme)


def _mse_ranges(rows: torch.Tensor, scheme: Scheme):
    blocks = _blocks(rows.float(), scheme)
    lo0, hi0 = blocks.amin(dim=2), blocks.amax(dim=2)
    best_err = torch.full_like(lo0, float("inf"))
    best_lo, best_hi = lo0.clone(), hi0.clone()
    for ratio in MSE_RATIOS.tolist():
        lo, hi = lo0 * ratio, hi0 * ratio
        scale, zero = scale_zero(lo, hi, scheme.bits, scheme.symmetric)
        scale, zero = scale.unsqueeze(2), zero.unsqueeze(2)
        restored = dequantize(quantize(blocks, scale, zero, scheme.bits, scheme.symmetric), scale, zero)
        err = (restored - blocks).square_().sum(dim=2)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
    return _fit(best_lo, best_hi, rows, scheme)
