"""Checks a model folder before transformers reads it: is it a model, is it whole, is it safe?

Loading may run code from the folder (``auto_map`` custom code) or unpickle a ``.bin`` file,
and both can execute anything; QuantTune refuses them unless the user opts in. Truncated or
incomplete downloads are caught here, with the file named, rather than surfacing as a cryptic
error from deep inside the loader. Only the standard library is used, so this is cheap.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import CorruptModel, ModelNotFound, NotAModel, UnsafeModel
from core.models.sources import PICKLE_SUFFIXES

# safetensors refuses headers above 100 MB; a larger length means garbage, not a big model.
MAX_HEADER_BYTES = 100_000_000
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass
class FolderInfo:
    weights_format: str  # "safetensors" or "pickle"
    weight_files: list[Path]
    config: dict = field(default_factory=dict)


def inspect_folder(folder: Path, allow_pickle: bool = False, trust_remote_code: bool = False) -> FolderInfo:
    """Raise a specific :class:`ModelError` if ``folder`` cannot or should not be loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFound(
            f"The model folder {folder} does not exist.", "Check the path, or pick the model again."
        )
    config = _read_config(folder)
    _check_custom_code(folder, config, trust_remote_code)
    _check_index(folder, "model.safetensors.index.json")
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        for path in safetensors:
            read_safetensors_header(path)
        return FolderInfo("safetensors", safetensors, config)
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    if not pickles:
        raise NotAModel(
            f"{folder} holds no weights: no .safetensors or .bin file was found.",
            "Choose the folder the model was saved to, or open its .gguf file directly.",
        )
    _check_index(folder, "pytorch_model.bin.index.json")
    if not allow_pickle:
        names = ", ".join(p.name for p in pickles)
        raise UnsafeModel(
            f"{folder.name} stores its weights only as pickle files ({names}); pickle files can run "
            "code when read, so they are refused by default.",
            "Convert the model to safetensors (load it in a trusted environment and save it with "
            "save_pretrained), or allow pickle weights for this model if you trust where it came from "
            "(the window asks; the command line has --allow-pickle).",
            needs="allow_pickle",
        )
    return FolderInfo("pickle", pickles, config)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise NotAModel(
            f"{folder} is not a model folder: no config.json.",
            "Choose the folder that holds config.json and the weights (.safetensors), "
            "or open a .gguf file directly.",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptModel(f"{path} cannot be read: {exc}.", "Copy or download the model again.") from exc
    if not isinstance(config, dict):
        raise CorruptModel(f"{path} does not hold a JSON object.", "Copy or download the model again.")
    return config


def _check_custom_code(folder: Path, config: dict, trust_remote_code: bool) -> None:
    """``auto_map`` (in config or tokenizer config) makes transformers import .py files."""
    modules = _custom_modules(config) | _custom_modules(_json_or_empty(folder / "tokenizer_config.json"))
    if not modules:
        return
    files = sorted(f"{name}.py" for name in modules)
    if not trust_remote_code:
        raise UnsafeModel(
            f"{folder.name} needs its own Python code to load ({', '.join(files)}), and that "
            "code would run with your permissions.",
            "Read those files first; if you trust them, allow this model's code and load again "
            "(the window asks; the command line has --trust-remote-code).",
            needs="trust_remote_code",
        )
    missing = [name for name in files if "--" not in name and not (folder / name).is_file()]
    if missing:
        raise CorruptModel(
            f"{folder.name} refers to custom code that is not in the folder: {', '.join(missing)}.",
            "Copy the complete model folder, including its .py files.",
        )


def _custom_modules(config: dict) -> set[str]:
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return set()
    refs: list[str] = []
    for value in auto_map.values():  # a tokenizer entry is a [slow, fast] pair
        refs.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
    # "modeling_foo.FooModel" -> "modeling_foo"; "other/repo--modeling_foo.Foo" keeps its repo.
    return {ref.rsplit(".", 1)[0] for ref in refs if "." in ref}


def _json_or_empty(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _check_index(folder: Path, index_name: str) -> None:
    """A sharded checkpoint is whole only if every shard its index names is present."""
    index = folder / index_name
    if not index.is_file():
        return
    weight_map = _json_or_empty(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptModel(f"{index} has no weight map.", "Copy or download the model again.")
    missing = sorted({str(s) for s in weight_map.values() if not (folder / str(s)).is_file()})
    if missing:
        raise CorruptModel(
            f"{folder.name} is incomplete: {len(missing)} weight shard(s) named in {index_name} "
            f"are missing ({', '.join(missing[:5])}{', …' if len(missing) > 5 else ''}).",
            "The copy or download was interrupted: copy or download the model again.",
        )


def read_safetensors_header(path: Path) -> dict:
    """Parse the header of a .safetensors file and check the file holds all the data it declares.

    Format: 8-byte little-endian header length, a JSON header mapping each tensor name to
    dtype, shape and [begin, end) byte offsets into the data that follows.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _corrupt(path, "it is shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, MAX_HEADER_BYTES):
            raise _corrupt(path, f"its header claims {header_len} bytes but the file has {size}")
        try:
            header = json.loads(fh.read(header_len))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _corrupt(path, f"its header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    _check_offsets(path, header, data_bytes=size - 8 - header_len)
    return header


def _check_offsets(path: Path, header: dict, data_bytes: int) -> None:
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            numel = 1
            for dim in entry["shape"]:
                numel *= int(dim)
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"the entry for tensor {name!r} is malformed") from exc
        if end > data_bytes or begin > end:
            raise _corrupt(
                path, f"tensor {name!r} ends at byte {end} but only {data_bytes} data bytes are present"
            )
        width = _DTYPE_BYTES.get(str(entry.get("dtype")))
        if width is not None and numel * width != end - begin:
            raise _corrupt(path, f"tensor {name!r} has {end - begin} bytes for {numel} values")


def _corrupt(path: Path, why: str) -> CorruptModel:
    return CorruptModel(
        f"The weights file {path.name} in {path.parent} is damaged: {why} (truncated or incomplete copy?).",
        "Copy or download the model again.",
    )
