"""Evaluations and k-fold runs kept in the project, and the user's good/bad marks on outputs.

A record in ``project.evaluations``: id, kind ("evaluation" | "kfold"), created, folder (relative
to the project), and a one-line summary. The numbers live in the folder's JSON
(core.evaluate.results); the marks live in the project's EvaluateSettings, keyed by variant and row,
with the text that was marked (a mark does not carry over to a different output).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.evaluate import results
from core.quant.runs import relative_path, run_path

RUNS_DIR = "evaluate"
MARKS = ("good", "bad")


def _new_folder(project: Any, suffix: str) -> tuple[str, Path]:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = project.artifacts / RUNS_DIR
    base, n = f"{stamp}-{suffix}", 2
    run_id = base
    while (root / run_id).exists() or any(r.get("id") == run_id for r in project.evaluations):
        run_id, n = f"{base}-{n}", n + 1
    return run_id, root / run_id


def new_evaluation(project: Any) -> tuple[str, Path]:
    """A fresh id and the (not yet existing) folder an evaluation writes into."""
    return _new_folder(project, "eval")


def new_kfold(project: Any) -> tuple[str, Path]:
    return _new_folder(project, "kfold")


def _record(project: Any, kind: str, folder: Path, summary: str) -> dict[str, Any]:
    record = {
        "id": Path(folder).name,
        "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": relative_path(Path(folder), project.folder),
        "summary": summary,
    }
    project.evaluations = [r for r in project.evaluations if r.get("id") != record["id"]] + [record]
    return record


def record_evaluation(project: Any, evaluation: results.Evaluation, folder: Path) -> dict[str, Any]:
    """Keep a finished (or stopped) evaluation in the project; the caller saves the project."""
    results.write_evaluation(folder, evaluation)
    scored = sum(1 for v in evaluation.variants if not v.error)
    summary = f"{scored} variant(s) on {len(evaluation.examples)} test rows"
    return _record(project, "evaluation", folder, summary)


def record_kfold(project: Any, result: results.KFoldResult, folder: Path) -> dict[str, Any]:
    from core.atomic import write_json

    write_json(Path(folder) / results.KFOLD_FILE, result.to_dict())
    failed = " (stopped by an error)" if result.settings.get("error") else ""
    state = " (cancelled)" if result.cancelled else failed
    return _record(
        project, "kfold", folder, f"{len(result.folds)} of {result.k} folds, {result.method}{state}"
    )


def _latest(project: Any, kind: str) -> dict[str, Any] | None:
    return next((r for r in reversed(project.evaluations) if r.get("kind") == kind), None)


def latest_evaluation(project: Any) -> tuple[results.Evaluation, Path] | None:
    """The newest evaluation whose file is still readable, with its folder."""
    for record in reversed(project.evaluations):
        if record.get("kind") != "evaluation":
            continue
        folder = run_path(project, record)
        try:
            return results.read_evaluation(folder), folder
        except (OSError, ValueError, TypeError):
            continue  # deleted or damaged by hand: an older one still shows
    return None


def latest_kfold(project: Any) -> results.KFoldResult | None:
    import json

    record = _latest(project, "kfold")
    if record is None:
        return None
    try:
        data = json.loads((run_path(project, record) / results.KFOLD_FILE).read_text(encoding="utf-8"))
        return results.KFoldResult.from_dict(data)
    except (OSError, ValueError, TypeError):
        return None


def kfold_params(project: Any, loaded: Any, output: Path | None = None) -> Any:
    """core.evaluate.kfold.KFoldParams for the project's data, method and Evaluate settings."""
    from core.evaluate.kfold import KFoldParams
    from core.finetune.runs import dataset_path, method_settings

    f, e = project.finetune, project.evaluate
    if output is None:
        output = new_kfold(project)[1]
    return KFoldParams(
        loaded=loaded, dataset=dataset_path(f), task=f.task, epochs=f.epochs,
        columns=tuple(sorted(f.columns.items())),
        method=method_settings(f.method), k=e.kfold_k, seed=f.seed, max_steps=e.kfold_max_steps,
        batch_size=f.batch_size, learning_rate=f.learning_rate, max_length=f.max_length,
        validation_ratio=f.validation_ratio, drop_bad_rows=f.drop_bad_rows, output=Path(output),
        max_new_tokens=e.max_new_tokens, eval_batch_size=e.batch_size, max_test_rows=e.max_examples,
        warmup_steps=f.warmup_steps, pack=f.pack, autocast=f.autocast,
        gradient_checkpointing=f.gradient_checkpointing,
    )  # fmt: skip


# -- marks ----------------------------------------------------------------------------------
def mark_key(variant_id: str, row: int) -> str:
    return f"{variant_id}|{row}"


def set_mark(project: Any, variant_id: str, row: int, output: str, mark: str | None) -> None:
    """Mark an output good or bad (None clears it); the caller saves the project."""
    key = mark_key(variant_id, row)
    if mark is None:
        project.evaluate.marks.pop(key, None)
        return
    if mark not in MARKS:
        raise ValueError(f"a mark is one of {MARKS}, not {mark!r}")
    project.evaluate.marks[key] = {"mark": mark, "output": output}


def mark_of(project: Any, variant_id: str, row: int, output: str) -> str | None:
    """The user's mark on this output (None: unmarked, or the output changed since it was marked)."""
    entry = project.evaluate.marks.get(mark_key(variant_id, row))
    if not entry or entry.get("output") != output:
        return None
    return entry.get("mark")
