"""Where a model comes from: the bundled default, a folder, a GGUF file or the local HF cache.

Cheap to import (no torch, no transformers): the model picker calls these on the GUI thread.
Nothing here touches the network; a repo id is only looked up in the local Hugging Face cache.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import ModelError, ModelNotFound, NotAModel

KINDS = ("default", "folder", "gguf", "hf_cache")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
# A Hub repo id: "name" or "owner/name", letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Architectures whose class name says "generates text left to right".
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class ModelRef:
    """A model the user picked; saved in projects, so it must round-trip through JSON.

    location: "" for the default, an absolute path for "folder"/"gguf", a repo id for "hf_cache".
    """

    kind: str
    location: str
    name: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelRef:
        kind = data.get("kind")
        if kind not in KINDS:
            raise ModelError(
                f"The saved model reference has an unknown kind {kind!r}.",
                "Pick the model again in the Model step.",
            )
        return cls(kind, str(data.get("location", "")), str(data.get("name", "")))


DEFAULT_REF = ModelRef("default", "", "SmolLM2-135M-Instruct (bundled)")


@dataclass(frozen=True)
class AvailableModel:
    """A model the picker can offer without any download."""

    ref: ModelRef
    size_bytes: int | None
    detail: str

    def to_dict(self) -> dict:
        return {"ref": self.ref.to_dict(), "size_bytes": self.size_bytes, "detail": self.detail}


def resolve(spec: str, hf_cache: Path | None = None) -> ModelRef:
    """Turn what the user typed (CLI argument, path field) into a :class:`ModelRef`."""
    text = (spec or "").strip()
    if text.lower() == "default":
        return DEFAULT_REF
    if not text:
        raise ModelNotFound(
            "No model was given.", "Give 'default', a model folder, a .gguf file or a repo id."
        )
    path = Path(text).expanduser()
    if path.exists():
        return _ref_for_path(path.resolve())
    if _REPO_ID.match(text) and find_cached_snapshot(text, hf_cache) is not None:
        return ModelRef("hf_cache", text, text)
    raise ModelNotFound(
        f"No model '{text}' was found: it is neither a file or folder on this computer "
        "nor a model in the local Hugging Face cache.",
        "Check the path. QuantTune never downloads: to use a Hub model, download it on a "
        f"computer with internet access (`hf download {text}`) and copy the cache or folder here.",
    )


def _ref_for_path(path: Path) -> ModelRef:
    if path.is_dir():
        return ModelRef("folder", str(path), path.name)
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return ModelRef("gguf", str(path), path.stem)
    if suffix in WEIGHT_SUFFIXES:
        # A weights file stands for its model folder (config and tokenizer live beside it).
        return ModelRef("folder", str(path.parent), path.parent.name)
    raise NotAModel(
        f"{path} is not a model: expected a model folder, a .gguf file or a weights file.",
        "Choose the folder that holds config.json and the .safetensors files.",
    )


def list_available(hf_cache: Path | None = None) -> list[AvailableModel]:
    """The bundled default (if installed) plus each text-generation model in the local HF cache."""
    found: list[AvailableModel] = []
    default = _default_entry()
    if default is not None:
        found.append(default)
    for repo in _scan_cache(hf_cache):
        entry = _cache_entry(repo)
        if entry is not None:
            found.append(entry)
    return found


def _default_entry() -> AvailableModel | None:
    from core.models import default_model

    try:
        gguf = default_model.gguf_path()
    except ModelNotFound:
        return None
    return AvailableModel(DEFAULT_REF, _file_size(gguf), "Bundled with QuantTune (GGUF, 4-bit)")


def hf_cache_dir() -> Path:
    """The Hub cache folder, read from the environment now (huggingface_hub reads it at import)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _scan_cache(hf_cache: Path | None) -> list:
    """Model repos in the cache; a missing or damaged cache simply yields fewer entries."""
    folder = Path(hf_cache) if hf_cache is not None else hf_cache_dir()
    if not folder.is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(folder)
    except (OSError, ValueError):  # CacheNotFound and CorruptedCacheException derive from these
        return []
    repos = [repo for repo in info.repos if repo.repo_type == "model"]
    return sorted(repos, key=lambda repo: repo.repo_id.lower())


def _newest_revision(repo):
    """The revision "main" points at, else the most recently written one."""
    revisions = sorted(repo.revisions, key=lambda rev: rev.last_modified, reverse=True)
    for rev in revisions:
        if "main" in rev.refs:
            return rev
    return revisions[0] if revisions else None


def find_cached_snapshot(repo_id: str, hf_cache: Path | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local cache, or None."""
    for repo in _scan_cache(hf_cache):
        if repo.repo_id == repo_id:
            rev = _newest_revision(repo)
            return Path(rev.snapshot_path) if rev is not None else None
    return None


def _cache_entry(repo) -> AvailableModel | None:
    rev = _newest_revision(repo)
    if rev is None:
        return None
    config = _read_config(Path(rev.snapshot_path) / "config.json")
    if config is None:
        return None
    architectures = config.get("architectures") or []
    if architectures and not any(str(a).endswith(_CAUSAL_SUFFIXES) for a in architectures):
        return None  # e.g. a BERT classifier: it cannot generate text
    label = ", ".join(map(str, architectures)) or str(config.get("model_type", "unknown architecture"))
    detail = f"Hugging Face cache, {label}, revision {rev.commit_hash[:8]}"
    return AvailableModel(ModelRef("hf_cache", repo.repo_id, repo.repo_id), rev.size_on_disk, detail)


def _read_config(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
