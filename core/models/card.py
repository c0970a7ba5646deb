"""A model's vital statistics, as the Model step and the CLI show them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.models.sources import ModelRef

# Grouped quantization keeps one fp16 scale per group of weights; 64 is the group size the
# project judges methods at (see ARCHITECTURE.md), so the table assumes it.
GROUP_SIZE = 64
SCALE_BYTES = 2


@dataclass
class ModelCard:
    name: str
    architecture: str
    model_type: str
    parameters: int
    layers: int | None
    hidden_size: int | None
    vocab_size: int | None
    dtype: str
    size_on_disk_bytes: int | None
    memory_bytes: dict[str, int]
    chat_template: str | None
    source: dict = field(default_factory=dict)
    device: str = "cpu"
    context_length: int | None = None
    tied_embeddings: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def memory_by_precision(n_params: int) -> dict[str, int]:
    """Bytes the weights take at each precision; activations and KV cache not included.

    FP32/FP16/BF16 are exact (4/2/2 bytes per parameter). INT8 and INT4 count 1 and 0.5 bytes
    per parameter plus one fp16 scale per group of 64 parameters (symmetric grouped
    quantization). An asymmetric scheme adds a zero-point per group (about 1-2 % more), and
    methods that keep embeddings or norms in higher precision need more; the figures are
    lower bounds for a fully quantized model.
    """
    groups = math.ceil(n_params / GROUP_SIZE)
    scales = groups * SCALE_BYTES
    return {
        "FP32": n_params * 4,
        "FP16": n_params * 2,
        "BF16": n_params * 2,
        "INT8": n_params + scales,
        "INT4": math.ceil(n_params / 2) + scales,
    }


def card_from_model(model, tokenizer, ref: ModelRef, folder: Path, device: str) -> ModelCard:
    """Read the card off a loaded transformers model (tied weights are counted once)."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_params = sum(p.numel() for p in model.parameters())  # parameters() yields shared tensors once
    first = next(model.parameters(), None)
    return ModelCard(
        name=ref.name,
        architecture=type(model).__name__,
        model_type=str(getattr(config, "model_type", "") or ""),
        parameters=int(n_params),
        layers=_first_int(text_config, "num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=_first_int(text_config, "hidden_size", "n_embd", "d_model"),
        vocab_size=_first_int(text_config, "vocab_size"),
        dtype=str(first.dtype).removeprefix("torch.") if first is not None else "unknown",
        size_on_disk_bytes=_size_on_disk(ref, Path(folder)),
        memory_bytes=memory_by_precision(int(n_params)),
        chat_template=_chat_template(tokenizer),
        source={**ref.to_dict(), "folder": str(folder)},
        device=str(device),
        context_length=_first_int(text_config, "max_position_embeddings", "n_positions", "max_seq_len"),
        tied_embeddings=_embeddings_tied(model),
    )


def _first_int(config, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _chat_template(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: "default" is the one chat uses
        template = template.get("default") or next(iter(template.values()), None)
    return template if isinstance(template, str) else None


def _embeddings_tied(model) -> bool:
    """True when the output layer shares the input embedding's storage (checked, not trusted from config)."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None:
        return False
    return inputs.weight.data_ptr() == outputs.weight.data_ptr()


def _size_on_disk(ref: ModelRef, folder: Path) -> int | None:
    """The GGUF file for a GGUF ref, else every file in the model folder (symlinks followed)."""
    try:
        if ref.kind == "gguf":
            return Path(ref.location).stat().st_size
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return None
