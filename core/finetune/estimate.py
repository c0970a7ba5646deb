"""Before Start: how much memory a training run will need, whether it fits, and what to change.

Peak memory = weights + gradients of the trainable parameters + optimizer state (AdamW: two FP32
moments per trainable parameter) + activations kept for the backward pass. Activations per decoder
layer follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", eq. 1): s·b·h·(34 + 5·a·s/h) bytes at 16 bits, scaled to the compute precision and to the
MLP's real width (the formula assumes 4·h, ungated); with gradient checkpointing only each layer's input is
kept, plus one layer's full activations while it is recomputed. LoRA adds a dropout copy of each
adapted layer's input. benchmarks/train_memory.py compares it with measured peaks on the default model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPTIMIZER_BYTES = 8  # AdamW: exp_avg and exp_avg_sq in FP32 per trainable parameter
HEADROOM = 0.85  # use at most this share of the free memory: the OS and the app need the rest


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    trainable: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    weight_bytes: int = 4  # per parameter as loaded (FP32: 4; a 4-bit base: about 0.5)
    adapter_inputs: int = 0  # per layer, the summed input widths of LoRA-adapted linears

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        from core.finetune.methods import trainable

        counts, c = trainable(model), model.config
        width = getattr(c, "intermediate_size", 4 * c.hidden_size)
        adapted = sum(m.in_features for n, m in model.named_modules() if n.endswith("lora_A.default"))
        return cls(counts.total, counts.trainable, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                   width, c.vocab_size, adapter_inputs=adapted // max(1, c.num_hidden_layers))  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    available: int | None  # free memory of the device (None: unknown)
    advice: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.peak <= self.available * HEADROOM


def activation_bytes(shape: ModelShape, batch: int, seq_len: int, compute_bytes: int = 4,
                     checkpointing: bool = False) -> int:  # fmt: skip
    """Bytes of activations kept for the backward pass (all layers, plus the logits)."""
    s, b, h, a = seq_len, batch, shape.hidden, shape.heads
    mlp_scale = (shape.intermediate / (4 * h)) if h else 1.0
    # 34 = 18 (attention, norms) + 16 (MLP at width 4h); a gated MLP (SwiGLU) keeps gate, up and
    # their product: half as much again
    per_layer_16 = s * b * h * (18 + 16 * mlp_scale * 1.5 + 5 * a * s / h)
    per_layer = per_layer_16 * compute_bytes / 2
    logits = s * b * shape.vocab * 4 * 2  # FP32 logits and their softmax, for the loss
    # LoRA's dropout keeps its own copy of each adapted layer's input, and the mask
    per_layer += s * b * shape.adapter_inputs * (compute_bytes + 1)
    if checkpointing:
        return int(shape.layers * s * b * h * compute_bytes + per_layer + logits)
    return int(shape.layers * per_layer + logits)


def estimate(shape: ModelShape, batch: int, seq_len: int, *, compute_bytes: int = 4,
             checkpointing: bool = False, available: int | None = None) -> Estimate:  # fmt: skip
    result = _parts(shape, batch, seq_len, compute_bytes, checkpointing, available)
    if result.fits is not False:
        return result
    advice = _advice(shape, batch, seq_len, compute_bytes, checkpointing, available)
    return Estimate(result.weights, result.gradients, result.optimizer, result.activations, available, advice)


def _parts(shape: ModelShape, batch: int, seq_len: int, compute_bytes: int, checkpointing: bool,
           available: int | None) -> Estimate:  # fmt: skip
    return Estimate(
        weights=shape.parameters * shape.weight_bytes,
        gradients=shape.trainable * 4,
        optimizer=shape.trainable * OPTIMIZER_BYTES,
        activations=activation_bytes(shape, batch, seq_len, compute_bytes, checkpointing),
        available=available,
    )


def _advice(shape: ModelShape, batch: int, seq_len: int, compute_bytes: int, checkpointing: bool,
            available: int) -> list[str]:  # fmt: skip
    """Changes that would fit, each tried on its own, smallest peak first."""
    lora = ModelShape(**{**shape.__dict__, "trainable": shape.parameters // 100})
    options = [  # (text, shape, batch, length, checkpointing), where the change applies
        (f"batch size {max(1, batch // 4)}", shape, max(1, batch // 4), seq_len, checkpointing, batch > 1),
        ("gradient checkpointing", shape, batch, seq_len, True, not checkpointing),
        (f"maximum length {seq_len // 2}", shape, batch, seq_len // 2, checkpointing, seq_len > 128),
        (
            "LoRA instead of every weight",
            lora,
            batch,
            seq_len,
            checkpointing,
            shape.trainable > lora.trainable * 10,
        ),
    ]
    good = []
    for text, changed, b, s, ckpt, applies in options:
        e = _parts(changed, b, s, compute_bytes, ckpt, available)
        if applies and e.fits:
            good.append((e.peak, text))
    return [f"{text} (needs about {peak / 1e9:.1f} GB)" for peak, text in sorted(good)] or [
        "none of batch size, checkpointing, length or LoRA alone is enough: combine them, or use QLoRA"
    ]


def available_memory(device: str = "cpu") -> int | None:
    """Free memory of ``device`` in bytes (RAM for the CPU)."""
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    try:
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    except (RuntimeError, ValueError, AssertionError):
        return None
