"""From the project's Quantize settings to a job: defaults from the Inspect step, the size the
result will have (before running anything), and the QuantizeParams the job runs with.

Light on imports (no torch until a model is measured): the Precision pane reads the
recommendation at window start and calls ``estimate_size`` on every edit, in the GUI thread.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.quant.affine import Scheme

# Bits per weight of each precision's codes (scales and zero points are added per scheme).
CODE_BITS = {
    "fp32": 32,
    "fp16": 16,
    "bf16": 16,
    "int8": 8,
    "int4": 4,
    "int3": 3,
    "int2": 2,
    "nf4": 4,
    "fp4": 4,
}
BNB_BLOCK = 64  # bitsandbytes 4-bit block size
# bitsandbytes 4-bit with double quantization: an 8-bit absmax per block of 64 plus one FP32
# constant per 256 blocks; LLM.int8(): one FP32 scale per row.
NF4_OVERHEAD_BITS = 8 / BNB_BLOCK + 32 / (BNB_BLOCK * 256)


@dataclass(frozen=True)
class SizeEstimate:
    bytes_before: int  # FP32
    bytes_after: int
    parameters: int
    quantized_weights: int  # weights in layers stored below 16 bits
    unquantized_bytes: int = 0  # embeddings, norms and biases: never quantized here

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.bytes_after / max(1, self.parameters)

    @property
    def ratio(self) -> float:
        return self.bytes_before / max(1, self.bytes_after)


def recommended_symmetric(recommended: dict[str, dict[str, Any]]) -> bool | None:
    """The scheme the Inspect step recommended for most tensors (None: nothing recommended)."""
    votes = Counter(bool(r.get("symmetric")) for r in recommended.values())
    if not votes:
        return None
    return votes[True] > votes[False]


def symmetric_of(settings: Any, recommended: dict[str, dict[str, Any]]) -> bool:
    """The user's choice, else the recommendation, else asymmetric (safe for skewed weights)."""
    if settings.symmetric is not None:
        return settings.symmetric
    chosen = recommended_symmetric(recommended)
    return False if chosen is None else chosen


def layer_precision(settings: Any, name: str) -> str:
    """Per-layer precisions apply to integer quantization only (casts and bitsandbytes treat
    every layer alike)."""
    if not uses_overrides(settings):
        return settings.precision
    return settings.overrides.get(name, settings.precision)


def uses_overrides(settings: Any) -> bool:
    return settings.precision.startswith("int") and settings.method != "bitsandbytes"


def _layer_bits(precision: str, shape: tuple[int, ...], scheme: Scheme, bnb: bool) -> float:
    """Bits per weight of one layer at ``precision``, its scales and zero points included."""
    code = CODE_BITS[precision]
    if precision in ("nf4", "fp4"):
        return code + NF4_OVERHEAD_BITS
    if precision == "int8" and bnb:  # LLM.int8(): one FP32 scale per row
        return code + 32 / shape[-1]
    if precision.startswith("int"):
        from core.quant.affine import Scheme

        return code + Scheme(code, scheme.symmetric, scheme.granularity, scheme.group_size).overhead_bits(
            shape
        )
    return code


def estimate_size(model: Any, settings: Any, recommended: dict | None = None) -> SizeEstimate:
    """Size of the weights after quantizing with ``settings`` (a core.project.QuantizeSettings).

    Linear layers (the LM head only when included) take their precision's bits plus the
    scales and zero points of the scheme; everything else stays FP32 (FP16/BF16 casts: all of it).
    """
    from core.quant.affine import Scheme

    scheme = Scheme(8, symmetric_of(settings, recommended or {}), settings.granularity, settings.group_size)
    from core.quant.embeddings import embedding_names, include_head

    embeddings = getattr(settings, "include_embeddings", False) and settings.precision.startswith("int")
    linears = quantizable_layers(
        model, include_head(model, settings) if embeddings else settings.include_head
    )
    if embeddings:
        linears.update({n: tuple(model.get_submodule(n).weight.shape) for n in embedding_names(model)})
    parameters = sum(p.numel() for p in model.parameters())
    cast = settings.precision in ("fp16", "bf16")
    rest_bits = 16 if cast else 32
    bits, low = 0.0, 0
    for name, shape in linears.items():
        precision = layer_precision(settings, name)
        layer = _layer_bits(precision, shape, scheme, settings.method == "bitsandbytes") * _numel(shape)
        bits += layer
        low += _numel(shape) if CODE_BITS[precision] < 16 else 0
    rest = parameters - sum(_numel(s) for s in linears.values())
    after = int((bits + rest * rest_bits) / 8)
    return SizeEstimate(parameters * 4, after, parameters, low, rest * rest_bits // 8)


def quantizable_layers(model: Any, include_head: bool = False) -> dict[str, tuple[int, ...]]:
    """Linear layer name -> weight shape (the LM head only when asked for)."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: tuple(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (include_head or module is not head)
    }


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def read_text(path: str, bundled: str) -> str:
    """A calibration or evaluation text: the user's file, or the bundled one when empty."""
    from core.evaluate.perplexity import bundled_text, read_text_file

    return read_text_file(Path(path)) if path else bundled_text(bundled)


def job_params(settings: Any, recommended: dict, loaded: Any, output: str = "", **extra: Any):
    """The Quantize job's parameters for the project's settings (texts read from disk here)."""
    from core.quant.job import QuantizeParams

    values = dict(
        precision=settings.precision,
        symmetric=symmetric_of(settings, recommended),
        granularity=settings.granularity,
        group_size=settings.group_size,
        method=settings.method,
        observer=settings.observer,
        percentile=settings.percentile,
        include_head=settings.include_head,
        include_embeddings=settings.include_embeddings,
        overrides=tuple(sorted(settings.overrides.items())) if uses_overrides(settings) else (),
        calibration_text=read_text(settings.calibration_file, "calibration"),
        calibration_samples=settings.calibration_samples,
        calibration_seq_len=settings.calibration_seq_len,
        eval_text=read_text(settings.eval_file, "heldout"),
        output=output,
        budget_mb=settings.budget_mb if settings.precision.startswith("int") else 0.0,
        activations=settings.activations and settings.precision == "int8",
        smoothquant=settings.smoothquant and settings.activations and settings.precision == "int8",
        activation_observer=settings.activation_observer,
    )
    return QuantizeParams(loaded, **{**values, **extra})
