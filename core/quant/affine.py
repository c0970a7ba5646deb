"""Affine (integer) quantization: q = clamp(round(x / S) + Z), x' = S · (q − Z).

Symmetric: Z = 0, S = max|x| / (2^(b−1) − 1), q in the restricted signed range
[−(2^(b−1) − 1), 2^(b−1) − 1] so that +x and −x map to ±q.
Asymmetric: the range [min, max] is first widened to include 0 (so that 0 is exact),
S = (max − min) / (2^b − 1), Z = round(−min / S), q in [0, 2^b − 1].

Granularity: one (S, Z) per tensor, per output channel (row), or per group of ``group_size``
consecutive weights along the input dimension of each row. A row whose width is not a multiple of
the group size ends with a shorter group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GRANULARITIES = ("tensor", "channel", "group")
SCALE_BITS = 16  # scales and zero points are stored as 16-bit numbers


@dataclass(frozen=True)
class Scheme:
    bits: int
    symmetric: bool
    granularity: str  # "tensor" | "channel" | "group"
    group_size: int = 64

    @property
    def label(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        where = f"group-{self.group_size}" if self.granularity == "group" else f"per-{self.granularity}"
        return f"INT{self.bits} {kind} {where}"

    def overhead_bits(self, shape: tuple[int, ...]) -> float:
        """Extra bits per weight spent on scales (and zero points) for a tensor of ``shape``."""
        numel = math.prod(shape) or 1
        per_scale = SCALE_BITS if self.symmetric else 2 * SCALE_BITS
        return per_scale * n_blocks(shape, self.granularity, self.group_size) / numel


def n_blocks(shape: tuple[int, ...], granularity: str, group_size: int) -> int:
    """How many (S, Z) pairs a tensor of ``shape`` needs at this granularity."""
    if granularity == "tensor" or len(shape) < 2:
        if granularity == "group":
            return math.ceil(math.prod(shape) / group_size)
        return 1
    rows, width = shape[0], math.prod(shape[1:])
    if granularity == "channel":
        return rows
    return rows * math.ceil(width / group_size)


def _blocks(x: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """View ``x`` as [blocks, block_len]; each row of the result gets its own (S, Z).

    Groups that overrun a row are padded with zeros: zero never changes a block's range,
    because both schemes' ranges always include 0.
    """
    if granularity == "tensor":
        return x.reshape(1, -1)
    rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
    if granularity == "channel":
        return rows
    width = rows.shape[1]
    padded = math.ceil(width / group_size) * group_size
    if padded != width:
        rows = torch.nn.functional.pad(rows, (0, padded - width))
    return rows.reshape(-1, group_size)


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


def scale_zero(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """S and Z from the calibrated range [lo, hi] (tensors of any shape, broadcastable)."""
    qmin, qmax = qrange(bits, symmetric)
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        scale = torch.maximum(hi.abs(), lo.abs()) / qmax
        return scale.clamp_min(tiny), torch.zeros_like(scale)
    lo, hi = lo.clamp_max(0), hi.clamp_min(0)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(tiny)
    zero = torch.round(-lo / scale).clamp(qmin, qmax)
    return scale, zero


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    qmin, qmax = qrange(bits, symmetric)
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return scale * (q - zero)


def fake_quantize(x: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Quantize and dequantize ``x`` with min-max ranges at the scheme's granularity."""
    blocks = _blocks(x.float(), scheme.granularity, scheme.group_size)
    # amin + amax: torch's aminmax along a dimension is several times slower than the two.
    lo, hi = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    scale, zero = scale_zero(lo, hi, scheme.bits, scheme.symmetric)
    return _unblock(_fake_quantize_blocks(blocks, scale, zero, scheme), x)


def _fake_quantize_blocks(blocks: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: Scheme):
    # The same arithmetic as dequantize(quantize(...)), in place on one buffer: this runs on
    # every weight of the model several times over, and memory traffic is its whole cost.
    qmin, qmax = qrange(scheme.bits, scheme.symmetric)
    out = blocks / scale
    out.round_()
    if scheme.symmetric:
        return out.clamp_(qmin, qmax).mul_(scale)
    return out.add_(zero).clamp_(qmin, qmax).sub_(zero).mul_(scale)


def _unblock(blocks: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    rows = like.shape[0] if like.dim() >= 2 else 1
    flat = blocks.reshape(rows, -1)[:, : like.numel() // rows]
    return flat.reshape(like.shape)


@dataclass(frozen=True)
class QuantError:
    mse: float
    sqnr_db: float  # 10·log10(Σx² / Σ(x − x')²); inf when exact


def quant_error(x: torch.Tensor, x_hat: torch.Tensor) -> QuantError:
    x64, diff = x.double(), (x.double() - x_hat.double())
    noise = float(diff.square().sum())
    signal = float(x64.square().sum())
    mse = noise / max(x.numel(), 1)
    if noise == 0.0:
        return QuantError(mse, math.inf)
    if signal == 0.0:
        return QuantError(mse, -math.inf)
    return QuantError(mse, 10.0 * math.log10(signal / noise))
