"""The Quantize job's activation-aware steps, run on its copy of the model before the weights are
rounded: AWQ's per-channel scaling, SmoothQuant, and the static activation ranges of W8A8.

Recipe: calibration windows → input statistics of the layers to quantize → (AWQ: search and fold
scales | SmoothQuant: fold scales, statistics again) → snapshot of the (rescaled) FP32 weights the
report compares against → ranges for the activations (W8A8). After the weights are quantized the
job attaches the activation hooks with ``attach``; a saved model records the ranges and its reload
attaches them again (see core.quant.artifact).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

ACTIVATION_BITS = 8
HIST_BINS = 96  # per input, kept in the report: 210 layers × 96 counts stay small in JSON


@dataclass
class Prepared:
    reference: dict[str, torch.Tensor] = field(default_factory=dict)  # rescaled weights (AWQ, SmoothQuant)
    activation_ranges: dict[str, tuple[float, float]] | None = None  # W8A8
    histograms: dict[str, dict[str, Any]] = field(default_factory=dict)  # W8A8: each input's values
    alphas: dict[str, float] = field(default_factory=dict)  # AWQ's α per group

    def to_json(self) -> dict[str, Any] | None:
        from core.quant.activations import ranges_to_json

        if self.activation_ranges is None:
            return None
        data = ranges_to_json(self.activation_ranges, ACTIVATION_BITS, symmetric=False)
        return {**data, "histograms": self.histograms}


def needed(params: Any) -> bool:
    return params.method == "awq" or params.activations


def prepare(model, tokenizer, params: Any, layers: dict, ctx) -> Prepared:
    """Run the activation-aware steps ``params`` asks for on ``model`` (changed in place)."""
    from core.quant import activations

    batches = _batches(tokenizer, params)
    observer = params.activation_observer
    ctx.stage("Collecting activation statistics on the calibration text")
    stats = activations.collect_input_stats(model, batches, layers, ctx, observer=observer)
    prepared = Prepared()
    if params.method == "awq":
        from core.quant.awq import awq_scale

        ctx.stage("Searching AWQ's scales (activation-aware)")
        prepared.alphas = awq_scale(model, stats, params.scheme, ctx)
    if params.activations and params.smoothquant:
        from core.quant.smoothquant import smooth

        if params.method == "awq":  # AWQ rescaled the inputs: smoothing needs their new statistics
            stats = activations.collect_input_stats(model, batches, layers, ctx, observer=observer)

        ctx.stage("Smoothing activation outliers into the weights (SmoothQuant)")
        smooth(model, stats, alpha=params.smooth_alpha)
        ctx.stage("Collecting activation statistics again, after smoothing")
        stats = activations.collect_input_stats(model, batches, layers, ctx, observer=observer)
    if params.method == "awq" or (params.activations and params.smoothquant):
        prepared.reference = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    if params.activations:
        prepared.activation_ranges = activations.activation_ranges(stats, ACTIVATION_BITS, symmetric=False)
        prepared.histograms = {n: histogram(stats[n].sample, *prepared.activation_ranges[n]) for n in stats}
    return prepared


def histogram(sample: torch.Tensor, lo: float, hi: float, bins: int = HIST_BINS) -> dict[str, Any]:
    """Counts of the kept input rows' values over a view that shows both them and [lo, hi]."""
    values = sample.float().reshape(-1)
    if values.numel() == 0:
        return {"lo": lo, "hi": hi, "counts": []}
    left, right = min(float(values.min()), lo), max(float(values.max()), hi)
    right = right if right > left else left + 1e-6
    counts = torch.histc(values, bins, left, right)
    return {"lo": left, "hi": right, "counts": [int(c) for c in counts.tolist()], "values": values.numel()}


def attach(model, prepared: Prepared) -> list:
    """Quantize the layers' inputs with their static ranges from now on (W8A8); handles."""
    from core.quant.activations import attach_activation_quant

    if prepared.activation_ranges is None:
        return []
    return attach_activation_quant(model, prepared.activation_ranges, ACTIVATION_BITS, symmetric=False)


def _batches(tokenizer, params: Any) -> torch.Tensor:
    from core.evaluate.perplexity import bundled_text
    from core.quant.calibration import calibration_batches

    text = params.calibration_text or bundled_text("calibration")
    return calibration_batches(tokenizer, text, params.calibration_samples, params.calibration_seq_len)
