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
    variant_ids: tuple[str, ...] = ()  # empty: every available variant
    evaluation_id: str = ""

    def validate(self) -> list[str]:
        problems = []
        s = self.settings
        if self.loaded is None or getattr(self.loaded, "model", None) is None:
            problems.append("load a model first (the Load model step)")
        if self.project is not None and not self.project.finetune.dataset:
            problems.append(
                "choose a dataset in the Fine-tuning method step: its test split is what is scored"
            )
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
        if self.project is not None and self.loaded is not None and not chosen(self):
            problems.append("no variant is chosen (or none of the chosen ones can be scored)")
        return problems


def chosen(params: EvaluateParams) -> list[variants.VariantInfo]:
    """The variants to score: the chosen ids (or every one) that can be scored, in the table's order."""
    every = variants.list_variants(params.project, params.loaded)
    wanted = set(params.variant_ids)
    return [v for v in every if v.available and (not wanted or v.id in wanted)]


def evaluate_params(project: Any, loaded: Any, variant_ids: tuple[str, ...] = ()) -> EvaluateParams:
    """Parameters for the project's settings, with a fresh folder for the result."""
    from core.evaluate.runs import new_evaluation

    evaluation_id, folder = new_evaluation(project)
    settings = replace(project.evaluate, marks={})
    ids = tuple(variant_ids) or tuple(project.evaluate.variants)
    return EvaluateParams(loaded, project, settings, folder, ids, evaluation_id)


def run(params: EvaluateParams, ctx: Any) -> results.Evaluation:
    ctx.stage("Reading the test split")
    s = params.settings
    data = load_test_data(params.project.finetune, params.loaded, s.max_examples)
    task = scoring.metric_task(data.task)
    evaluation = results.Evaluation(
        id=params.evaluation_id or Path(params.output).name,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        task=data.task, dataset=params.project.finetune.dataset, metrics=_metrics(task),
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


def _metrics(task: str) -> list[str]:
    """The task's metrics, and the held-out text's perplexity for models that generate."""
    keys = list(TASK_METRICS[task])
    return keys if task == "classification" else [*keys, "text_perplexity"]


def _score_one(
    info: variants.VariantInfo, params: EvaluateParams, data: Any, ctx: Any
) -> results.VariantResult:
    opened = None
    try:
        opened = variants.open_variant(info, params.project, params.loaded, ctx)
        with precision(opened.model, scoring.AUTOCAST):  # entered here: autocast is per thread
            result = scoring.score(info, opened, data, params.settings, ctx)
        if data.task != "classification" and info.kind not in variants.BASELINES:  # the model, not a prompt
            result.scores["text_perplexity"] = scoring.text_perplexity(opened, _held_out(params.project), ctx)
        return result
    except Cancelled:
        raise
    except QuantTuneError as exc:
        return results.VariantResult(info.id, info.label, info.kind, error=f"{exc.message} {exc.fix}".strip())
    except (RuntimeError, ValueError, OSError) as exc:  # one variant's failure must not cost the others
        return results.VariantResult(info.id, info.label, info.kind, error=f"{type(exc).__name__}: {exc}")
    finally:
        if opened is not None and opened.model is not params.loaded.model:
            del opened
            gc.collect()


def _held_out(project: Any) -> str:
    from core.quant.plan import read_text

    return read_text(project.quantize.eval_file, "heldout")


def _plain(settings: Any, model: Any) -> dict[str, Any]:
    from core.finetune.compute import autocast_dtype

    data = asdict(settings)
    data.pop("marks", None)
    data["compute"] = "bf16 autocast" if autocast_dtype(scoring.AUTOCAST, model) is not None else "fp32"
    return data
