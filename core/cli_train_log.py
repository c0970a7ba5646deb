"""The log of `quanttune train` on stdout: a line per stage and per step (loss, learning rate,
tokens/s, validation loss, ETA), or with --json one JSON event per line."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from core.errors import Cancelled
from core.jobs import JobEvent


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class TrainLog:
    """The command's log on stdout: a line per stage and per step, or one JSON event per line."""

    STEP_COLUMNS = (("loss", "loss", ".4f"), ("learning_rate", "lr", ".2e"),
                    ("tokens_per_second", "tokens/s", ".0f"), ("val_loss", "val_loss", ".4f"))  # fmt: skip

    def __init__(self, as_json: bool) -> None:
        self.as_json, self.metrics, self.started, self.first = as_json, {}, None, None

    def emit(self, kind: str, data: dict, text: str | None) -> None:
        if self.as_json:
            print(json.dumps({"event": kind, **data}, default=str, allow_nan=False), flush=True)
        elif text is not None:
            print(text, flush=True)

    def event(self, event: JobEvent) -> None:
        data = dict(event.data)
        if event.kind == "metric":
            value = data["value"]
            self.metrics[data["name"]] = data["value"] = value if math.isfinite(value) else None
            self.emit("metric", data, None)
        elif event.kind == "progress" and not data.get("total"):  # a stage begins
            if data.get("message") == "Training":
                self.started, self.first = time.monotonic(), None
            self.emit("stage", {"message": data.get("message", "")}, f"== {data.get('message', '')}")
        elif event.kind == "progress" and self.started is not None:  # a training step ended
            data["eta_s"] = self._eta(data["done"], data["total"])
            self.emit("progress", data, self._step_line(data))
            self.metrics = {}
        else:
            self.emit(event.kind, data, None)

    def _eta(self, done: int, total: int) -> float:
        """From this session's steps only: a resumed run's earlier steps took no time here."""
        self.first = done - 1 if self.first is None else self.first
        return (time.monotonic() - self.started) / max(1, done - self.first) * (total - done)

    def _step_line(self, data: dict) -> str:
        parts = [f"step {data['done']:>{len(str(data['total']))}}/{data['total']}"]
        for name, label, form in self.STEP_COLUMNS:
            if self.metrics.get(name) is not None:
                parts.append(f"{label} {self.metrics[name]:{form}}")
        return "  ".join([*parts, f"ETA {duration(data['eta_s'])}"])

    def result(self, report: Any) -> None:
        r = report.to_dict()
        loss, best = r["final_train_loss"], r["best_validation_loss"]
        text = f"done: {r['steps']} steps in {duration(r['seconds'])}, {r['tokens_per_second']:.0f} tokens/s"
        text += f"; final loss {loss:.4f}" if loss is not None else ""
        text += f", best validation loss {best:.4f}" if best is not None else ""
        self.emit("result", r, f"{text}\nsaved to {Path(r['output']) / 'final'}")

    def cancelled(self, exc: Cancelled, params: Any) -> None:
        from core.finetune.checkpoints import list_checkpoints

        saved = list_checkpoints(params.output) if params is not None else []
        if not saved:
            return self.emit("error", {"message": exc.message, "fix": ""}, None)
        step, path = saved[-1][0], saved[-1][3]
        message = f"Stopped at step {step}; the checkpoint is {path}."
        fix = f"To go on, run the same command with --resume latest (or --resume {path})."
        self.emit("error", {"message": message, "fix": fix, "checkpoint": str(path)}, None)
        print(f"{message}\n{fix}", file=sys.stderr)
