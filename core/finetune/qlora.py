"""QLoRA (Dettmers et al. 2023): the base model's linear layers in 4-bit NF4 with double quantization
(bitsandbytes), frozen; LoRA adapters on top train in full precision.

The base is quantized the Quantize step's way (:func:`core.quant.bnb.quantize_bnb`: save a copy,
reload it with a ``BitsAndBytesConfig``), which also switches off bitsandbytes' bfloat16 CPU
repacking: left on, the first evaluation (a no-grad forward) would repack every layer and the rest
of the run would train against re-rounded weights, so a resumed run would no longer match.
``quantize_bnb`` leaves its input untouched, so the Train step hands over the loaded model itself
rather than a float copy (``Method.builds_own_model``): a float copy is never made, and training
holds the 4-bit base only.

peft's ``prepare_model_for_kbit_training`` runs with gradient checkpointing off. With the float32
load used here it casts nothing (it only upcasts float16/bfloat16 weights) and freezes what is
frozen anyway. Its gradient checkpointing is what saves most memory on small models, where
activations outweigh the weights (default model, batch 4 × 128: QLoRA's peak over the loaded model
2.7 GB without, 1.0 GB with; fp32 LoRA 2.9 GB and 1.7 GB; benchmarks/train_memory.py), but it
costs one more forward pass per step and helps every method alike: a Train step option, not a
QLoRA side effect.

Compute dtype: float32 on the CPU (bitsandbytes decodes each 4-bit weight to float32 per layer and
per pass, then drops it), bfloat16 on a CUDA GPU (its fused 4-bit kernels).
"""

from __future__ import annotations

import copy
from typing import Any

from core.errors import QuantTuneError

QUANT_TYPE = "nf4"


def apply(model: Any, settings: Any) -> Any:
    """A new peft model: ``model``'s linear layers in NF4 (the LM head stays float) with LoRA on
    top, set by ``settings`` (rank, alpha, dropout, target modules); ``model`` itself is untouched."""
    from core.finetune import methods
    from core.quant.bnb import quantize_bnb

    if methods.is_sequence_classifier(model):
        raise QuantTuneError(
            "QLoRA quantizes a language model; this one has a classification head instead.",
            "Choose LoRA for text classification: the model is small enough to train in float.",
        )
    device = next(model.parameters()).device
    quantized = quantize_bnb(model, None, QUANT_TYPE, double_quant=True).model
    if device.type == "cuda":
        _to_gpu(quantized, device)
    quantized = _prepare(quantized)
    return methods.METHODS["lora"].apply(quantized, settings)


def _prepare(model: Any) -> Any:
    import warnings

    from peft import prepare_model_for_kbit_training

    with warnings.catch_warnings():
        # peft 0.21 still calls a transformers 5 name it deprecated; nothing for users to do
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _to_gpu(model: Any, device: Any) -> None:
    """Move the 4-bit model to the GPU and let its 4-bit layers compute in bfloat16 (float16 on GPUs
    without bfloat16): there bitsandbytes has fused kernels, and the float32 path would waste them."""
    import torch

    from core.quant.bnb import quantized_layers

    model.to(device)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    for name in quantized_layers(model):
        model.get_submodule(name).compute_dtype = dtype


def is_quantized(model: Any) -> bool:
    """Whether ``model`` (a peft model or a plain one) stands on a bitsandbytes 4-bit base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False))


def merged_float_model(peft_model: Any) -> Any:
    """A plain float32 transformers model computing what the trained QLoRA model computes: each
    4-bit weight decoded exactly as the forward pass decodes it, plus its LoRA update.

    peft's own ``merge_and_unload`` on a 4-bit base would re-quantize every merged weight to NF4,
    losing the LoRA update below the 4-bit grid's step; a merged model should load with
    transformers alone and answer as the trained one did. ``peft_model`` is left as it was.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    work = copy.deepcopy(peft_model)
    adapter = work.active_adapter
    with torch.no_grad():
        deltas = {name: layer.get_delta_weight(adapter).float()
                  for name, layer in work.get_base_model().named_modules()
                  if isinstance(layer, LoraLayer) and adapter in layer.lora_A}  # fmt: skip
        base = work.unload()  # the 4-bit base without the LoRA layers, nothing merged
        base = base.dequantize(dtype=torch.float32)  # transformers: Linear4bit -> nn.Linear, config cleared
        for name, delta in deltas.items():
            base.get_submodule(name).weight += delta.to(base.get_submodule(name).weight.device)
    return base
