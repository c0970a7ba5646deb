"""The Inspect job: statistics and a scheme recommendation for every tensor of a checkpoint.

Tensors are streamed one at a time from the checkpoint (see core.weights.sources), so the job's
memory stays near the largest tensor whatever the model's size.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from core import atomic
from core.weights.recommend import Criteria, Recommendation, recommend, rejudge
from core.weights.sources import open_source
from core.weights.stats import TensorStats, tensor_stats

BIT_WIDTHS = (2, 3, 4, 8)


@dataclass(frozen=True)
class InspectParams:
    source: str  # a model folder, a .safetensors file or a .gguf file
    bits: int = 4
    group_size: int = 64
    criteria: Criteria = field(default_factory=Criteria)
    measure: bool = True  # quantize each tensor every way and measure the error

    def validate(self) -> list[str]:
        problems = []
        if not Path(self.source).exists():
            problems.append(f"{self.source} does not exist")
        if self.bits not in BIT_WIDTHS:
            problems.append(f"bits must be one of {', '.join(map(str, BIT_WIDTHS))} (got {self.bits})")
        if self.group_size < 2:
            problems.append(f"group size must be at least 2 (got {self.group_size})")
        if self.criteria.max_abs_skew < 0 or self.criteria.max_mean_over_std < 0:
            problems.append("the rule's thresholds must not be negative")
        return problems


@dataclass
class TensorReport:
    stats: TensorStats
    recommendation: Recommendation

    def to_dict(self) -> dict:
        return {**self.stats.to_dict(), "recommendation": self.recommendation.to_dict()}


@dataclass
class InspectReport:
    source: str
    bits: int
    group_size: int
    criteria: Criteria
    tensors: list[TensorReport]
    seconds: float = 0.0

    @property
    def parameters(self) -> int:
        return sum(t.stats.params for t in self.tensors)

    def summary(self) -> str:
        """One sentence: how many tensors got which scheme."""
        counts = Counter(t.recommendation.label for t in self.tensors)
        parts = [f"{n} of {len(self.tensors)} tensors: {label}" for label, n in counts.most_common()]
        disagree = sum(1 for t in self.tensors if t.recommendation.agree is False)
        text = "; ".join(parts) + "."
        if disagree:
            text += f" The rule of thumb and the measurement disagree on {disagree}; the measurement decides."
        return text

    def with_criteria(self, criteria: Criteria) -> InspectReport:
        """The same statistics and measurements judged with other thresholds (no re-reading)."""
        tensors = [TensorReport(t.stats, rejudge(t.stats, t.recommendation, criteria)) for t in self.tensors]
        return replace(self, criteria=criteria, tensors=tensors)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "bits": self.bits,
            "group_size": self.group_size,
            "criteria": vars(self.criteria),
            "parameters": self.parameters,
            "seconds": self.seconds,
            "summary": self.summary(),
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def csv_text(self, k: float = 3.0) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS + (f"outliers beyond {k:g} std",))
        for t in self.tensors:
            writer.writerow(_csv_row(t) + (_num(t.stats.outlier_share(k)),))
        return out.getvalue()

    def write_csv(self, path: Path, k: float = 3.0) -> None:
        atomic.write_text(Path(path), self.csv_text(k))


CSV_COLUMNS = (
    "name", "layer", "module", "shape", "params", "dtype", "mean", "std", "min", "max", "absmax",
    "skewness", "excess kurtosis", "zero share", "channel spread", "flags", "rule",
    "recommendation", "rule and measurement agree", "best SQNR dB",
)  # fmt: skip


def _num(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6g}"


def _csv_row(t: TensorReport) -> tuple:
    s, r = t.stats, t.recommendation
    rule = {True: "symmetric", False: "asymmetric", None: ""}[r.rule_symmetric]
    return (
        s.name, "" if s.layer is None else s.layer, s.module, "x".join(map(str, s.shape)), s.params, s.dtype,
        _num(s.mean), _num(s.std), _num(s.min), _num(s.max), _num(s.absmax), _num(s.skew), _num(s.kurtosis),
        _num(s.zero_share), _num(s.channel_spread), "; ".join(s.flags), rule, r.label,
        "" if r.agree is None else r.agree, _num(r.best.sqnr_db) if r.best else "",
    )  # fmt: skip


def run(params: InspectParams, ctx) -> InspectReport:
    started = time.monotonic()
    source = open_source(Path(params.source))
    infos = source.infos()
    total = sum(i.numel for i in infos) or 1
    done, reports = 0, []
    ctx.stage(f"Inspecting {len(infos)} tensors")
    for info in infos:
        ctx.check_cancelled()
        tensor = source.load(info.name)
        stats = tensor_stats(info.name, tensor)
        measured = tensor if params.measure and stats.quantizable else None
        rec = recommend(stats, measured, params.bits, params.group_size, params.criteria)
        reports.append(TensorReport(stats, rec))
        del tensor, measured  # keep only one tensor alive at a time
        done += info.numel
        ctx.progress(done, total, f"Inspecting {info.name}")
    return InspectReport(
        str(params.source),
        params.bits,
        params.group_size,
        params.criteria,
        reports,
        time.monotonic() - started,
    )
