"""Projects: a folder under the user data dir holding project.json and the steps' artifacts.

The project is a dataclass tree saved as JSON with a ``schema_version``; older files are
migrated step by step on open. Every write is atomic (see core.atomic).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core import atomic, paths
from core.errors import ProjectError

SCHEMA_VERSION = 6
PROJECT_FILE = "project.json"
ARTIFACTS_DIR = "artifacts"
STEPS = (
    "load",
    "inspect",
    "precision",
    "calibrate",
    "method",
    "train",
    "evaluate",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class LoadSettings:
    """The Load step: which model, on which device."""

    model: dict[str, str] | None = None  # a core.models.sources.ModelRef as a dict
    device: str = "auto"
    allow_pickle: bool = False


@dataclass
class InspectSettings:
    """The Inspect step: what to measure, the rule's thresholds, and what it recommended."""

    bits: int = 4
    group_size: int = 64
    outlier_k: float = 3.0
    max_abs_skew: float = 0.5
    max_mean_over_std: float = 0.1
    asym_margin_db: float = 1.5
    # tensor name -> {"symmetric": bool, "granularity": "tensor"|"channel"|"group"}; the
    # Precision & symmetry step starts from these.
    recommended: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: str = ""


@dataclass
class QuantizeSettings:
    """The Precision & symmetry and Calibrate steps: what to quantize, how, and on which data.

    ``symmetric`` None follows the Inspect step's recommendation (the scheme most of the
    tensors were recommended). ``overrides`` keeps chosen layers at other precisions
    (layer name -> "int8" | "fp16" | "fp32"). Empty file paths mean the bundled texts.
    """

    precision: str = "int4"
    symmetric: bool | None = None
    granularity: str = "group"
    group_size: int = 64
    activations: bool = False  # W8A8: inputs of the quantized layers too, static ranges
    smoothquant: bool = False  # W8A8: move activation outliers into the weights first
    activation_observer: str = "minmax"
    include_head: bool = False
    include_embeddings: bool = False
    overrides: dict[str, str] = field(default_factory=dict)
    budget_mb: float = 0.0  # > 0: choose bits per layer to fit this size (mixed precision)
    method: str = "gptq"
    observer: str = "mse"
    percentile: float = 99.99
    calibration_file: str = ""
    calibration_samples: int = 16
    calibration_seq_len: int = 512
    eval_file: str = ""


@dataclass
class FinetuneSettings:
    """The Fine-tuning method and Train steps: the data, the method, and the training loop.

    ``dataset`` empty means none chosen yet; ``columns`` maps roles to columns where the shape
    was not recognised. ``method`` holds core.finetune.methods.MethodSettings' fields (target
    modules as a list). The split is test, then validation, from one shuffle by ``seed``;
    the test rows are never trained on (the Evaluate step scores them).
    """

    dataset: str = ""
    task: str = "instruction"
    columns: dict[str, str] = field(default_factory=dict)
    drop_bad_rows: bool = False
    max_length: int = 512
    validation_ratio: float = 0.1
    test_ratio: float = 0.1
    seed: int = 0
    method: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    learning_rate: float = 2e-4
    epochs: int = 1
    max_steps: int = 0
    warmup_steps: int = 0
    eval_every: int = 20
    save_every: int = 50
    early_stopping_patience: int = 0
    gradient_checkpointing: bool = False
    save_merged: bool = False
    pack: bool = True  # short rows end to end, without padding (where the method allows)
    autocast: str = "auto"  # bf16 compute where the processor multiplies bf16 natively


@dataclass
class EvaluateSettings:
    """The Evaluate step: which variants and baselines to score on the test split, and k-fold.

    ``skipped`` holds the model variants the user unchecked (a new run starts checked).
    ``few_shot`` is the number of training examples put in the prompt (0: no few-shot baseline);
    ``rag_top_k`` the number of training documents retrieved (0: no RAG baseline). ``marks`` keeps
    the user's verdicts on outputs: "variant id|row" -> {"mark": "good" | "bad", "output": the text
    that was marked}.
    """

    skipped: list[str] = field(default_factory=list)
    zero_shot: bool = True
    few_shot: int = 3
    rag_top_k: int = 2
    max_examples: int = 40  # test rows scored (0: all); generation costs seconds per row on a CPU
    max_new_tokens: int = 64
    batch_size: int = 8
    kfold_k: int = 5
    kfold_max_steps: int = 30  # training steps per fold (0: the Train step's epochs)
    marks: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Project:
    name: str
    folder: Path
    created: str = field(default_factory=_now)
    modified: str = field(default_factory=_now)
    load: LoadSettings = field(default_factory=LoadSettings)
    inspect: InspectSettings = field(default_factory=InspectSettings)
    quantize: QuantizeSettings = field(default_factory=QuantizeSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    step_status: dict[str, str] = field(default_factory=dict)  # step -> "done" | "stale"
    runs: list[dict[str, Any]] = field(default_factory=list)  # see core.quant.runs
    train_runs: list[dict[str, Any]] = field(default_factory=list)  # see core.finetune.runs
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # see core.evaluate.runs
    notes: str = ""

    @property
    def artifacts(self) -> Path:
        return self.folder / ARTIFACTS_DIR

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("folder")
        return {"schema_version": SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path) -> Project:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known.pop("folder", None)
        load = _settings(LoadSettings, known.pop("load", None))
        inspect = _settings(InspectSettings, known.pop("inspect", None))
        quantize = _settings(QuantizeSettings, known.pop("quantize", None))
        finetune = _settings(FinetuneSettings, known.pop("finetune", None))
        evaluate = _settings(EvaluateSettings, known.pop("evaluate", None))
        project = cls(
            folder=folder, load=load, inspect=inspect, quantize=quantize, finetune=finetune,
            evaluate=evaluate, **known
        )  # fmt: skip
        _check_types(project)
        return project


def _settings(cls, data: Any):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"'{cls.__name__}' should be an object")
    return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_EXPECTED_TYPES = {
    "name": str,
    "created": str,
    "modified": str,
    "step_status": dict,
    "runs": list,
    "train_runs": list,
    "evaluations": list,
    "notes": str,
}


def _check_types(project: Project) -> None:
    for attr, kind in _EXPECTED_TYPES.items():
        if not isinstance(getattr(project, attr), kind):
            raise ValueError(f"'{attr}' should be a {kind.__name__}")
    if project.load.model is not None and not isinstance(project.load.model, dict):
        raise ValueError("'load.model' should be an object")


# -- migrations ----------------------------------------------------------------------------
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 kept the model as a flat "model_path" string and had no device choice.
    model_path = data.pop("model_path", None)
    model = None
    if model_path == "default":
        model = {"kind": "default", "location": "", "name": "SmolLM2-135M-Instruct (bundled)"}
    elif model_path:
        kind = "gguf" if str(model_path).endswith(".gguf") else "folder"
        model = {"kind": kind, "location": model_path, "name": Path(model_path).name}
    data["load"] = {"model": model, "device": "auto", "allow_pickle": False}
    data.setdefault("step_status", {})
    return data


def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    # v3 added the Inspect step's settings; its defaults apply.
    data.setdefault("inspect", asdict(InspectSettings()))
    return data


def _v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
    # v4 added the Precision & symmetry and Calibrate steps' settings; their defaults apply.
    data.setdefault("quantize", asdict(QuantizeSettings()))
    return data


def _v4_to_v5(data: dict[str, Any]) -> dict[str, Any]:
    # v5 added the Fine-tuning method and Train steps' settings and their runs; defaults apply.
    data.setdefault("finetune", asdict(FinetuneSettings()))
    data.setdefault("train_runs", [])
    return data


def _v5_to_v6(data: dict[str, Any]) -> dict[str, Any]:
    # v6 added the Evaluate step's settings and its evaluations; defaults apply.
    data.setdefault("evaluate", asdict(EvaluateSettings()))
    data.setdefault("evaluations", [])
    return data


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4, 4: _v4_to_v5, 5: _v5_to_v6}


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ProjectError(
            f"This project was saved by a newer QuantTune (schema {version}).",
            "Update QuantTune to open it.",
        )
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](dict(data))
        version += 1
    data["schema_version"] = SCHEMA_VERSION
    return data


# -- reading and writing -------------------------------------------------------------------
def load_project(folder: Path) -> Project:
    folder = Path(folder)
    path = folder / PROJECT_FILE
    if not path.is_file():
        raise ProjectError(
            f"No project at {folder}: {PROJECT_FILE} is missing.",
            "The folder may have been moved or deleted; pick the project again or create a new one.",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return Project.from_dict(migrate(data), folder)
    except ProjectError:
        raise
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ProjectError(
            f"The project file {path} is damaged ({exc}).",
            "Restore it from a backup, or create a new project; the artifacts folder is untouched.",
        ) from exc


def save_project(project: Project) -> None:
    if not project.folder.is_dir():
        raise ProjectError(
            f"The project folder {project.folder} no longer exists.",
            "Use File → Save As… to save the project somewhere else.",
        )
    project.modified = _now()
    atomic.write_json(project.folder / PROJECT_FILE, project.to_dict())


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    return slug[:60] or "project"


def _free_folder(root: Path, name: str) -> Path:
    base = root / _slug(name)
    candidate, n = base, 2
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{n}")
        n += 1
    return candidate


def validate_name(name: str) -> list[str]:
    problems = []
    if not name.strip():
        problems.append("The project name is empty.")
    if len(name) > 100:
        problems.append("The project name is longer than 100 characters.")
    return problems


def create_project(name: str, root: Path | None = None) -> Project:
    problems = validate_name(name)
    if problems:
        raise ProjectError(" ".join(problems), "Type a name for the project.")
    root = Path(root) if root else paths.projects_dir()
    folder = _free_folder(root, name)
    project = Project(name=name.strip(), folder=folder)
    with atomic.staged_dir(folder) as tmp:
        (tmp / ARTIFACTS_DIR).mkdir()
        atomic.write_json(tmp / PROJECT_FILE, project.to_dict())
    return project


def rename_project(project: Project, new_name: str) -> Project:
    """Rename in place: the folder keeps its path so open references stay valid."""
    problems = validate_name(new_name)
    if problems:
        raise ProjectError(" ".join(problems), "Type a name for the project.")
    project.name = new_name.strip()
    save_project(project)
    return project


def duplicate_project(project: Project, new_name: str | None = None) -> Project:
    name = new_name or f"{project.name} copy"
    folder = _free_folder(project.folder.parent, name)
    with atomic.staged_dir(folder) as tmp:
        shutil.copytree(project.folder, tmp, dirs_exist_ok=True)
        copy = Project.from_dict(project.to_dict(), tmp)
        copy.name, copy.created = name, _now()
        copy.folder = tmp
        save_project(copy)
    copy.folder = folder
    return copy


def delete_project(project: Project) -> None:
    # Rename first so a half-finished delete never looks like a valid project.
    if not project.folder.exists():
        return
    trash = project.folder.with_name(f".{project.folder.name}.deleting")
    project.folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def list_projects(root: Path | None = None) -> list[Project]:
    root = Path(root) if root else paths.projects_dir()
    found = []
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            if folder.name.startswith(".") or not (folder / PROJECT_FILE).is_file():
                continue
            try:
                found.append(load_project(folder))
            except ProjectError:
                continue  # a damaged project is reported when the user opens it
    return sorted(found, key=lambda p: p.modified, reverse=True)
