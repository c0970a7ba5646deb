"""Bottleneck adapters (Houlsby et al. 2019) in the Pfeiffer et al. 2020 placement, written here
because peft 0.21 has no bottleneck adapter and the ``adapters`` library needs transformers 4.

Pfeiffer placement: one adapter per decoder block, after the feed-forward (MLP) sublayer, and none
after attention as in Houlsby's (half the parameters for about the same quality in their
comparison). As AdapterHub does it for pre-norm models such as Llama, the adapter reads the block's
output, the residual stream with the MLP's contribution added, and adds its own:
``h -> h + up(relu(down(h)))``. (Fed the MLP's output alone, it sees nearly nothing of the context
in a freshly initialised model and can only learn a constant shift.) ``down`` maps hidden ->
adapter_size; ``up`` maps back and starts at zero, so the adapted model computes exactly what the
base did until the first step. Everything else is frozen.

An adapter is attached as a child module ``adapter`` of each block plus a forward hook on that
block, so the base weights keep their names; the trained tensors are ``...layers.N.adapter.*``.
The Train step saves them like any freezing method's (``trainable.safetensors`` and
``method.json`` in ``final/``); ``core.finetune.runs.load_trained`` puts them back on a fresh copy of
the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.errors import QuantTuneError

CHILD = "adapter"


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = nn.ReLU()
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)  # zero update at the start: the model is unchanged
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


def _after_block(block: nn.Module, _args: Any, output: Any) -> Any:
    # A module-level function, not a closure: the hook survives copy.deepcopy and pickling.
    if isinstance(output, tuple):  # some families also return attention weights or a cache
        return (block.adapter(output[0]), *output[1:])
    return block.adapter(output)


def add_adapters(model: Any, size: int) -> Any:
    """Insert one zero-initialised bottleneck adapter of width ``size`` after each decoder block's MLP."""
    from core.quant.calibration import decoder_blocks

    if size < 1:
        raise QuantTuneError("A bottleneck adapter needs a width of 1 or more.", "Set the adapter size (16).")
    try:
        blocks = decoder_blocks(model)
    except QuantTuneError as exc:
        raise QuantTuneError(
            f"QuantTune cannot find the decoder blocks of this {type(model).__name__}, where bottleneck "
            "adapters go.",
            "Choose LoRA or IA3, which find their layers by name, or a Llama-style model.",
        ) from exc
    # the width of what a block returns: the hidden size (the embeddings may be narrower, as in OPT-350m)
    hidden = getattr(model.config, "hidden_size", None) or model.get_input_embeddings().embedding_dim
    for block in blocks:
        if hasattr(block, CHILD):
            raise QuantTuneError("This model has adapters already.", "Start from the loaded model.")
        reference = next(p for p in block.parameters() if p.is_floating_point())
        block.add_module(CHILD, BottleneckAdapter(hidden, size).to(reference.device, reference.dtype))
        block.register_forward_hook(_after_block)
    return model


def apply(model: Any, settings: Any) -> Any:
    """The Train step's method: freeze ``model`` whole, then add trainable adapters (in place)."""
    from core.finetune.methods import head_ids

    head = head_ids(model)  # a classifier's new head trains too
    for param in model.parameters():
        param.requires_grad_(id(param) in head)
    return add_adapters(model, settings.adapter_size)


def adapter_tensors(model: Any) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if f".{CHILD}." in name}
