"""AWQ: activation-aware weight scaling before low-bit weight-only quantization.

J. Lin, J. Tang, H. Tang, S. Yang, W.-M. Chen, W.-C. Wang, G. Xiao, X. Dang, C. Gan, S. Han,
"AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration", MLSys 2024
(arXiv:2306.00978); the search follows the authors' reference code (github.com/mit-han-lab/
llm-awq, ``auto_scale``).

A weight column that meets large inputs matters more to the output than the others. Scaling it up
by s_j before rounding (and the input down by s_j, folded into the layer before) shrinks its
relative rounding error. Per group of layers that read one input, s = mean|X|^α, normalised by
√(max s · min s), with α searched on a grid in [0, 1] to minimise the layers' output error
Σ ‖X Wᵀ − X (Q(W·s)/s)ᵀ‖² on the calibration rows kept by collect_input_stats. α = 0 gives s = 1,
plain rounding, so the chosen scales are never worse than none on those rows.

The scales are folded into the model (W ← W·s, the source ← ·1/s; see core.quant.smoothquant for
where), which leaves it the same function in FP32; the caller then quantizes the weights with RTN
or GPTQ as usual. AWQ's other half, clipping the weight range, is the "mse" weight observer
(core.quant.weight_ranges).

Written here rather than taken from a library: autoawq and llm-compressor target CUDA kernels and
their own checkpoint formats; QuantTune needs the bare search on CPU, on its own quantizers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.errors import QuantTuneError
from core.jobs import JobContext
from core.quant.activations import InputStats
from core.quant.affine import Scheme, fake_quantize
from core.quant.smoothquant import SmoothGroup, fold_scales, smoothing_groups

MEAN_FLOOR = 1e-4  # keeps s > 0 on channels that were (nearly) zero on the calibration data


def awq_scales(absmean: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|X|^α normalised so that max s · min s = 1 (α = 0: all ones, exactly)."""
    scales = absmean.float().clamp_min(MEAN_FLOOR).pow(alpha)
    return scales / (scales.max() * scales.min()).sqrt()


def output_error(x: torch.Tensor, weights: list[torch.Tensor], scheme: Scheme, scales: torch.Tensor) -> float:
    """Σ over the layers' weights W of ‖X Wᵀ − X (Q(W·s)/s)ᵀ‖² on the rows X."""
    error = 0.0
    for weight in weights:
        # In place where possible: this runs grid × layers times on every weight of the model.
        difference = fake_quantize(weight * scales, scheme).div_(scales).sub_(weight)
        error += float((x @ difference.t()).square_().sum())
    return error


def search_alpha(
    x: torch.Tensor,
    absmean: torch.Tensor,
    layers: tuple[nn.Linear, ...],
    scheme: Scheme,
    grid: int,
    check_cancelled: Callable[[], None] = lambda: None,
) -> tuple[float, torch.Tensor]:
    """The α in {0, 1/grid, …, 1} with the least output error, and its scales (ties: smallest α)."""
    weights = [linear.weight.detach().float().cpu() for linear in layers]
    best_alpha, best_scales, best_error = 0.0, None, float("inf")
    for step in range(grid + 1):
        check_cancelled()  # a wide group takes seconds over the whole grid
        alpha = step / grid
        scales = awq_scales(absmean, alpha)
        error = output_error(x, weights, scheme, scales)
        if error < best_error:
            best_alpha, best_scales, best_error = alpha, scales, error
    return best_alpha, best_scales


def _checked_rows(group: SmoothGroup, entry: InputStats) -> torch.Tensor:
    x = entry.sample.float().cpu()
    if x.shape[0] == 0:
        raise QuantTuneError(
            f"AWQ has no calibration rows for {', '.join(group.names)}.",
            "Collect the input statistics with keep_rows of at least 1 (256 is usual).",
        )
    return x


def awq_scale(
    model: nn.Module, stats: dict[str, InputStats], scheme: Scheme, ctx: JobContext, grid: int = 20
) -> dict[str, float]:
    """Search and fold AWQ scales for every calibrated group, in place; α by source module name.

    ``stats`` must come from the model before any scaling (one collect_input_stats pass): each
    fold changes only its own group's input, which the search already accounted for. A cancelled
    run leaves some groups scaled: the model is still the same function, just not all searched.
    """
    if grid < 1:
        raise QuantTuneError(f"The AWQ grid needs at least one step (got {grid}).", "Use 20.")
    groups = [(group, group.stats_of(stats)) for group in smoothing_groups(model)]
    groups = [(group, entry) for group, entry in groups if entry is not None]
    chosen = {}
    for done, (group, entry) in enumerate(groups):
        x = _checked_rows(group, entry)
        alpha, scales = search_alpha(x, entry.absmean, group.layers, scheme, grid, ctx.check_cancelled)
        if alpha > 0:
            fold_scales(group, scales)
        chosen[group.source_name] = alpha
        ctx.progress(done + 1, len(groups), f"AWQ scales for {', '.join(group.names)}")
    return chosen
