"""Quantizing the token embeddings (optional: they are often a fifth of a small model's weights).

Each row of the embedding matrix is one token's vector: rows are quantized like a linear layer's
output channels, by round-to-nearest with the chosen observer's ranges (GPTQ has no inputs to
calibrate an embedding on). When the LM head shares the embedding matrix (tied weights, as in
SmolLM2), the head changes with it: the same tensor is stored once.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from core.quant.qtensor import QuantizedWeight, as_rows, quantize_with_ranges
from core.quant.weight_ranges import weight_ranges


def embedding_names(model: nn.Module) -> list[str]:
    """The module name of the input embeddings ([] when the model has none we know)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return [name for name, module in model.named_modules() if module is embeddings and embeddings is not None]


def quantize_embeddings(model: nn.Module, params: Any, ctx) -> dict[str, QuantizedWeight]:
    """Round the embeddings to ``params.scheme`` in place; {module name: QuantizedWeight}."""
    import torch

    quantized = {}
    for name in embedding_names(model):
        ctx.check_cancelled()
        ctx.stage(f"Quantizing the embeddings {name} ({params.scheme.label}, round to nearest)")
        weight = model.get_submodule(name).weight
        rows = as_rows(weight.detach().float())
        lo, hi = weight_ranges(rows, params.scheme, params.observer, params.percentile)
        q = quantize_with_ranges(rows, lo, hi, params.scheme)
        with torch.no_grad():
            weight.copy_(q.dequantize().reshape(weight.shape).to(weight.dtype))
        quantized[name] = q
    return quantized


def tied_head(model: nn.Module) -> bool:
    """The LM head and the input embeddings are one matrix."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return head is not None and embeddings is not None and head.weight is embeddings.weight


def include_head(model: nn.Module, settings: Any) -> bool:
    """Whether the LM head is quantized as a linear layer: not when it is tied to embeddings that
    are quantized themselves (the one matrix is rounded once, as embeddings)."""
    if not settings.include_head:
        return False
    return not (getattr(settings, "include_embeddings", False) and tied_head(model))
