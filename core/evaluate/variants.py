"""Every variant of a project that the Evaluate step can score, and how to open each one.

Models: the base model (the one loaded), each saved quantized model, each finished fine-tuning
run, each fine-tuning run quantized with the newest quantize run's recipe, and QAT runs (their
exported integer model). Baselines (no training, the base model prompted differently): zero-shot
with the task's instruction, few-shot (training rows as earlier turns) and RAG (BM25 over the
training rows). The ids are stable, so the user's marks on outputs survive a re-evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import QuantTuneError
from core.quant.runs import run_path

BASELINES = ("zero-shot", "few-shot", "rag")
BASELINE_LABELS = {"zero-shot": "Zero-shot prompting", "few-shot": "Few-shot prompting", "rag": "RAG (BM25)"}


@dataclass(frozen=True)
class VariantInfo:
    id: str
    label: str
    kind: str  # core.evaluate.results.KINDS
    available: bool = True
    why: str = ""  # why it cannot be scored (shown as the checkbox's tooltip)


@dataclass
class Opened:
    """A variant's model, ready to score; ``size_bytes`` is what its weights take on disk."""

    model: Any
    tokenizer: Any
    size_bytes: int | None
    notes: list[str] = field(default_factory=list)
    trained_rows: set[int] | None = None  # rows of the file its training saw (None: none or unknown)


def list_variants(project: Any, loaded: Any) -> list[VariantInfo]:
    """What the project has to compare, in the table's order; unavailable ones say why."""
    from core.quant import runs as quant_runs

    name = loaded.card.name if loaded is not None else "the base model"
    out = [VariantInfo("base", f"Base · {name}", "base", loaded is not None, "" if loaded else _NO_MODEL)]
    for record in quant_runs.quantize_runs(project):
        folder = quant_runs.run_path(project, record)
        why = "" if folder.is_dir() else f"Its folder {folder} is gone: delete the run in the Calibrate step."
        out.append(
            VariantInfo(f"quant:{record['id']}", record.get("label", record["id"]), "quantized", not why, why)
        )
    newest_quant = (quant_runs.quantize_runs(project) or [None])[-1]
    for record in project.train_runs:
        out.extend(_train_variants(project, record, loaded, newest_quant))
    task = project.finetune.task
    for key in BASELINES:
        why = _baseline_problem(key, task, project.evaluate, loaded)
        out.append(VariantInfo(key, BASELINE_LABELS[key], key, not why, why))
    return out


_NO_MODEL = "Load a model first (the Load model step)."


def _train_variants(project: Any, record: dict, loaded: Any, newest_quant: dict | None) -> list[VariantInfo]:
    from core.finetune import runs as train_runs

    run_id, label = record["id"], record.get("label", record["id"])
    method = record.get("settings", {}).get("method", {}).get("method", "lora")
    why, folder = "", run_path(project, record)
    trained_task = record.get("settings", {}).get("task", "instruction")
    if not folder.is_dir():
        why = f"Its folder {folder} is gone: delete the run in the Train step."
    elif train_runs.core_task(trained_task) != train_runs.core_task(project.finetune.task):
        why = (f"It was trained for {trained_task}, and this project's task is now "
               f"{project.finetune.task}: choose that task again to score it.")  # fmt: skip
    elif not train_runs.has_final(project, record):
        why = f"The run is {record.get('status', 'unfinished')}: resume it in the Train step to finish it."
    elif loaded is not None and (problem := train_runs.model_problem(record, loaded)):
        why = problem
    elif loaded is None:
        why = _NO_MODEL
    kind = "qat" if method == "qat" else "finetuned"
    out = [VariantInfo(f"train:{run_id}", label, kind, not why, why)]
    if newest_quant is None or kind == "qat":
        return out
    then = f"{label} → {newest_quant.get('label', newest_quant['id'])}"
    later = why or _quantize_later_problem(record)
    out.append(VariantInfo(f"train+quant:{run_id}:{newest_quant['id']}", then, "finetuned+quantized",
                           not later, later))  # fmt: skip
    return out


def _quantize_later_problem(record: dict) -> str:
    from core.finetune import methods, saving

    settings = record.get("settings", {})
    if settings.get("task") == "classification":
        return "Quantizing a trained classifier is not offered: compare its accuracy with the base's instead."
    method = methods.METHODS.get(settings.get("method", {}).get("method", "lora"))
    if method is not None and method.builds_own_model:
        return f"{method.title} already trains on a 4-bit base: it is its own quantized variant."
    merge = saving.merge_problem(_method_settings(settings))
    return f"It cannot be quantized afterwards: {merge}." if merge else ""


def _method_settings(settings: dict) -> Any:
    from core.finetune.runs import method_settings

    return method_settings(settings.get("method", {}))


def _baseline_problem(key: str, task: str, settings: Any, loaded: Any) -> str:
    if loaded is None:
        return _NO_MODEL
    if task == "causal_lm":
        return "Plain-text (domain) data has no question to prompt with: baselines need an instruction task."
    if key == "zero-shot" and task == "classification":
        return ("For classification the base model is already asked zero-shot (it needs the labels in its "
                "prompt): see the Base row.")  # fmt: skip
    if key == "zero-shot" and task == "instruction":
        return "Instruction rows are their own prompts, so the Base row is already the zero-shot answer."
    if key == "few-shot" and settings.few_shot <= 0:
        return "Set the number of examples above 0 to add the few-shot baseline."
    if key == "rag" and settings.rag_top_k <= 0:
        return "Set the number of retrieved documents above 0 to add the RAG baseline."
    return ""


# -- opening a variant --------------------------------------------------------------------
def open_variant(info: VariantInfo, project: Any, loaded: Any, ctx: Any) -> Opened:
    """The model behind ``info`` (baselines: the base model), loaded for scoring."""
    if not info.available:
        raise QuantTuneError(
            f"{info.label} cannot be scored: {info.why}", "See the reason, then evaluate again."
        )
    if info.kind in ("base", *BASELINES):
        return Opened(loaded.model, loaded.tokenizer, weights_bytes(loaded.model))
    kind, _, rest = info.id.partition(":")
    if kind == "quant":
        return _open_quantized(project, rest, ctx)
    if kind == "train":
        return _open_trained(project, rest, loaded, ctx)
    if kind == "train+quant":
        run_id, _, quant_id = rest.partition(":")
        return _open_trained_then_quantized(project, run_id, quant_id, loaded, ctx)
    raise QuantTuneError(f"Unknown variant {info.id!r}.", "Refresh the Evaluate step and choose again.")


def _open_quantized(project: Any, run_id: str, ctx: Any) -> Opened:
    from core.quant import runs as quant_runs

    record = next((r for r in quant_runs.quantize_runs(project) if r["id"] == run_id), None)
    if record is None:
        raise QuantTuneError(f"The quantize run {run_id} is gone.", "Evaluate again with the runs listed.")
    reloaded = quant_runs.reload_run(quant_runs.ReloadParams(quant_runs.run_path(project, record)), ctx)
    return Opened(reloaded.model, reloaded.tokenizer, record.get("summary", {}).get("size_after_bytes"))


def _open_trained(project: Any, run_id: str, loaded: Any, ctx: Any) -> Opened:
    from core.finetune import qat
    from core.finetune import runs as train_runs

    record = train_runs.find(project, run_id)
    if record is None:
        raise QuantTuneError(f"The fine-tuning run {run_id} is gone.", "Evaluate again with the runs listed.")
    root = run_path(project, record)
    ctx.stage(f"Loading {record.get('label', run_id)}")
    exported = root / qat.EXPORT_FOLDER
    if exported.is_dir():  # QAT: the integer model it exported, as it will be used
        from core.quant import artifact

        model, tokenizer, _quantized, _meta = artifact.load_quantized(exported)
        return Opened(model, tokenizer, folder_bytes(exported), [], trained_rows(project, record))
    model = train_runs.load_trained(loaded, root / "final")
    size = weights_bytes(loaded.model) + folder_bytes(root / "final")  # the base and the run's own tensors
    return Opened(model, loaded.tokenizer, size, [], trained_rows(project, record))


def _open_trained_then_quantized(project: Any, run_id: str, quant_id: str, loaded: Any, ctx: Any) -> Opened:
    """The fine-tuned model with its adapter folded in, quantized in memory by the quantize run's recipe."""
    from core.finetune import runs as train_runs
    from core.quant import job
    from core.quant import runs as quant_runs

    trained = _open_trained(project, run_id, loaded, ctx)
    merged = _merged(trained.model)
    recipe = next((r for r in quant_runs.quantize_runs(project) if r["id"] == quant_id), None)
    if recipe is None:
        raise QuantTuneError(f"The quantize run {quant_id} is gone.", "Evaluate again with the runs listed.")
    ctx.stage(f"Quantizing {train_runs.find(project, run_id).get('label', run_id)} ({recipe.get('label')})")
    known = {f.name for f in dataclasses.fields(job.QuantizeParams)}
    settings = {k: v for k, v in recipe.get("settings", {}).items() if k in known}
    settings.update(output="", measure_perplexity=False)
    for key in ("keep_layers", "overrides"):
        settings[key] = tuple(tuple(x) if isinstance(x, list) else x for x in settings.get(key, ()))
    source = dataclasses.replace(loaded, model=merged)
    report = job.run(job.QuantizeParams(source, **settings), ctx)
    return Opened(report.model, loaded.tokenizer, report.size_after_bytes, [], trained.trained_rows)


def _merged(model: Any) -> Any:
    """The adapter folded into the weights, in place: the trained model is this variant's own copy."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def trained_rows(project: Any, record: dict) -> set[int] | None:
    """The rows the run trained on, from the split it recorded."""
    import json

    from core.finetune import runs as train_runs
    from core.finetune.rundata import SPLIT

    try:
        split = json.loads((run_path(project, record) / SPLIT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if Path(split.get("dataset", "")) != train_runs.dataset_path(project.finetune):
        return None  # trained on another file: its row numbers say nothing about this one
    return set(split.get("train", []))


def weights_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers take in memory (shared tensors once)."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of the weight files in a saved folder (safetensors and GGUF)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.suffix in (".safetensors", ".gguf"))
