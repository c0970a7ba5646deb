"""Read a checkpoint's tensors one at a time, without loading the model.

safetensors files are memory-mapped: a tensor becomes anonymous memory only while it is being
looked at. GGUF tensors are dequantized one at a time. Either way peak memory stays near the
largest tensor, so models larger than RAM can be inspected.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.errors import CorruptModel, ModelNotFound, NotAModel


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class TensorSource(Protocol):
    def infos(self) -> list[TensorInfo]: ...

    def load(self, name: str):  # -> torch.Tensor
        ...


class SafetensorsSource:
    def __init__(self, files: list[Path]) -> None:
        self._files = files
        self._where: dict[str, Path] = {}
        self._infos: list[TensorInfo] = []
        for file in files:
            for name, meta in _read_header(file).items():
                if name == "__metadata__":
                    continue
                self._where[name] = file
                self._infos.append(TensorInfo(name, tuple(meta["shape"]), meta["dtype"]))

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def load(self, name: str):
        from safetensors import safe_open

        with safe_open(self._where[name], framework="pt") as fh:
            return fh.get_tensor(name)


def _read_header(file: Path) -> dict:
    try:
        with open(file, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if size <= 0 or size > file.stat().st_size - 8:
                raise ValueError("header length past the end of the file")
            return json.loads(fh.read(size))
    except (OSError, ValueError) as exc:
        raise CorruptModel(
            f"{file.name} is not a readable safetensors file ({exc}).",
            "The download may be incomplete: copy the file again.",
        ) from exc


class GGUFSource:
    def __init__(self, file: Path) -> None:
        from gguf import GGUFReader

        self._reader = GGUFReader(str(file))
        self._tensors = {t.name: t for t in self._reader.tensors}

    def infos(self) -> list[TensorInfo]:
        # GGUF lists dimensions innermost first; torch's order is the reverse.
        return [
            TensorInfo(t.name, tuple(int(d) for d in reversed(t.shape)), t.tensor_type.name)
            for t in self._tensors.values()
        ]

    def load(self, name: str):
        import torch
        from gguf.quants import dequantize

        t = self._tensors[name]
        values = dequantize(t.data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape))
        return torch.from_numpy(values.reshape(shape).copy())


def open_source(path: Path) -> TensorSource:
    """A folder of safetensors (sharded or not), one .safetensors file, or a .gguf file."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist.", "Pick the model folder or file again.")
    if path.suffix == ".gguf":
        return GGUFSource(path)
    if path.suffix == ".safetensors":
        return SafetensorsSource([path])
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise NotAModel(
            f"{path} holds no .safetensors weights to inspect.",
            "Load a model folder with safetensors files or a .gguf file.",
        )
    return SafetensorsSource(files)


def iter_tensors(source: TensorSource) -> Iterator[tuple[TensorInfo, object]]:
    for info in source.infos():
        yield info, source.load(info.name)
