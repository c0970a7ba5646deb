"""A quantized weight as it is stored: integer codes, one (S, Z) per block, and the scheme.

x' = S[row, group] · (q − Z[row, group]); per-tensor and per-channel are the cases of one group
per tensor and one group per row. Codes are int8 for symmetric schemes (range ±(2^(b−1) − 1))
and uint8 for asymmetric ones (0 … 2^b − 1); scales are float32 and zero points int16 at rest,
so a reload reproduces the dequantized weights bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.quant.affine import Scheme, dequantize, qrange, quantize, scale_zero


@dataclass
class QuantizedWeight:
    codes: torch.Tensor  # [rows, width] int8 or uint8
    scale: torch.Tensor  # [rows, groups] float32
    zero: torch.Tensor  # [rows, groups] int16
    scheme: Scheme

    @property
    def group_len(self) -> int:
        """Columns per group (the last group of a row may be shorter)."""
        if self.scheme.granularity == "group":
            return self.scheme.group_size
        return self.codes.shape[1]

    def expand(self, per_group: torch.Tensor) -> torch.Tensor:
        """[rows, groups] → [rows, width]: each column gets its group's value."""
        width = self.codes.shape[1]
        return per_group.repeat_interleave(self.group_len, dim=1)[:, :width]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = self.expand(self.scale.float())
        zero = self.expand(self.zero.float())
        return dequantize(self.codes.float(), scale, zero).to(dtype)

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.codes": self.codes, f"{prefix}.scale": self.scale, f"{prefix}.zero": self.zero}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str, scheme: Scheme) -> QuantizedWeight:
        return cls(tensors[f"{prefix}.codes"], tensors[f"{prefix}.scale"], tensors[f"{prefix}.zero"], scheme)

    @property
    def nbytes_packed(self) -> int:
        """Size with codes packed at ``bits`` per weight (how a deployment would store them)."""
        code_bits = self.codes.numel() * self.scheme.bits
        # per-tensor: every row holds a copy of the one (S, Z); a deployment stores it once
        pairs = 1 if self.scheme.granularity == "tensor" else self.scale.numel()
        scale_bits = pairs * 16 * (1 if self.scheme.symmetric else 2)
        return math.ceil((code_bits + scale_bits) / 8)


def groups_per_row(width: int, scheme: Scheme) -> int:
    if scheme.granularity == "group":
        return math.ceil(width / scheme.group_size)
    return 1


def as_rows(weight: torch.Tensor) -> torch.Tensor:
    """A weight as a 2-D [rows, width] view (1-D tensors become one row)."""
    return weight.reshape(weight.shape[0], -1) if weight.dim() >= 2 else weight.reshape(1, -1)


def block_ranges(rows: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of each block, [rows, groups] (per-tensor: the same range in every row)."""
    if scheme.granularity == "tensor":
        lo, hi = rows.min(), rows.max()
        return lo.expand(rows.shape[0], 1).clone(), hi.expand(rows.shape[0], 1).clone()
    if scheme.granularity == "channel":
        return rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    groups = groups_per_row(rows.shape[1], scheme)
    padded = torch.nn.functional.pad(rows, (0, groups * scheme.group_size - rows.shape[1]))
    blocks = padded.reshape(rows.shape[0], groups, scheme.group_size)
    # zero padding never changes a block's range: both schemes' ranges include 0
    return blocks.amin(dim=2), blocks.amax(dim=2)


def quantize_with_ranges(
    rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme
) -> QuantizedWeight:
    """Round-to-nearest with the given per-block ranges ([rows, groups])."""
    scale, zero = scale_zero(lo.float(), hi.float(), scheme.bits, scheme.symmetric)
    probe = QuantizedWeight(torch.empty(0, rows.shape[1]), scale, zero, scheme)
    codes = quantize(rows.float(), probe.expand(scale), probe.expand(zero), scheme.bits, scheme.symmetric)
    qmin, _ = qrange(scheme.bits, scheme.symmetric)
    dtype = torch.int8 if qmin < 0 else torch.uint8
    return QuantizedWeight(codes.to(dtype), scale.float(), zero.to(torch.int16), scheme)


def quantize_rtn(weight: torch.Tensor, scheme: Scheme) -> QuantizedWeight:
    """Round-to-nearest with min-max ranges at the scheme's granularity."""
    rows = as_rows(weight.detach().float())
    lo, hi = block_ranges(rows, scheme)
    return quantize_with_ranges(rows, lo, hi, scheme)
