"""How the Train job computes a loss: batches moved to the model's device, padded or packed rows
(``can_pack``), full precision or bf16 autocast (``autocast_dtype``), the loss of a training batch
(``batch_loss``) and the validation loss (``evaluate``). The time estimate times these same calls.
torch is imported on first use: the window builds the settings on the GUI thread.
"""

from __future__ import annotations

from typing import Any

from core.finetune.batches import Example, collate
from core.jobs import JobContext


def on_device(batch: dict, model: Any) -> dict:
    device = next(model.parameters()).device
    return {name: tensor.to(device) for name, tensor in batch.items()}


def can_pack(params: Any, model: Any) -> bool:
    """Packing (``params``: a TrainParams) needs one causal LM reading real tokens only: no classifier,
    no virtual tokens."""
    config = getattr(model, "active_peft_config", None)  # prefix, prompt and P-tuning add tokens
    return (
        params.pack
        and params.task in ("instruction", "causal_lm")
        and not getattr(config, "is_prompt_learning", False)
    )


def autocast_dtype(setting: str, model: Any) -> Any:
    """bf16 when asked for, or with "auto" where the hardware multiplies bf16 natively; else None."""
    import torch

    device = next(model.parameters()).device
    if setting == "bf16" or (setting == "auto" and bf16_native(device)):
        return torch.bfloat16
    return None


def bf16_native(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # private probes, present since torch 2.1; without them: no autocast
        probes = [
            getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ]
        return any(probe is not None and probe() for probe in probes)
    return False


def batch_loss(model: Any, batch: dict, autocast: Any = None) -> Any:
    """The mean loss per learnt token; a packed batch brings its own targets (see batches.pack)."""
    import contextlib

    import torch

    device = next(model.parameters()).device.type
    precision = torch.autocast(device, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with precision:
        if "targets" not in batch:
            return model(**batch).loss
        # no cache: with one, transformers takes the restarting positions for decoding, not packing
        inputs = {k: v for k, v in batch.items() if k not in ("targets", "real_tokens")}
        logits = model(**inputs, use_cache=False).logits
        return torch.nn.functional.cross_entropy(logits.float(), batch["targets"])


def evaluate(model: Any, examples: list[Example], batch_size: int, pad_id: int, ctx: JobContext) -> float:
    """Mean loss per answer token over ``examples``."""
    import torch

    model.eval()  # no dropout: validation loss is exact, and draws nothing from the RNG
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                ctx.check_cancelled()
                batch = on_device(collate(examples[start : start + batch_size], pad_id), model)
                tokens = int((batch["labels"][:, 1:] != -100).sum())
                total += model(**batch).loss.item() * tokens
                count += tokens
    finally:
        model.train()
    return total / max(1, count)
