"""The Evaluate job: every chosen variant scored on the same test rows, side by side.

Recipe: read the test split → for each variant: open it, ask it every test row, score the outputs
with the task's metrics, measure its costs, free it → save. Each finished variant is written to
the evaluation's folder at once (a crash keeps what was scored) and reported as a "variant" event,
so the window fills the table as it goes. A variant that fails says why in its row; the others
are still scored.
"""

from __future__ import annotations

import gc
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import Cancelled, QuantTuneError
from core.evaluate import results, scoring, variants
from core.evaluate.generation import precision
from core.evaluate.metrics import TASK_METRICS
from core.evaluate.testdata import load_test_data

MAX_EXAMPLES = 5000
MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class EvaluateParams:
    loaded: Any = field(compare=False, repr=False)  # core.models.loading.LoadedModel: the base model
    project: Any = field(compare=False, repr=False)  # core.project.Project
    settings: Any = None  # core.project.EvaluateSettings (a copy: the window may edit the project's)
    output: Path = Path()
    variant_ids: tuple[str, ...] = ()  # the ids to score (core.evaluate.variants)
    evaluation_id: str = ""

    def validate(self) -> list[str]:
        problems = []
        s = self.settings
        if self.loaded is None or getattr(self.loaded, "model", None) is None:
            problems.append("load a model first (the Load model step)")
        if s is None:
            return [*problems, "no Evaluate settings"]
        if not 0 <= s.max_examples <= MAX_EXAMPLES:
            problems.append(f"the number of test rows to score is 0 (all) to {MAX_EXAMPLES}")
        if not 1 <= s.max_new_tokens <= MAX_NEW_TOKENS:
            problems.append(f"the answer length is 1 to {MAX_NEW_TOKENS} tokens")
        if not 1 <= s.batch_size <= 64:
            problems.append("the batch size is 1 to 64")
        if not 0 <= s.few_shot <= 16:
            problems.append("few-shot takes 0 to 16 examples")
        if not 0 <= s.rag_top_k <= 8:
            problems.append("RAG retrieves 0 to 8 documents")
        if self.project is not None and (unknown := unknown_ids(self.project, self.loaded, self.variant_ids)):
            problems.append(
                f"there is no variant {', '.join(unknown)} (`quanttune evaluate --list` names them)"
            )
        elif self.project is not None and self.loaded is not None and not chosen(self):
            problems.append("no variant is chosen (or none of the chosen ones can be scored)")
        return problems


def chosen(params: EvaluateParams) -> list[variants.VariantInfo]:
    """The variants to score (the given ids that can be scored), in the table's order."""
    wanted = set(params.variant_ids)
    found = variants.list_variants(params.project, params.loaded)
    return [v for v in found if v.available and v.id in wanted]


def default_variant_ids(project: Any, loaded: Any) -> tuple[str, ...]:
    """What the window and the CLI score: every model the user left checked, then the baselines the
    settings ask for, each only where it can be scored."""
    s = project.evaluate
    asked = {"zero-shot": s.zero_shot, "few-shot": s.few_shot > 0, "rag": s.rag_top_k > 0}
    found = [v for v in variants.list_variants(project, loaded) if v.available]
    models = [v.id for v in found if v.kind not in variants.BASELINES and v.id not in s.skipped]
    return (*models, *(v.id for v in found if asked.get(v.kind)))


def unknown_ids(project: Any, loaded: Any, ids: tuple[str, ...]) -> list[str]:
    known = {v.id for v in variants.list_variants(project, loaded)}
    return [i for i in ids if i not in known]


def evaluate_params(project: Any, loaded: Any, variant_ids: tuple[str, ...] = ()) -> EvaluateParams:
    """Parameters for the project's settings, with a fresh folder for the result. The job gets a copy
    of the project taken now: the window may go on editing the project while it runs."""
    import copy

    from core.evaluate.runs import new_evaluation

    evaluation_id, folder = new_evaluation(project)
    settings = replace(project.evaluate, marks={})
    ids = tuple(variant_ids) or default_variant_ids(project, loaded)
    return EvaluateParams(loaded, copy.deepcopy(project), settings, folder, ids, evaluation_id)


def run(params: EvaluateParams, ctx: Any) -> results.Evaluation:
    ctx.stage("Reading the test split")
    s = params.settings
    data = load_test_data(params.project.finetune, params.loaded, s.max_examples)
    task = scoring.metric_task(data.task)
    evaluation = results.Evaluation(
        id=params.evaluation_id or Path(params.output).name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        task=data.task, dataset=_dataset_name(params.project.finetune), metrics=metrics_of(task),
        examples=data.examples, labels=data.labels, settings=_plain(s, params.loaded.model),
    )  # fmt: skip
    if "meteor" in evaluation.metrics:
        from core.evaluate.wordnet import find_wordnet, why_no_wordnet

        if find_wordnet() is None:
            evaluation.unavailable["meteor"] = why_no_wordnet()
    Path(params.output).mkdir(parents=True, exist_ok=True)
    todo = chosen(params)
    for number, info in enumerate(todo, start=1):
        ctx.stage(f"Scoring {number} of {len(todo)}: {info.label}")
        evaluation.variants.append(_score_one(info, params, data, ctx))
        results.write_evaluation(params.output, evaluation)
        ctx.emit("variant", result=evaluation.variants[-1])
    return evaluation


def metrics_of(task: str) -> list[str]:
    """The task's metrics, and the held-out text's perplexity for models that generate."""
    keys = list(TASK_METRICS[task])
    return keys if task == "classification" else [*keys, "text_perplexity"]


def _score_one(info: Any, params: EvaluateParams, data: Any, ctx: Any) -> results.VariantResult:
    opened = None
    try:
        opened = variants.open_variant(info, params.project, params.loaded, ctx)
        with precision(opened.model, scoring.AUTOCAST):  # entered here: autocast is per thread
            result = scoring.score(info, opened, data, params.settings, ctx)
            if data.task != "classification" and info.kind not in variants.BASELINES:  # the model itself
                _add_text_perplexity(result, opened, params.project, ctx)
        return result
    except Cancelled:
        raise
    except QuantTuneError as exc:
        return results.VariantResult(info.id, info.label, info.kind, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - shown in the variant's row; the other variants are still scored
        return results.VariantResult(info.id, info.label, info.kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        if opened is not None and opened.model is not params.loaded.model:
            del opened
            gc.collect()


def _add_text_perplexity(result: results.VariantResult, opened: Any, project: Any, ctx: Any) -> None:
    """The held-out text's perplexity; a text that cannot be read leaves the column empty, with why."""
    try:
        result.scores["text_perplexity"] = scoring.text_perplexity(opened, _held_out(project), ctx)
    except Cancelled:
        raise
    except QuantTuneError as exc:
        result.notes.append(f"Perplexity (text) has no value: {exc}")


def _dataset_name(finetune: Any) -> str:
    from core.finetune.runs import BUNDLED_PREFIX, DEFAULT_DATASET

    return finetune.dataset or BUNDLED_PREFIX + DEFAULT_DATASET  # none chosen: the Train step's default


def _held_out(project: Any) -> str:
    from core.quant.plan import read_text

    return read_text(project.quantize.eval_file, "heldout")


def _plain(settings: Any, model: Any) -> dict[str, Any]:
    from core.finetune.compute import autocast_dtype

    data = asdict(settings)
    data.pop("marks", None)
    data["compute"] = "bf16 autocast" if autocast_dtype(scoring.AUTOCAST, model) is not None else "fp32"
    return data
