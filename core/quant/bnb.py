"""bitsandbytes backends of the Quantize step: LLM.int8() ("int8") and 4-bit NF4 / FP4 ("nf4", "fp4").

Unlike the fake-quantized methods, these keep the weights packed in memory (4 or 8 bits plus
scales), so the model really is smaller on the CPU. The model is quantized by the standard
transformers route (save a float32 copy, reload it with a ``BitsAndBytesConfig``), so the result is
an ordinary transformers bitsandbytes model: ``config.quantization_config`` is set and
``save_pretrained`` writes a checkpoint that any transformers install reloads.

bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks each 4-bit layer on its first no-grad forward
into a bfloat16 layout: activations and block scales are then rounded to bfloat16 (the model no
longer computes in the float32 it was configured with), double quantization is undone in memory,
saving afterwards re-quantizes the block scales (the checkpoint no longer holds the original
quantization), and a layer whose input count is not a multiple of the block size (64) or whose row
count is not a multiple of 32 crashes. :func:`set_bf16_cpu_kernel` switches that off on the models
made or loaded here, so that what is measured, saved and reloaded is exactly the configured
quantization. The price is speed: the float32 path decodes every 4-bit weight on every forward
(SmolLM2-135M NF4 on 2 busy cores: about 0.9 s per generated token, against 0.3 s with the
bfloat16 kernel and 0.3 s unquantized; perplexity 32.16 against 32.18), so a caller that only
generates text may switch the kernel back on.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core import atomic, paths
from core.errors import CorruptModel, QuantTuneError, StorageError

BNB_KINDS = ("nf4", "fp4", "int8")
FORMAT = "bitsandbytes"
META_FILE = "quantization.json"

# Log lines bitsandbytes prints that the user can do nothing about: the optional ``kernels``
# package would be fetched from the Hugging Face hub (never, offline), and LLM.int8() always
# quantizes its float32 inputs through float16 (once per layer per forward: it would flood).
_QUIET_LOGS = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
    "bitsandbytes.autograd._functions": "MatMul8bitLt: inputs will be cast from",
}


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _bnb():
    """Import bitsandbytes, with its unhelpful log lines filtered out (installed once)."""
    for name, prefix in _QUIET_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    try:
        import bitsandbytes
    except ImportError as exc:
        raise QuantTuneError(
            f"The bitsandbytes package is missing or broken ({exc}).",
            "Install it with: pip install bitsandbytes",
        ) from exc
    return bitsandbytes


@dataclass
class BnbResult:
    """A model quantized by bitsandbytes, with what a report needs about it."""

    model: Any  # transformers PreTrainedModel with bitsandbytes layers, on the CPU
    kind: str
    layers: list[str]  # names of the quantized linear layers
    weights_bytes: int  # the model's real size in memory: parameters, buffers and quant states
    tokenizer: Any = None
    double_quant: bool = True
    skipped: list[str] = field(default_factory=list)

    def dequantized_weight(self, name: str) -> torch.Tensor:
        """The float32 weight that layer ``name`` computes with."""
        return dequantized_weight(self.model.get_submodule(name))


def quantize_bnb(
    model,
    tokenizer,
    kind: str,
    *,
    double_quant: bool = True,
    skip_modules=("lm_head",),
    ctx=None,
) -> BnbResult:
    """A new copy of the float32 causal LM ``model`` quantized by bitsandbytes on the CPU.

    ``model`` is left untouched. ``double_quant`` also quantizes the 4-bit block scales (saves about
    0.37 bit per weight; no effect on int8). Linear layers named in ``skip_modules`` stay float32.
    """
    from transformers import AutoModelForCausalLM

    if kind not in BNB_KINDS:
        raise QuantTuneError(
            f"'{kind}' is not a bitsandbytes quantization type.", f"Choose one of {', '.join(BNB_KINDS)}."
        )
    if getattr(model.config, "quantization_config", None) is not None:
        raise QuantTuneError(
            "This model is already quantized; bitsandbytes needs the float32 weights.",
            "Load the original model again and quantize that.",
        )
    _bnb()
    _quiet_progress_bars()
    config = _bnb_config(kind, double_quant, list(skip_modules))
    # Not in /tmp: that is often a RAM disk, where the float32 copy would double the memory used.
    scratch = paths.cache_dir() / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bnb-", dir=scratch) as tmp:
        _stage(ctx, "Writing a float32 copy of the model for bitsandbytes")
        model.save_pretrained(tmp)  # safetensors; works for any LoadedModel, GGUF-born included
        _stage(ctx, f"Quantizing the linear layers with bitsandbytes ({kind})")
        quantized = AutoModelForCausalLM.from_pretrained(
            tmp,
            quantization_config=config,
            device_map="cpu",
            dtype=torch.float32,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
        )
    _stage(ctx, "Measuring the quantized model")
    quantized.eval()
    # Name the source, not the scratch folder just deleted.
    quantized.name_or_path = quantized.config.name_or_path = model.config.name_or_path or ""
    set_bf16_cpu_kernel(quantized, False)
    layers = quantized_layers(quantized)
    return BnbResult(
        quantized, kind, layers, weights_bytes(quantized), tokenizer, double_quant, list(skip_modules)
    )


def _bnb_config(kind: str, double_quant: bool, skip: list[str]):
    from transformers import BitsAndBytesConfig

    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=skip,  # transformers reads the skip list from here for 4-bit too
    )


def _stage(ctx, message: str) -> None:
    if ctx is not None:
        ctx.check_cancelled()
        ctx.stage(message)


def _quiet_progress_bars() -> None:
    # Progress goes through ctx; transformers' own bars would only clutter the terminal.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def set_bf16_cpu_kernel(model, enabled: bool) -> int:
    """Let bitsandbytes repack 4-bit layers for its bfloat16 CPU kernel, or not (see the module
    docstring); returns how many layers will use it. Call it before the first forward: a layer
    already repacked stays so. Layers whose shape the repacking cannot take never use it.
    """
    available = enabled and _bnb().functional.has_avx512bf16()
    using = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            state = module.weight.quant_state
            rows, cols = state.shape
            fits = rows % 32 == 0 and cols % state.blocksize == 0
            module.support_avx512bf16_for_cpu = available and fits
            using += module.support_avx512bf16_for_cpu
    return using


def quantized_layers(model) -> list[str]:
    bnb = _bnb()
    kinds = (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]


def weights_bytes(model) -> int:
    """Bytes the model's tensors take in memory, each storage once (tied weights share one).

    transformers' get_memory_footprint() counts parameters and buffers only; the 4-bit block
    scales (quant_state) and the int8 row scales (SCB) live outside them and are added here.
    """
    seen: set[int] = set()
    total = 0
    for tensor in _all_tensors(model):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def _all_tensors(model):
    yield from model.parameters()
    yield from model.buffers()
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:  # a double-quantized state nests the state of its block scales
            yield from (t for t in (state.absmax, state.code, state.offset) if isinstance(t, torch.Tensor))
            state = getattr(state, "state2", None)
        scb = getattr(param, "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb


def dequantized_weight(module) -> torch.Tensor:
    """The float32 weight [out, in] a bitsandbytes Linear4bit or Linear8bitLt layer computes with.

    4-bit: the codes decoded with their (double-quantized) block scales, exactly what the layer's
    matmul uses. int8: codes × row scale / 127; LLM.int8() also quantizes the activations, so the
    layer's output is not exactly x @ this weight.
    """
    bnb = _bnb()
    weight = module.weight
    if isinstance(weight, bnb.nn.Params4bit):
        state = weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            raise QuantTuneError(
                "This 4-bit layer was repacked by bitsandbytes into its bfloat16 CPU layout, "
                "which no longer holds the original quantization.",
                "Call set_bf16_cpu_kernel(model, False) right after loading, before the first forward.",
            )
        return bnb.functional.dequantize_4bit(weight.data, state).to(torch.float32)
    if isinstance(weight, bnb.nn.Int8Params):
        scb = weight.SCB if weight.SCB is not None else module.state.SCB
        return bnb.functional.int8_vectorwise_dequant(weight.data, scb).to(torch.float32)
    raise TypeError(f"{type(module).__name__} is not a bitsandbytes quantized linear layer.")


# -- on disk ---------------------------------------------------------------------------------
def kind_of(model) -> str | None:
    """The bitsandbytes type of a transformers model ("nf4", "fp4" or "int8"), None if it has none."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    if not isinstance(config, dict):
        config = config.to_dict()
    if config.get("quant_method") != FORMAT:
        return None
    if config.get("load_in_8bit"):
        return "int8"
    if config.get("load_in_4bit"):
        return config.get("bnb_4bit_quant_type", "fp4")
    return None


def save_bnb(result_or_model, tokenizer, target: Path, meta: dict, files: dict | None = None) -> Path:
    """Write a standard transformers bitsandbytes checkpoint (safetensors), the tokenizer and
    ``quantization.json`` into ``target``, replacing it whole only once everything is written."""
    model = result_or_model.model if isinstance(result_or_model, BnbResult) else result_or_model
    kind = kind_of(model)
    if kind is None:
        raise QuantTuneError(
            "The model to save is not quantized by bitsandbytes.", "Quantize it with quantize_bnb first."
        )
    if _repacked(model):
        raise QuantTuneError(
            "This model ran with the bfloat16 CPU kernel, which re-rounded its 4-bit block scales: "
            "saving it would not store the quantization that was measured.",
            "Save it before switching that kernel on, or quantize the model again.",
        )
    target = Path(target)
    info = {**meta, "format": FORMAT, "kind": kind, "bitsandbytes_version": _bnb().__version__}
    try:
        with atomic.staged_dir(target) as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            atomic.write_json(tmp / META_FILE, info)
            for name, data in (files or {}).items():
                atomic.write_json(tmp / name, data)
    except StorageError:
        raise
    except OSError as exc:  # e.g. the parent folder cannot be created
        raise StorageError(
            f"Could not write {target}: {exc.strerror or exc}.",
            "Choose a folder you can write to; nothing was written.",
        ) from exc
    return target


def _repacked(model) -> bool:
    states = (getattr(p, "quant_state", None) for p in model.parameters())
    return any(getattr(state, "packing_format_for_cpu", False) for state in states)


def read_meta(folder: Path) -> dict[str, Any]:
    import json

    path = Path(folder) / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptModel(
            f"{folder} is not a bitsandbytes model saved by QuantTune ({META_FILE} is missing or damaged).",
            "Pick the folder the Quantize step wrote, or quantize the model again.",
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") not in BNB_KINDS:
        raise CorruptModel(
            f"{folder} holds a quantized model, but not one made with bitsandbytes.",
            "Open it with the loader for its own format, or quantize the model again with bitsandbytes.",
        )
    return meta


def load_bnb(folder: Path, device: str = "cpu", *, bf16_cpu_kernel: bool = False):
    """(model, tokenizer, meta) of a folder written by :func:`save_bnb`; the model is in eval mode.

    ``bf16_cpu_kernel``: faster 4-bit inference on the CPU, computed in bfloat16 (see the module
    docstring); leave it off to get exactly the saved model's float32 outputs, or to save it again.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.models.loading import translate_errors

    folder = Path(folder)
    meta = read_meta(folder)
    _bnb()
    _quiet_progress_bars()
    with translate_errors(folder):
        model, info = AutoModelForCausalLM.from_pretrained(
            str(folder),
            device_map=device,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            output_loading_info=True,
        )
    _check_loaded(model, info, meta, folder)
    with translate_errors(folder, what="tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model.eval()
    set_bf16_cpu_kernel(model, bf16_cpu_kernel)
    return model, tokenizer, meta


def _check_loaded(model, info: dict, meta: dict, folder: Path) -> None:
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise CorruptModel(
            f"{folder.name} lacks {len(missing)} weight(s) its config calls for ({', '.join(missing[:5])}).",
            "Quantize the model again; the saved weights do not match config.json.",
        )
    if kind_of(model) != meta["kind"]:
        raise CorruptModel(
            f"{folder.name} says it is bitsandbytes {meta['kind']}, but config.json says "
            f"{kind_of(model) or 'not quantized'}.",
            "Quantize the model again; the folder's files do not belong together.",
        )
