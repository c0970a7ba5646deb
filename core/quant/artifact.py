"""A quantized model on disk, in a form that reloads exactly.

The folder holds:
- ``quantization.json``: the format, the base model, and for every quantized layer its scheme;
- ``quantized.safetensors``: for each quantized layer its integer codes, scales and zero points
  (``<layer>.codes/.scale/.zero``), and every other tensor of the model (norms, embeddings…)
  as it was;
- the base model's ``config.json`` and tokenizer files, so the model is rebuilt from the folder
  alone (never running code from it).
Reloading dequantizes the codes with the stored scales, so the reloaded model's outputs equal the
quantized model's bit for bit. The folder is written to a temporary folder and moved into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core import atomic
from core.errors import CorruptModel
from core.quant.affine import Scheme
from core.quant.qtensor import QuantizedWeight

FORMAT = "quanttune-int"
FORMAT_VERSION = 1
META_FILE = "quantization.json"
WEIGHTS_FILE = "quantized.safetensors"


def save_quantized(
    model,
    tokenizer,
    quantized: dict[str, QuantizedWeight],
    target: Path,
    meta: dict[str, Any],
    files: dict[str, Any] | None = None,
    store_dtype: Any = None,
) -> Path:
    """Write ``model`` with the layers in ``quantized`` stored as integers into ``target``.

    ``files``: more JSON files (name -> data) written into the folder before it moves into place.
    ``store_dtype``: the other tensors' dtype at rest (FP16/BF16 casts: their values fit exactly).
    """
    from safetensors.torch import save_file

    tensors = _other_tensors(model, quantized)
    if store_dtype is not None:
        tensors = {k: v.to(store_dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    layers = {}
    for name, q in quantized.items():
        tensors.update(q.state(name))
        s = q.scheme
        layers[name] = {"bits": s.bits, "symmetric": s.symmetric, "granularity": s.granularity,
                        "group_size": s.group_size, "shape": list(q.codes.shape)}  # fmt: skip
    with atomic.staged_dir(Path(target)) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE))
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic.write_json(
            tmp / META_FILE, {"format": FORMAT, "version": FORMAT_VERSION, **meta, "layers": layers}
        )
        for name, data in (files or {}).items():
            atomic.write_json(tmp / name, data)
    return Path(target)


def _other_tensors(model, quantized: dict[str, QuantizedWeight]) -> dict:
    """Every tensor of the state dict except quantized weights; tied copies are stored once."""
    skip = {f"{name}.weight" for name in quantized}
    # An LM head tied to quantized embeddings is rebuilt from them on load (tie_weights): not stored.
    # (A quantized head tied to plain embeddings is the other way round: the embeddings keep its values.)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    seen = (
        {embeddings.weight.untyped_storage().data_ptr()}
        if embeddings in quantized_modules(model, quantized)
        else set()
    )
    out = {}
    for key, tensor in model.state_dict().items():
        if key in skip:
            continue
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            continue  # a tied weight (e.g. lm_head = embeddings): rebuilt by tie_weights()
        seen.add(pointer)
        out[key] = tensor.detach().cpu()
    return out


def quantized_modules(model, quantized: dict) -> list:
    return [model.get_submodule(name) for name in quantized]


def read_meta(folder: Path) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptModel(f"{path} is missing or damaged ({exc}).", "Quantize the model again.") from exc
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise CorruptModel(f"{folder} is not a QuantTune quantized model this version can read.",
                           "Update QuantTune or quantize the model again.")  # fmt: skip
    return meta


def load_quantized(folder: Path, device: str = "cpu"):
    """Rebuild the model from ``folder``: (model, tokenizer, {layer: QuantizedWeight}, meta)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    meta = read_meta(folder)
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False, dtype=torch.float32)
    tensors = load_file(str(folder / WEIGHTS_FILE))
    quantized = {}
    for name, spec in meta["layers"].items():
        scheme = Scheme(spec["bits"], spec["symmetric"], spec["granularity"], spec["group_size"])
        quantized[name] = QuantizedWeight.from_state(tensors, name, scheme)
        for part in ("codes", "scale", "zero"):
            del tensors[f"{name}.{part}"]
    for name, q in quantized.items():
        tensors[f"{name}.weight"] = q.dequantize().reshape(model.get_submodule(name).weight.shape)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}  # FP16 casts at rest
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise CorruptModel(
            f"{folder} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]}).",
            "Quantize the model again.",
        )
    tokenizer = (
        AutoTokenizer.from_pretrained(folder, local_files_only=True) if _has_tokenizer(folder) else None
    )
    if meta.get("activations"):  # W8A8: the inputs' static ranges, as when it was quantized
        from core.quant.activations import attach_activation_quant, ranges_from_json

        attach_activation_quant(model, *ranges_from_json(meta["activations"]))
        model.quanttune_activations = meta["activations"]
    return model.to(device).eval(), tokenizer, quantized, meta


def _is_tied(model, key: str) -> bool:
    module_name = key.rsplit(".", 1)[0]
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return key in tied or (module_name == "lm_head" and model.config.tie_word_embeddings)


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
