"""The "load a model" job: ``run(LoadParams, ctx) -> LoadedModel``.

Every kind of source ends as a transformers causal LM in float32 on the chosen device, in eval
mode, with its tokenizer and card. Float32 because the jobs that follow (quantization maths,
fine-tuning on CPU) want full precision; the models this app targets are small.

Loading itself blocks inside transformers and cannot be interrupted; cancel is checked right
after each stage, so a cancelled load ends as soon as the current stage finishes.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import (
    CorruptModel,
    ModelError,
    ModelNotFound,
    NotAModel,
    QuantTuneError,
    UnsafeModel,
    UnsupportedModel,
)
from core.jobs import JobContext
from core.models import default_model, safety, sources
from core.models.card import ModelCard, card_from_model
from core.models.sources import ModelRef

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class LoadParams:
    model: ModelRef
    device: str = "auto"
    allow_pickle: bool = False
    trust_remote_code: bool = False

    def validate(self) -> list[str]:
        problems = []
        if not isinstance(self.model, ModelRef) or self.model.kind not in sources.KINDS:
            problems.append(f"The model choice is not valid ({self.model!r}).")
        elif self.model.kind in ("folder", "gguf") and not Path(self.model.location).exists():
            problems.append(f"The model path {self.model.location} does not exist.")
        elif self.model.kind == "hf_cache" and not self.model.location:
            problems.append("No repo id was given for the Hugging Face cache model.")
        if not _DEVICE.match(str(self.device).strip().lower()):
            problems.append(f"The device '{self.device}' is not one of auto, cpu, cuda, cuda:N, mps.")
        return problems


@dataclass
class LoadedModel:
    ref: ModelRef
    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    card: ModelCard
    device: str
    folder: Path  # for a GGUF: the folder holding the file


def run(params: LoadParams, ctx: JobContext) -> LoadedModel:
    from core.device import resolve_device

    _quiet_library_progress_bars()
    ctx.stage("Choosing the device")
    device = resolve_device(params.device)
    ref = params.model
    if ref.kind == "gguf":
        model, tokenizer, folder = _load_gguf(Path(ref.location), ctx)
    else:
        folder = _folder_for(ref, ctx)
        model, tokenizer = _load_folder(folder, params, ctx)
    ctx.stage(f"Moving the model to {device}")
    model.to(device)
    model.eval()
    ctx.check_cancelled()
    card = card_from_model(model, tokenizer, ref, folder, device)
    return LoadedModel(ref, model, tokenizer, card, device, folder)


def weights_path(ref: ModelRef, ctx: JobContext) -> Path:
    """Where ``ref``'s weights are on disk, without loading them (for tensor-by-tensor readers).

    The .gguf file for a GGUF; otherwise the model folder (the default is converted first).
    """
    if ref.kind == "gguf":
        return _existing_gguf(Path(ref.location))
    return _folder_for(ref, ctx)


def _existing_gguf(path: Path) -> Path:
    if not path.is_file():
        raise ModelNotFound(
            f"The GGUF file {path} does not exist.", "Check the path, or pick the model again."
        )
    return path


def _quiet_library_progress_bars() -> None:
    # Progress goes through ctx; the libraries' own tqdm bars would only clutter the terminal
    # behind the window (and a windowed frozen app has no terminal at all).
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF reader's bar ignores the switches below
    disable_progress_bars()
    hf_logging.disable_progress_bar()


def _folder_for(ref: ModelRef, ctx: JobContext) -> Path:
    if ref.kind == "default":
        return default_model.ensure_converted(ctx)
    if ref.kind == "hf_cache":
        snapshot = sources.find_cached_snapshot(ref.location)
        if snapshot is None:
            raise ModelNotFound(
                f"The model {ref.location} is no longer in the local Hugging Face cache.",
                "Download it again on a computer with internet access, or pick another model.",
            )
        return snapshot
    return Path(ref.location)


def _load_folder(folder: Path, params: LoadParams, ctx: JobContext):
    import torch
    from transformers import AutoModelForCausalLM

    if (folder / "quantization.json").is_file() and not (folder / "model.safetensors").exists():
        return _load_quanttune_folder(folder, ctx)
    ctx.stage(f"Checking {folder.name}")
    info = safety.inspect_folder(folder, params.allow_pickle, params.trust_remote_code)
    ctx.check_cancelled()
    ctx.stage(f"Loading the weights of {folder.name}")
    with translate_errors(folder):
        model, loading_info = AutoModelForCausalLM.from_pretrained(
            str(folder),
            dtype=torch.float32,
            local_files_only=True,
            trust_remote_code=params.trust_remote_code,
            use_safetensors=info.weights_format == "safetensors",
            weights_only=True,  # even with pickle allowed, unpickle tensors only, never code
            output_loading_info=True,
        )
    _refuse_missing_weights(loading_info, folder)
    ctx.check_cancelled()
    tokenizer = _load_tokenizer(folder, ctx, trust_remote_code=params.trust_remote_code)
    return model, tokenizer


def _load_quanttune_folder(folder: Path, ctx: JobContext):
    """A model QuantTune quantized and saved (integer codes, scales and zero points in safetensors;
    see core.quant.artifact): rebuilt from its config, never running code from the folder."""
    from core.quant.artifact import load_quantized

    ctx.stage(f"Loading the quantized model in {folder.name}")
    model, tokenizer, _quantized, _meta = load_quantized(folder)
    if tokenizer is None:
        raise CorruptModel(f"{folder.name} has no tokenizer files.", "Quantize the model again.")
    return model, tokenizer


def _refuse_missing_weights(loading_info: dict, folder: Path) -> None:
    """transformers fills weights missing from the checkpoint with random values and only logs
    it; a model that is partly random would quietly give nonsense, so it is refused."""
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (", …" if len(missing) > 5 else "")
        raise CorruptModel(
            f"{folder.name} lacks {len(missing)} weight(s) its config calls for ({shown}).",
            "The weights do not match config.json: copy or download the complete model again.",
        )


def _load_tokenizer(folder: Path, ctx: JobContext, **kwargs):
    from transformers import AutoTokenizer

    ctx.stage("Loading the tokenizer")
    with translate_errors(folder, what="tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **kwargs)
    ctx.check_cancelled()
    return tokenizer


def _load_gguf(path: Path, ctx: JobContext):
    import torch
    from transformers import AutoModelForCausalLM

    _existing_gguf(path)
    # transformers reads the metadata first, so an unsupported architecture fails in
    # milliseconds; the long part (dequantizing every tensor) only starts after that.
    ctx.stage(f"Reading and dequantizing {path.name}")
    with translate_errors(path):
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
    default_model.clear_gguf_mark(model)  # plain float32 now; lets later jobs save it
    ctx.check_cancelled()
    tokenizer = _load_tokenizer(path.parent, ctx, gguf_file=path.name)
    return model, tokenizer, path.parent


def _gguf_error(exc: Exception, path: Path) -> ModelError | None:
    """Name the GGUF-specific failures: an architecture transformers lacks, a damaged file."""
    text = str(exc)
    found = re.search(r"architecture (\S+) is not supported", text)
    if found:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        return UnsupportedModel(
            f"{path.name} is a GGUF of architecture '{found.group(1)}', which transformers cannot read. "
            f"Supported GGUF architectures: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}.",
            "Use the original (safetensors) model folder instead, or a GGUF of a supported architecture.",
        )
    if isinstance(exc, struct.error) or "magic" in text or "appears to be version" in text:
        return CorruptModel(
            f"{path.name} is not a valid GGUF file ({_short(text)}).", "Copy or download the file again."
        )
    return None


@contextmanager
def translate_errors(path: Path, what: str = "model"):
    """Turn the loader's many exception types into one ModelError that names ``path``."""
    try:
        yield
    except QuantTuneError:
        raise
    except Exception as exc:  # whatever the loader raises becomes a message naming the model
        raise _translate(exc, path, what) from exc


def _translate(exc: Exception, path: Path, what: str) -> ModelError:
    if path.suffix.lower() == ".gguf" and (gguf_error := _gguf_error(exc, path)) is not None:
        return gguf_error
    text = f"{type(exc).__name__}: {exc}"
    name = path.name
    again = "Copy or download the model again."
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return ModelError(
            f"There is not enough memory to load the {what} of {name}.",
            "Close other programs, choose a smaller model, or load it on another device.",
        )
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return UnsafeModel(
            f"The {what} of {name} contains objects other than tensors, which were not unpickled.",
            "Only load pickle files from sources you trust; prefer safetensors.",
        )
    if isinstance(exc, (KeyError, ImportError)) or "does not recognize" in text or "not supported" in text:
        return UnsupportedModel(
            f"This version of transformers cannot load the {what} of {name} ({_short(text)}).",
            "Use a model of a supported architecture, or update transformers.",
        )
    if what == "tokenizer":
        return NotAModel(
            f"No usable tokenizer was found in {name} ({_short(text)}).",
            "Copy the tokenizer files (tokenizer.json, tokenizer_config.json) of the original model "
            "into the folder.",
        )
    if isinstance(exc, (OSError, EOFError)) or "mismatch" in text or "safetensor" in text.lower():
        return CorruptModel(f"The {what} of {name} could not be read ({_short(text)}).", again)
    return ModelError(f"Loading the {what} of {name} failed ({_short(text)}).", again)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
