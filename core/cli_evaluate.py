"""`quanttune evaluate`: the Evaluate step headless — variants side by side, baselines, k-fold, report.

With --project it scores the project's variants (base, quantized, fine-tuned, …) and baselines on
the test split of its dataset, keeps the evaluation in the project as the window does, and can
export the report. Without a project it scores the base model and the baselines on a dataset's
test split (--dataset, --task), kept in --output. --kfold K runs k-fold cross-validation of the
project's fine-tuning method instead. Progress goes to stderr; the table, or with --json every
number, to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import Cancelled, QuantTuneError

EXIT_OK = 0
_SETTING_FLAGS = ("zero_shot", "few_shot", "rag_top_k", "max_examples", "max_new_tokens", "batch_size")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.project import save_project

    project, keep = _project(args)
    for name in _SETTING_FLAGS:
        if getattr(args, name) is not None:
            setattr(project.evaluate, name, getattr(args, name))
    if args.kfold is not None:
        project.evaluate.kfold_k = args.kfold
    if args.kfold_steps is not None:
        project.evaluate.kfold_max_steps = args.kfold_steps
    loaded = _load_model(project, args)
    if args.list:
        return _print_variants(project, loaded, args.json)
    from core.evaluate import runs

    if args.kfold is not None:
        latest = runs.latest_evaluation(project)
        if (args.report or args.csv) and latest is None:  # said before the folds train, not after
            raise QuantTuneError(
                "The report shows an evaluation of the variants, and there is none yet.",
                "Run `quanttune evaluate --project …` first, then --kfold with --report.",
            )
        kfold = _kfold(project, loaded, args)
        evaluation = latest[0] if latest else None
        data, text = kfold.to_dict(), _kfold_text(kfold)
    else:
        evaluation, _folder = _evaluate(project, loaded, args, keep)
        kfold = runs.latest_kfold(project) if keep else None
        data, text = evaluation.to_dict(), _table(evaluation)
    if evaluation is not None:
        _export(args, evaluation, kfold, project)
    if keep:
        save_project(project)
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    return EXIT_OK


def _project(args: argparse.Namespace) -> tuple[Any, bool]:
    """The project (and whether to save it), or an unsaved one over --dataset kept in --output."""
    from core.cli_train import find_project
    from core.finetune.runs import BUNDLED_PREFIX
    from core.project import Project

    if args.project:
        if args.dataset or args.output:
            raise QuantTuneError("--dataset and --output go without --project.", "Give one or the other.")
        return find_project(args.project), True
    if not args.dataset:
        raise QuantTuneError(
            "Nothing to evaluate.", "Give --project NAME, or --dataset FILE and --output DIR."
        )
    if not args.output:
        raise QuantTuneError(
            "No output folder was given.", "Give --output DIR: the evaluation is kept there."
        )
    project = Project(name="evaluate", folder=Path(args.output).expanduser().absolute())
    dataset = args.dataset
    if not dataset.startswith(BUNDLED_PREFIX):
        dataset = str(Path(dataset).expanduser().absolute())
    project.finetune = replace(project.finetune, dataset=dataset, task=args.task or "instruction")
    project.load.model = None
    return project, False


def _load_model(project: Any, args: argparse.Namespace) -> Any:
    from core.cli import _run
    from core.models import loading, sources

    model = args.model or project.load.model or "default"
    ref = sources.ModelRef.from_dict(model) if isinstance(model, dict) else sources.resolve(str(model))
    params = loading.LoadParams(ref, device=args.device or project.load.device or "auto",
                                allow_pickle=project.load.allow_pickle)  # fmt: skip
    return _run(loading.run, params, args)


def _print_variants(project: Any, loaded: Any, as_json: bool) -> int:
    from dataclasses import asdict

    from core.evaluate.variants import list_variants

    found = list_variants(project, loaded)
    if as_json:
        print(json.dumps([asdict(v) for v in found], indent=2))
    else:
        for v in found:
            print(f"{v.id:48} {v.label}" + ("" if v.available else f"   (unavailable: {v.why})"))
    return EXIT_OK


def _evaluate(project: Any, loaded: Any, args: argparse.Namespace, keep: bool):
    from core.cli import _run
    from core.evaluate import job, runs

    ids = tuple(i.strip() for i in (args.variants or "").split(",") if i.strip())
    params = job.evaluate_params(project, loaded, ids)
    try:
        evaluation = _run(job.run, params, args)
    except Cancelled:  # Ctrl-C: the variants scored so far are kept, as the window keeps them
        _keep_scored(project, params.output, keep)
        raise
    runs.record_evaluation(project, evaluation, params.output)
    return evaluation, params.output


def _keep_scored(project: Any, folder: Path, keep: bool) -> None:
    from core.evaluate import results, runs
    from core.project import save_project

    try:
        scored = results.read_evaluation(folder)
    except (OSError, ValueError):
        return  # stopped before the first variant was scored
    if scored.variants:
        runs.record_evaluation(project, scored, folder)
        if keep:
            save_project(project)
        print(f"kept the {len(scored.variants)} variant(s) scored before the stop: {folder}", file=sys.stderr)


def _kfold(project: Any, loaded: Any, args: argparse.Namespace):
    from core.cli import _run
    from core.evaluate import kfold, runs

    params = runs.kfold_params(project, loaded)
    result = _run(kfold.run, params, args)
    runs.record_kfold(project, result, params.output)
    return result


def _export(args: argparse.Namespace, evaluation: Any, kfold: Any, project: Any) -> None:
    """The report as the window exports it (HTML, CSV of numbers and of outputs, JSON), if asked."""
    from core.evaluate import report

    if args.report:
        written = report.export_all(Path(args.report).with_suffix(".html"), evaluation, kfold, project)
        print("report: " + ", ".join(str(p) for p in written), file=sys.stderr)
    if args.csv:
        print(f"numbers: {report.write_csv(Path(args.csv), evaluation, kfold)}", file=sys.stderr)


# -- text output ----------------------------------------------------------------------------
def _table(evaluation: Any) -> str:
    from core.evaluate.metrics import METRICS, format_value
    from core.learn import format_bytes

    heads = [METRICS[k].title for k in evaluation.metrics] + ["size", "tokens/s"]
    width = max([len(v.label) for v in evaluation.variants] + [7])
    lines = [f"{'variant':{width}}  " + "  ".join(f"{h:>10}" for h in heads)]
    for v in evaluation.variants:
        if v.error:
            lines.append(f"{v.label:{width}}  failed: {v.error}")
            continue
        cells = [format_value(k, v.scores.get(k)) for k in evaluation.metrics]
        cells += [format_bytes(v.size_bytes) if v.size_bytes else "—", f"{v.tokens_per_second or 0:.0f}"]
        lines.append(f"{v.label:{width}}  " + "  ".join(f"{c:>10}" for c in cells))
    rows = f"{len(evaluation.examples)} test rows of {evaluation.dataset} ({evaluation.task})"
    lines.append(rows)
    lines += [f"{key}: {why}" for key, why in evaluation.unavailable.items()]
    return "\n".join(lines)


def _kfold_text(result: Any) -> str:
    from core.evaluate.metrics import METRICS, format_value

    lines = [f"{result.k}-fold cross-validation of {result.method} ({result.task})"]
    for key, value in result.summary().items():
        shown = "—" if value is None else f"{format_value(key, value[0])} ± {format_value(key, value[1])}"
        lines.append(f"  {METRICS[key].title if key in METRICS else key}: {shown}")
    if result.cancelled:
        lines.append(f"cancelled after {len(result.folds)} of {result.k} folds")
    if result.settings.get("error"):
        lines.append(f"stopped after {len(result.folds)} of {result.k} folds: {result.settings['error']}")
    return "\n".join(lines)


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score the base, quantized and fine-tuned models and prompting/RAG baselines side by side",
        description="The Evaluate step, headless. With --project: every variant of the project (or those in "
        "--variants; --list shows them) and the baselines on the test split of its dataset, kept in the "
        "project. Without: the base model (--model) and the baselines on a dataset's test split. --kfold K "
        "runs k-fold cross-validation of the project's fine-tuning method instead.",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument("--project", metavar="NAME_OR_FOLDER", help="a project's name or folder")
    source.add_argument("--dataset", help="without a project: a data file, or bundled:NAME")
    tasks = ("instruction", "qa", "summarization", "classification", "causal_lm")
    p.add_argument("--task", choices=tasks, help="without a project: the task (default instruction)")
    p.add_argument("--output", type=Path, help="without a project: the folder the evaluation is kept in")
    p.add_argument("--model", help="'default', a model folder, a .gguf file or a cached repo id")
    p.add_argument("--device", help="auto (GPU if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--list", action="store_true", help="list the variants and baselines, score nothing")
    p.add_argument("--variants", metavar="ID,ID", help="the variant ids to score (default: every one)")
    p.add_argument(
        "--zero-shot", action=argparse.BooleanOptionalAction, default=None, help="zero-shot baseline"
    )
    p.add_argument("--few-shot", type=int, metavar="K", help="few-shot baseline with K examples (0: none)")
    p.add_argument("--rag-top-k", type=int, metavar="K", help="RAG baseline retrieving K documents (0: none)")
    p.add_argument("--max-examples", type=int, metavar="N", help="score the first N test rows (0: all)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer length in tokens")
    p.add_argument("--batch-size", type=int, metavar="N", help="rows generated at once")
    p.add_argument("--kfold", type=int, metavar="K", help="k-fold cross-validation with K folds instead")
    p.add_argument("--kfold-steps", type=int, metavar="N", help="training steps per fold")
    p.add_argument("--report", metavar="FILE.html", help="also write the HTML report there")
    p.add_argument("--csv", metavar="FILE.csv", help="also write every number as CSV there")
    p.add_argument(
        "--json", action="store_true", help="print every number as JSON (progress as JSON on stderr)"
    )
    p.set_defaults(func=cmd_evaluate, json_events=False)
