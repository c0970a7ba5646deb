"""The metrics log of a training run: one JSON line per step in ``output/metrics.jsonl``, flushed
as training goes, so a killed app still shows the run's history when the project is reopened.

A resumed run appends from its checkpoint's step on; reading keeps the last record of each step,
so the history is that of the run that continued. A line cut short by a kill is skipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from core.atomic import write_text

METRICS = "metrics.jsonl"


class MetricsLog:
    """``keep_until``: a resumed run's step; the records of later steps (another future) are dropped."""

    def __init__(self, output: Path, keep_until: int | None = None) -> None:
        Path(output).mkdir(parents=True, exist_ok=True)
        self.path = Path(output) / METRICS
        if keep_until is not None and self.path.is_file():
            kept = [r for r in read_metrics(output) if r["step"] <= keep_until]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, step: int, values: dict[str, float]) -> None:
        clean = {
            k: (v if isinstance(v, (int, float)) and math.isfinite(v) else None) for k, v in values.items()
        }
        self._file.write(json.dumps({"step": step, **clean}) + "\n")
        self._file.flush()  # in the OS's hands: survives the app being killed

    def close(self) -> None:
        self._file.close()


def read_metrics(output: Path) -> list[dict]:
    """Per step (ascending), the metrics last written for it; values are floats or None."""
    by_step: dict[int, dict] = {}
    try:
        lines = (Path(output) / METRICS).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
        by_step.setdefault(step, {}).update(record)
    return [by_step[s] for s in sorted(by_step)]
