"""Quantize runs of a project: each saved in its own folder under artifacts/quantized/, with a
short record in ``Project.runs`` so runs can be compared side by side without reading the models.

A record is a plain dict (it lives in project.json):
``{"id", "kind": "quantize", "created", "label", "folder" (relative to the project), "summary"}``.
The full report (every layer's error) is the folder's report.json.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import QuantTuneError, StorageError

KIND = "quantize"
RUNS_DIR = "quantized"
SUMMARY_KEYS = (
    "size_before_bytes",
    "size_after_bytes",
    "bits_per_weight",
    "perplexity_before",
    "perplexity_after",
    "seconds",
)


def new_run_folder(project: Any, settings: dict[str, Any]) -> tuple[str, Path]:
    """A fresh run id and the (not yet existing) folder the job should save into."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{settings.get('precision', 'q')}-{settings.get('method', '')}".rstrip("-")
    root = project.artifacts / RUNS_DIR
    run_id, n = base, 2
    while (root / run_id).exists() or any(r.get("id") == run_id for r in project.runs):
        run_id, n = f"{base}-{n}", n + 1
    return run_id, root / run_id


def label(settings: dict[str, Any]) -> str:
    """A short name for a run: "INT4 asymmetric group-64 · GPTQ · MSE"."""
    precision = settings.get("precision", "")
    if precision in ("fp16", "bf16", "nf4", "fp4"):
        head = precision.upper()
    else:
        head = settings.get("scheme", precision.upper())
    parts = [head, settings.get("method", "").upper()]
    if settings.get("method") in ("rtn", "gptq", "awq"):
        parts.append(settings.get("observer", "").replace("_", " "))
    if settings.get("activations"):
        parts.append("W8A8")
    return " · ".join(p for p in parts if p)


def record_run(project: Any, run_id: str, report: dict[str, Any]) -> dict[str, Any]:
    """Add the finished run to the project (the caller saves the project)."""
    folder = Path(report.get("output") or project.artifacts / RUNS_DIR / run_id)
    record = {
        "id": run_id,
        "kind": KIND,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "label": label(report["settings"]),
        "folder": relative_path(folder, project.folder),
        "settings": plain_settings(report["settings"]),
        "summary": {k: report.get(k) for k in SUMMARY_KEYS},
    }
    project.runs.append(record)
    return record


def quantize_runs(project: Any) -> list[dict[str, Any]]:
    return [r for r in project.runs if r.get("kind") == KIND]


def run_path(project: Any, record: dict[str, Any]) -> Path:
    folder = Path(record["folder"])
    return folder if folder.is_absolute() else project.folder / folder


def read_report(project: Any, record: dict[str, Any]) -> dict[str, Any]:
    path = run_path(project, record) / "report.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise QuantTuneError(
            f"The run {record['label']} has no readable report ({path}: {exc}).",
            "Its folder was moved or damaged: delete the run and quantize again.",
        ) from exc


def delete_run(project: Any, run_id: str) -> None:
    """Forget the run and remove its folder."""
    record = next((r for r in project.runs if r.get("id") == run_id), None)
    if record is None:
        return
    remove_folder(run_path(project, record))
    project.runs.remove(record)


def remove_folder(folder: Path) -> None:
    """Remove a run's folder (renamed first, so no half-deleted model looks valid)."""
    if not folder.exists():
        return
    trash = folder.with_name(f".{folder.name}.deleting")
    try:
        shutil.rmtree(trash, ignore_errors=True)  # left by an earlier, interrupted delete
        folder.rename(trash)
    except OSError as exc:
        raise StorageError(
            f"Could not delete {folder}: {exc.strerror or exc}.",
            "Check that the folder is not open in another program and that you may change it.",
        ) from exc
    shutil.rmtree(trash, ignore_errors=True)


def relative_path(folder: Path, root: Path) -> str:
    try:
        return str(folder.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(folder)  # saved outside the project: keep the absolute path


def plain_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe settings (tuples become lists)."""
    return json.loads(json.dumps(settings, default=str))


# -- reloading a saved run ---------------------------------------------------------------------
PROBE_TEXT = "Quantization maps each weight to the nearest level of a small grid."


def output_fingerprint(model: Any, tokenizer: Any) -> dict[str, Any]:
    """What the model answers on a fixed probe: a hash of its logits (bit-exact comparison)
    and a few of them (to say how far apart two models are when the hashes differ)."""
    import hashlib

    import torch

    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"] if tokenizer is not None else None
    if ids is None:
        ids = torch.arange(1, 17).reshape(1, -1)
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(ids.to(device)).logits[0].float().cpu().contiguous()
    return {
        "sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest(),
        "sample": logits[-1, :64].tolist(),
        "device": device.type,  # other devices' kernels round differently: compared within tolerance
    }


@dataclass(frozen=True)
class ReloadParams:
    folder: Path

    def validate(self) -> list[str]:
        return [] if Path(self.folder).is_dir() else [f"the run's folder {self.folder} is missing"]


@dataclass
class Reloaded:
    model: Any
    tokenizer: Any
    quantized: dict  # layer -> QuantizedWeight
    meta: dict[str, Any]
    identical: bool | None  # outputs equal, bit for bit, to when it was quantized (None: unknown)
    max_difference: float | None


def reload_run(params: ReloadParams, ctx: Any) -> Reloaded:
    """Load a saved run and check that it answers exactly as it did when it was quantized."""
    from core.quant import artifact, bnb

    folder = Path(params.folder)
    ctx.stage(f"Loading {folder.name}")
    if _format_of(folder) == bnb.FORMAT:
        (model, tokenizer, meta), quantized = bnb.load_bnb(folder), None
    else:
        model, tokenizer, quantized, meta = artifact.load_quantized(folder)
    ctx.check_cancelled()
    expected = meta.get("report", {}).get("fingerprint")
    if not expected:
        return Reloaded(model, tokenizer, quantized, meta, None, None)
    ctx.stage("Checking its outputs against the ones recorded when it was quantized")
    now = output_fingerprint(model, tokenizer)
    difference = max(abs(a - b) for a, b in zip(now["sample"], expected["sample"], strict=True))
    if expected.get("device", "cpu") != now["device"]:
        return Reloaded(model, tokenizer, quantized, meta, None, difference)  # not bit-comparable
    return Reloaded(model, tokenizer, quantized, meta, now["sha256"] == expected["sha256"], difference)


def _format_of(folder: Path) -> str:
    try:
        return json.loads((folder / "quantization.json").read_text(encoding="utf-8")).get("format", "")
    except (OSError, ValueError, AttributeError):
        return ""  # the loader names the problem


@dataclass(frozen=True)
class CopyParams:
    source: Path
    target: Path

    def validate(self) -> list[str]:
        problems = []
        if not Path(self.source).is_dir():
            problems.append(f"the run's folder {self.source} is missing")
        if Path(self.target).exists():
            problems.append(f"{self.target} already exists: choose a new folder name")
        return problems


def copy_run(params: CopyParams, ctx: Any) -> Path:
    """Copy a saved run (the whole model folder) to ``target``, all or nothing."""
    from core import atomic

    ctx.stage(f"Copying to {params.target}")
    with atomic.staged_dir(Path(params.target)) as tmp:
        shutil.copytree(params.source, tmp, dirs_exist_ok=True)
    return Path(params.target)
