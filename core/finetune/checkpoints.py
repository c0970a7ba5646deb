"""Training checkpoints: the trainable tensors (safetensors), the optimizer and scheduler state
(read back with ``weights_only=True``: a checkpoint cannot run code), the RNG state and the run's
state (step, loss, data order) as JSON; each checkpoint folder is written whole or not at all."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.atomic import staged_dir, write_json
from core.errors import QuantTuneError

if TYPE_CHECKING:
    import torch

STATE, WEIGHTS, OPTIMIZER, RNG = "state.json", "trainable.safetensors", "optimizer.pt", "rng.safetensors"


def trainable_tensors(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any, state: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    with staged_dir(folder) as tmp:
        save_file(trainable_tensors(model), str(tmp / WEIGHTS))
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER
        )
        save_file({"torch": torch.get_rng_state()}, str(tmp / RNG))
        write_json(tmp / STATE, {**state, "time": time.time()})
    return folder


def load_checkpoint(folder: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        weights = load_file(str(folder / WEIGHTS))
        # weights_only: a checkpoint folder must not be able to run code when it is loaded
        opt = torch.load(folder / OPTIMIZER, weights_only=True)
        rng = load_file(str(folder / RNG))["torch"]
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RuntimeError) as e:
        raise QuantTuneError(
            f"The checkpoint {folder} cannot be read ({e}).", "Resume from another one."
        ) from e
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise QuantTuneError(
            f"The checkpoint {folder.name} was made with other method settings "
            f"({len(missing)} tensors differ).",
            "Resume with the method settings it was trained with, or start afresh.",
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    torch.set_rng_state(rng)
    return state


def list_checkpoints(output: Path) -> list[tuple[int, float, float, Path]]:
    """(step, loss, time, path) of every complete checkpoint under ``output``, by step."""
    found = []
    for folder in (Path(output) / "checkpoints").glob("step-*"):
        try:
            state = json.loads((folder / STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a finished checkpoint
        found.append((int(state["step"]), float(state["loss"]), float(state["time"]), folder))
    return sorted(found, key=lambda c: c[0])


def prune_checkpoints_after(output: Path, step: int) -> None:
    """Remove the checkpoints after ``step``: a run resumed from an earlier one leaves their future."""
    import shutil

    for later_step, _loss, _time, folder in list_checkpoints(output):
        if later_step > step:
            shutil.rmtree(folder, ignore_errors=True)
