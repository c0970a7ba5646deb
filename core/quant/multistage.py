"""Multi-stage quantization, FP32 → INT16 → INT8: each stage requantizes the previous stage's
dequantized values (its ranges computed on them), and the report shows what every stage adds.

What is true, and what the numbers show: the last stage rounds values that are already off by up
to half an INT16 step, so near a rounding boundary of the final grid a weight can land one level
away from its nearest one. On the same final grid, rounding FP32 straight onto it is therefore
never worse, weight by weight (``same_grid_mse`` ≤ the detour's ``total_mse``, up to float32
rounding). With min-max ranges the detour's final grid is the direct path's, up to float rounding
and, for asymmetric ranges, a rare zero point off by one, so the detour costs next to nothing:
- asymmetric: 2^16 − 1 = 257·(2^8 − 1), so every INT8 rounding boundary is an INT16 cell boundary
  and a weight rounded to INT16 first keeps its INT8 code, but for exact ties and a rare zero point
  off by one (measured: under 0.002% of Gaussian weights move; 0.04–0.07% on the default model,
  whose weights lie on Q4_1 grids where ties are common; −0.0000003 dB);
- symmetric: 2^15 − 1 is no multiple of 2^7 − 1, so about 0.1% of the codes move one level
  (measured on the default model: 0.0001 dB of SQNR).

Intermediate stages wider than 8 bits are kept as float tensors of dequantized values (a
QuantizedWeight stores 8-bit codes); the last stage is a QuantizedWeight, ready for
core.quant.artifact.save_quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from core.errors import QuantTuneError
from core.quant.affine import GRANULARITIES, Scheme, dequantize, fake_quantize, quantize
from core.quant.qtensor import QuantizedWeight, as_rows, quantize_rtn

MAX_STORED_BITS = 8  # QuantizedWeight keeps int8/uint8 codes


@dataclass(frozen=True)
class StageRow:
    bits: int
    mse: float  # against the previous stage's values (FP32 for the first stage)
    sqnr_db: float
    total_mse: float  # against FP32
    total_sqnr_db: float
    input_power: float  # mean square of the stage's input, to sum SQNRs over layers


@dataclass(frozen=True)
class LayerRow:
    name: str
    params: int
    power: float  # mean square of the FP32 weight
    stages: tuple[StageRow, ...]
    total_mse: float  # the detour's final values against FP32
    total_sqnr_db: float
    direct_mse: float  # FP32 → final bits in one step, with ranges from FP32
    direct_sqnr_db: float
    same_grid_mse: float  # FP32 rounded straight onto the detour's final grid: its floor
    codes_changed: float  # share of final codes that differ from the direct path's

    @property
    def detour_cost_db(self) -> float:
        """SQNR the detour loses against the direct path (negative: it happened to gain)."""
        return self.direct_sqnr_db - self.total_sqnr_db


@dataclass(frozen=True)
class Summary:
    stage_sqnr_db: tuple[float, ...]  # each stage against its input, over all layers
    total_sqnr_db: float
    direct_sqnr_db: float
    detour_cost_db: float
    layers_worse: int  # layers where the detour's error exceeds the direct path's
    codes_changed: float  # share of all final codes that differ from the direct path's


@dataclass
class MultistageReport:
    stages: tuple[int, ...]
    scheme: str  # the final stage's Scheme.label
    layers: list[LayerRow]
    summary: Summary
    quantized: dict[str, QuantizedWeight] = field(repr=False)


def validate_stages(stages: tuple[int, ...], granularity: str, group_size: int = 64) -> list[str]:
    problems = []
    if not stages or any(not 2 <= b <= 16 for b in stages):
        problems.append(f"every stage needs 2 to 16 bits (got {list(stages)})")
    elif any(a <= b for a, b in zip(stages[:-1], stages[1:], strict=True)):
        problems.append(f"each stage must use fewer bits than the one before (got {list(stages)})")
    elif stages[-1] > MAX_STORED_BITS:
        problems.append(f"the last stage is stored as codes of at most {MAX_STORED_BITS} bits")
    if granularity not in GRANULARITIES:
        problems.append(f"granularity must be one of {', '.join(GRANULARITIES)}")
    if granularity == "group" and group_size < 1:
        problems.append(f"the group size must be 1 or more (got {group_size})")
    return problems


def multistage(
    weights: dict[str, torch.Tensor],
    stages: tuple[int, ...] = (16, 8),
    symmetric: bool = True,
    granularity: str = "channel",
    group_size: int = 64,
    ctx=None,
) -> MultistageReport:
    """Quantize every weight through ``stages`` and measure each stage against the direct path."""
    stages = tuple(stages)
    problems = validate_stages(stages, granularity, group_size)
    if problems:
        raise QuantTuneError(
            "The multi-stage settings have problems: " + "; ".join(problems) + ".",
            "Choose decreasing bit widths such as 16 → 8, ending at 8 bits or fewer.",
        )
    schemes = [Scheme(b, symmetric, granularity, group_size) for b in stages]
    rows, quantized = [], {}
    for done, (name, weight) in enumerate(weights.items()):
        if ctx is not None:
            ctx.check_cancelled()
            ctx.progress(done, len(weights), f"Quantizing {name} in {len(stages)} stages")
        quantized[name], row = _layer(name, as_rows(weight.detach().float()), schemes)
        rows.append(row)
    return MultistageReport(stages, schemes[-1].label, rows, _summary(rows), quantized)


def _layer(name: str, original: torch.Tensor, schemes: list[Scheme]) -> tuple[QuantizedWeight, LayerRow]:
    power = _power(original)
    current, current_power, stage_rows = original, power, []
    for scheme in schemes[:-1]:
        restored = fake_quantize(current, scheme)  # = quantize_rtn(...).dequantize(), without 8-bit codes
        stage_rows.append(_stage_row(scheme.bits, original, power, current, current_power, restored))
        current, current_power = restored, _power(restored)
    final = quantize_rtn(current, schemes[-1])
    restored = final.dequantize()
    stage_rows.append(_stage_row(schemes[-1].bits, original, power, current, current_power, restored))
    direct = quantize_rtn(original, schemes[-1])
    total, straight = _error(original, power, restored), _error(original, power, direct.dequantize())
    floor, _ = _error(original, power, _round_onto(original, final))
    changed = float((final.codes != direct.codes).float().mean())
    row = LayerRow(name, original.numel(), power, tuple(stage_rows), *total, *straight, floor, changed)
    return final, row


def _stage_row(bits: int, original, power: float, before, before_power: float, after) -> StageRow:
    return StageRow(bits, *_error(before, before_power, after), *_error(original, power, after), before_power)


def _power(x: torch.Tensor) -> float:
    return float(x.double().square_().mean())


def _error(reference: torch.Tensor, power: float, restored: torch.Tensor) -> tuple[float, float]:
    """(MSE, SQNR in dB) of ``restored`` against ``reference``, whose mean square is ``power``."""
    mse = float((reference - restored).double().square_().mean())
    return mse, _db(power, mse)


def _round_onto(values: torch.Tensor, grid: QuantizedWeight) -> torch.Tensor:
    """``values`` rounded to the nearest point of ``grid``'s (S, Z), clamped to its codes."""
    scale, zero = grid.expand(grid.scale.float()), grid.expand(grid.zero.float())
    codes = quantize(values, scale, zero, grid.scheme.bits, grid.scheme.symmetric)
    return dequantize(codes, scale, zero)


def _summary(rows: list[LayerRow]) -> Summary:
    """SQNRs over the whole model: total signal over total noise, so big layers weigh more."""
    n_stages = len(rows[0].stages) if rows else 0
    stage_db = tuple(
        _db(
            sum(r.params * r.stages[k].input_power for r in rows),
            sum(r.params * r.stages[k].mse for r in rows),
        )
        for k in range(n_stages)
    )
    signal = sum(r.params * r.power for r in rows)
    total = _db(signal, sum(r.params * r.total_mse for r in rows))
    direct = _db(signal, sum(r.params * r.direct_mse for r in rows))
    worse = sum(r.total_mse > r.direct_mse for r in rows)
    changed = sum(r.codes_changed * r.params for r in rows) / max(sum(r.params for r in rows), 1)
    return Summary(stage_db, total, direct, direct - total, worse, changed)


def _db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


# -- as a job ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MultistageParams:
    loaded: Any = field(compare=False, repr=False)  # core.models.loading.LoadedModel
    stages: tuple[int, ...] = (16, 8)
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int = 64
    include_head: bool = False

    def validate(self) -> list[str]:
        return validate_stages(tuple(self.stages), self.granularity, self.group_size)


def run(params: MultistageParams, ctx) -> MultistageReport:
    """Every linear layer of the loaded model through the stages (the model is not changed)."""
    from core.quant.calibration import linear_layers

    layers = linear_layers(params.loaded.model, include_head=params.include_head)
    weights = {name: layer.weight for name, layer in layers.items()}
    return multistage(weights, params.stages, params.symmetric, params.granularity, params.group_size, ctx)
