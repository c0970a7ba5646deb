"""Training runs of a project: each in its own folder under artifacts/train/, with a record in
``Project.train_runs`` written when the run starts, so a run the app did not see finish (a crash,
a kill) still shows its history and checkpoints when the project is reopened.

A record is a plain dict: ``{"id", "created", "label", "folder" (relative to the project),
"settings" (the FinetuneSettings), "status", "summary"}``; status is "running", "finished",
"stopped" (the user stopped it: it resumes from its last checkpoint) or "failed". A "running"
record whose job is not running was interrupted. The bundled sample datasets are listed here too.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from core.errors import QuantTuneError
from core.finetune import methods
from core.finetune.checkpoints import WEIGHTS, list_checkpoints
from core.finetune.runlog import read_metrics
from core.quant.runs import plain_settings, relative_path, run_path

RUNS_DIR = "train"
SUMMARY_KEYS = ("steps", "final_train_loss", "best_validation_loss", "seconds", "tokens_per_second",
                "trainable_parameters", "total_parameters", "stopped_early", "qat")  # fmt: skip
BUNDLED = {  # file -> (title, task)
    "instructions-units.jsonl": ("Unit conversions (instructions, 326 rows)", "instruction"),
    "classification-support.csv": ("Support messages (classification, 340 rows, 5 labels)", "classification"),
    "qa-planets.jsonl": ("Planets (question answering, 241 rows)", "qa"),
    "summaries-notes.jsonl": ("Team notes (summarisation, 210 rows)", "summarization"),
}
DEFAULT_DATASET = "instructions-units.jsonl"


BUNDLED_PREFIX = "bundled:"  # a sample is saved by name: the install folder may move


def bundled_dataset(name: str) -> Path:
    return Path(str(resources.files("resources").joinpath("datasets", name)))


def dataset_path(settings: Any) -> Path:
    """The settings' dataset file; the bundled instruction set when none was chosen."""
    if not settings.dataset:
        return bundled_dataset(DEFAULT_DATASET)
    if settings.dataset.startswith(BUNDLED_PREFIX):
        return bundled_dataset(settings.dataset.removeprefix(BUNDLED_PREFIX))
    return Path(settings.dataset)


def core_task(task: str) -> str:
    """The Train job's task: question answering and summarisation are taught as instructions."""
    return "instruction" if task in ("qa", "summarization") else task


LOOP_FIELDS = ("learning_rate", "epochs", "max_steps", "warmup_steps", "eval_every", "save_every",
               "early_stopping_patience", "gradient_checkpointing", "save_merged")  # fmt: skip


def resume_settings(record: dict[str, Any], current: Any) -> Any:
    """A run's own settings (data, method, batch size: what its checkpoints depend on) with the loop
    settings on screen now (a lower learning rate, more steps), recorded in the run."""
    settings = settings_of(record)
    for name in LOOP_FIELDS:
        setattr(settings, name, getattr(current, name))
    record["settings"] = plain_settings(asdict(settings))
    return settings


def settings_of(record: dict[str, Any]) -> Any:
    """The FinetuneSettings a recorded run was started with (to resume it as it was)."""
    from core.project import FinetuneSettings

    known = {f.name for f in fields(FinetuneSettings)}
    return FinetuneSettings(**{k: v for k, v in record.get("settings", {}).items() if k in known})


def method_settings(data: dict[str, Any]) -> methods.MethodSettings:
    known = {f.name for f in fields(methods.MethodSettings)}
    values = {k: v for k, v in data.items() if k in known}
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    return methods.MethodSettings(**values)


def train_params(settings: Any, loaded: Any, output: Path, resume_from: Path | None = None) -> Any:
    """core.finetune.train.TrainParams for a project's FinetuneSettings."""
    from core.finetune.train import TrainParams

    s = settings
    return TrainParams(
        loaded=loaded, dataset=dataset_path(s), output=Path(output), task=core_task(s.task),
        columns=tuple(sorted(s.columns.items())), method=method_settings(s.method), max_length=s.max_length,
        validation_ratio=s.validation_ratio, test_ratio=s.test_ratio, drop_bad_rows=s.drop_bad_rows,
        seed=s.seed, batch_size=s.batch_size, learning_rate=s.learning_rate, epochs=s.epochs,
        max_steps=s.max_steps, warmup_steps=s.warmup_steps, eval_every=s.eval_every,
        save_every=s.save_every, early_stopping_patience=s.early_stopping_patience, resume_from=resume_from,
        save_merged=s.save_merged, gradient_checkpointing=s.gradient_checkpointing, pack=s.pack,
        autocast=s.autocast,
    )  # fmt: skip


def plan_params(settings: Any, loaded: Any, timed: bool = False) -> Any:
    """core.finetune.plan.PlanParams for a project's FinetuneSettings (``timed``: the time too)."""
    from core.finetune.plan import PlanParams

    s = settings
    train = train_params(s, loaded, Path("(estimate)")) if timed else None
    return PlanParams(
        loaded, method_settings(s.method), s.batch_size, s.max_length, s.gradient_checkpointing,
        task=core_task(s.task), dataset=dataset_path(s), columns=tuple(sorted(s.columns.items())),
        train=train,
    )  # fmt: skip


def label(settings: dict[str, Any]) -> str:
    """ "LoRA r8 · instructions-units" """
    method = settings.get("method", {})
    key = method.get("method", "lora")
    title = methods.METHODS[key].title if key in methods.METHODS else key
    if key in ("lora", "dora", "qlora"):
        title += f" r{method.get('rank', methods.MethodSettings.rank)}"
    data = Path((settings.get("dataset") or DEFAULT_DATASET).removeprefix(BUNDLED_PREFIX)).stem
    return f"{title} · {data}"


def new_train_run(project: Any, settings: Any, model: dict | None = None) -> tuple[str, Path]:
    """Record a run that is starting (status "running") and give its folder; ``model``: the trained
    model's reference (core.models.sources.ModelRef.to_dict()), so only that model resumes it."""
    created = datetime.now(timezone.utc)
    data = plain_settings(asdict(settings))
    base = f"{created.strftime('%Y%m%d-%H%M%S')}-{data.get('method', {}).get('method', 'lora')}"
    root = project.artifacts / RUNS_DIR
    run_id, n = base, 2
    while (root / run_id).exists() or any(r.get("id") == run_id for r in project.train_runs):
        run_id, n = f"{base}-{n}", n + 1
    project.train_runs.append({
        "id": run_id, "created": created.isoformat(timespec="seconds"), "label": label(data),
        "folder": relative_path(root / run_id, project.folder), "settings": data, "status": "running",
        "summary": {}, "model": model,
    })  # fmt: skip
    return run_id, root / run_id


def finish_train_run(project: Any, run_id: str, status: str, report: dict[str, Any] | None = None) -> None:
    record = find(project, run_id)
    if record is None:
        return
    record["status"] = status
    if report is not None:
        record["summary"] = {k: report.get(k) for k in SUMMARY_KEYS}


def model_problem(record: dict[str, Any], loaded: Any) -> str:
    """Why ``loaded`` cannot resume or load the recorded run ("" when it can)."""
    trained = record.get("model")
    if trained is None or loaded is None or trained == loaded.ref.to_dict():
        return ""
    name = trained.get("name") or trained.get("path") or "another model"
    return f"This run trained {name}, not {loaded.card.name}: load that model first (Load model)."


def summary_from_history(history: list[dict]) -> dict[str, Any]:
    """What a run that did not finish got to: its last step and loss, its best validation loss."""
    losses = [r["loss"] for r in history if r.get("loss") is not None]
    vals = [r["val_loss"] for r in history if r.get("val_loss") is not None]
    return {
        "steps": history[-1]["step"] if history else 0,
        "final_train_loss": losses[-1] if losses else None,
        "best_validation_loss": min(vals) if vals else None,
    }


def shown_records(project: Any, running: str | None) -> list[dict[str, Any]]:
    """The project's runs as the window lists them: one recorded as running that is not the run in
    progress (``running``) was interrupted (the app stopped under it)."""
    records = [dict(r) for r in project.train_runs]
    for r in records:
        if r["status"] == "running" and r["id"] != running:
            r["status"] = "interrupted"
    return records


def find(project: Any, run_id: str) -> dict[str, Any] | None:
    return next((r for r in project.train_runs if r.get("id") == run_id), None)


def history(project: Any, record: dict[str, Any]) -> list[dict]:
    return read_metrics(run_path(project, record))


def checkpoints(project: Any, record: dict[str, Any]) -> list[tuple[int, float, float, Path]]:
    return list_checkpoints(run_path(project, record))


def has_final(project: Any, record: dict[str, Any]) -> bool:
    return (run_path(project, record) / "final" / "method.json").is_file()


def delete_train_run(project: Any, run_id: str) -> None:
    from core.quant.runs import remove_folder

    record = find(project, run_id)
    if record is None:
        return
    remove_folder(run_path(project, record))
    project.train_runs.remove(record)


def load_trained(loaded: Any, folder: Path) -> Any:
    """The base model with a finished run's training applied (``folder``: the run's final/)."""
    folder = Path(folder)
    try:
        settings = method_settings(json.loads((folder / "method.json").read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise QuantTuneError(
            f"{folder} holds no readable trained model ({exc}).",
            "Its run did not finish: resume it from a checkpoint, or train again.",
        ) from exc
    from core.finetune import classify

    if (folder / classify.LABELS).is_file():
        return classify.load_classifier(loaded, folder)
    own = methods.METHODS[settings.method].builds_own_model  # QLoRA: a new 4-bit model, no float copy
    base = loaded.model if own else copy.deepcopy(loaded.model)
    if not (folder / WEIGHTS).is_file():  # an adapter saved by peft alone
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(folder)).eval()
    return load_tensors(methods.apply(base, settings), folder)  # the structure it was trained in


def load_tensors(model: Any, folder: Path) -> Any:
    """The trained tensors a run saved in ``folder`` (its final/) copied into ``model``, which has the
    structure they were trained in (the method applied); returns ``model`` in eval mode."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / WEIGHTS))
    params = dict(model.named_parameters())
    unknown = [name for name in tensors if name not in params or params[name].shape != tensors[name].shape]
    if unknown:
        raise QuantTuneError(
            f"{folder} was trained on another model ({len(unknown)} tensors do not fit, e.g. {unknown[0]}).",
            "Load the model the run was trained from.",
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return model.eval()


@dataclass(frozen=True)
class LoadTrainedParams:
    loaded: Any  # the base model the run trained
    folder: Path  # the run's final/

    def validate(self) -> list[str]:
        if not (Path(self.folder) / "method.json").is_file():
            return [f"{self.folder} holds no finished model (resume the run, or train again)"]
        return []


def run_load_trained(params: LoadTrainedParams, ctx: Any) -> Any:
    ctx.stage("Loading the trained model")
    return load_trained(params.loaded, params.folder)
