"""What an evaluation produced, as plain data: saved as JSON, shown by the pane, exported by the report.

One ``Evaluation`` holds the test examples once and, per variant (a model or a no-training
baseline), its output for every example, the scores of each metric, per-example scores (what the
output table filters on) and the cost columns (size, memory, speed). A k-fold run is a
``KFoldResult``: one score dict per fold, summarised as mean ± standard deviation.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULT_FILE = "evaluation.json"
KFOLD_FILE = "kfold.json"

# The kinds of variant, in the order the table shows them.
KINDS = ("base", "quantized", "finetuned", "finetuned+quantized", "qat", "zero-shot", "few-shot", "rag")


@dataclass
class EvalExample:
    row: int  # index of the row in the dataset file (the test split holds these)
    prompt: str  # the question as the model saw it, without any few-shot or retrieved context
    reference: str  # the expected answer, summary or label


@dataclass
class VariantResult:
    id: str  # stable within a project: "base", "quant:<run>", "train:<run>", "few-shot", ...
    label: str  # what the user reads
    kind: str  # one of KINDS
    scores: dict[str, float | None] = field(default_factory=dict)  # metric key -> value (None: n/a)
    outputs: list[str] = field(default_factory=list)  # one per example, in the examples' order
    example_scores: list[dict[str, float]] = field(default_factory=list)  # per example: metric -> value
    confusion: list[list[int]] = field(default_factory=list)  # classification: rows true, columns predicted
    size_bytes: int | None = None  # the weights on disk (or in memory for the base model)
    peak_memory_bytes: int | None = None  # what the model's weights take in memory while it runs
    tokens_per_second: float | None = None  # generated tokens per second (batched, greedy)
    seconds: float = 0.0
    error: str = ""  # a variant that could not be scored says why; the others still are
    notes: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    id: str
    created: str
    task: str  # core.finetune task: instruction, classification, qa, summarization, text
    dataset: str  # as saved in the project ("bundled:NAME" or a path)
    metrics: list[str]  # metric keys, in the table's order
    examples: list[EvalExample] = field(default_factory=list)
    variants: list[VariantResult] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # classification: the class names, confusion order
    unavailable: dict[str, str] = field(default_factory=dict)  # metric key -> why it has no value
    settings: dict[str, Any] = field(default_factory=dict)  # the EvaluateSettings it ran with

    def variant(self, variant_id: str) -> VariantResult | None:
        return next((v for v in self.variants if v.id == variant_id), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for variant in data["variants"]:
            variant["scores"] = {k: _finite_or_none(v) for k, v in variant["scores"].items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        data = dict(data)
        examples = [EvalExample(**e) for e in data.pop("examples", [])]
        variants = [VariantResult(**v) for v in data.pop("variants", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(examples=examples, variants=variants, **known)


@dataclass
class KFoldResult:
    k: int
    task: str
    method: str  # the fine-tuning method trained in every fold
    metrics: list[str]
    folds: list[dict[str, float | None]] = field(default_factory=list)  # one score dict per finished fold
    fold_sizes: list[tuple[int, int]] = field(default_factory=list)  # (train rows, test rows) per fold
    cancelled: bool = False  # stopped before every fold finished: the summary covers those that did
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, tuple[float, float] | None]:
        """metric -> (mean, sample standard deviation) over the finished folds (std 0 for one fold)."""
        out: dict[str, tuple[float, float] | None] = {}
        for key in self.metrics:
            values = [f[key] for f in self.folds if f.get(key) is not None and math.isfinite(f[key])]
            if not values:
                out[key] = None
                continue
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key] = (statistics.fmean(values), spread)
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {k: list(v) if v else None for k, v in self.summary().items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KFoldResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["fold_sizes"] = [tuple(s) for s in known.get("fold_sizes", [])]
        return cls(**known)


def _finite_or_none(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def read_evaluation(folder: Path) -> Evaluation:
    import json

    return Evaluation.from_dict(json.loads((Path(folder) / RESULT_FILE).read_text(encoding="utf-8")))


def write_evaluation(folder: Path, evaluation: Evaluation) -> None:
    from core.atomic import write_json

    write_json(Path(folder) / RESULT_FILE, evaluation.to_dict())
