"""k-fold cross-validation: ``run(KFoldParams, ctx) -> KFoldResult``.

The usable rows (rows with problems left out) are cut into k folds (stratified by label for
classification: ``core.data.splits.kfold_rows``). Each fold in turn is the test part: a training
run (the Train job itself, on an explicit split) learns from the other folds, watching a validation
share of them, and the trained model is scored on the fold with the task's metrics — the same keys
as the Evaluate step's table. The spread of a metric over the folds says how much one split's
figure can be trusted; ``KFoldResult.summary`` gives mean ± standard deviation.

Each fold trains into ``output/fold-N``, removed once the fold is scored (unless ``keep_models``):
k trained models would fill the disk for nothing, their scores are what is kept, in
``output/kfold.json``. A cancel keeps the folds that finished; so does an error in a later fold
(the result then says why it stopped, in ``settings["error"]``). The folds train with the Train
step's recipe (warmup, packing, autocast, gradient checkpointing) and are scored under the same
precision as the Evaluate job, so a fold's figures compare with the Evaluate table's.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import Cancelled, QuantTuneError
from core.evaluate.results import KFOLD_FILE, KFoldResult
from core.finetune import methods
from core.jobs import JobContext

TASKS = ("instruction", "classification", "qa", "summarization", "text", "causal_lm")
TRAIN_SHARE = 0.8  # of a fold's progress bar: training; the rest is scoring
MAX_K = 20  # more folds train more models than a CPU session can wait for, for little gain


@dataclass(frozen=True, kw_only=True)
class KFoldParams:
    loaded: Any = field(compare=False, repr=False)  # core.models.loading.LoadedModel; never changed
    dataset: Path
    task: str  # instruction, classification, qa, summarization, text (causal_lm)
    columns: tuple[tuple[str, str], ...] = ()  # role -> column pairs overriding the detected mapping
    method: methods.MethodSettings = field(default_factory=methods.MethodSettings)
    k: int = 5
    seed: int = 0
    max_steps: int = 30  # training steps per fold; 0: as many as ``epochs`` take
    epochs: int = 1  # passes over the fold's training rows when max_steps is 0
    batch_size: int = 4
    learning_rate: float = 2e-4
    max_length: int = 512
    validation_ratio: float = 0.1  # of each fold's training part: the training loop's validation loss
    drop_bad_rows: bool = False
    # the Train step's recipe (defaults as core.project.FinetuneSettings): each fold trains as a run would
    warmup_steps: int = 0
    pack: bool = True
    autocast: str = "auto"
    gradient_checkpointing: bool = False
    output: Path  # a folder: output/fold-N per fold, output/kfold.json
    keep_models: bool = False  # keep each fold's trained model in output/fold-N
    max_new_tokens: int = 64
    eval_batch_size: int = 8
    max_test_rows: int = 0  # per fold; 0: every test row of the fold

    def validate(self) -> list[str]:
        problems = []
        if self.task not in TASKS:
            problems.append(f"unknown task {self.task!r} (choose {', '.join(TASKS[:-1])})")
        if not 2 <= self.k <= MAX_K:
            problems.append(f"cross-validation needs at least 2 folds (and at most {MAX_K})")
        if self.max_new_tokens < 1 or self.eval_batch_size < 1:
            problems.append("the answer length and the scoring batch size are at least 1")
        if self.max_test_rows < 0:
            problems.append("the test rows per fold cannot be negative (0: all of them)")
        if Path(self.output).exists() and not Path(self.output).is_dir():
            problems.append(f"{self.output} is a file: pick a folder for the cross-validation")
        if self.task in TASKS:  # the training run's own checks (model, data, method, loop settings)
            problems += [
                p for p in train_params(self, Path(self.output), None).validate() if p not in problems
            ]
        return problems


def train_params(params: KFoldParams, output: Path, rows: tuple | None) -> Any:
    """The Train job's params for one fold (``rows``: its train, validation and test rows)."""
    from core.finetune.runs import core_task
    from core.finetune.train import TrainParams

    task = "causal_lm" if params.task == "text" else core_task(params.task)
    return TrainParams(
        loaded=params.loaded, dataset=Path(params.dataset), output=output, task=task, columns=params.columns,
        method=params.method, max_length=params.max_length, validation_ratio=params.validation_ratio,
        test_ratio=0.0, drop_bad_rows=params.drop_bad_rows, seed=params.seed, batch_size=params.batch_size,
        learning_rate=params.learning_rate, max_steps=params.max_steps, epochs=params.epochs, rows=rows,
        warmup_steps=params.warmup_steps, pack=params.pack, autocast=params.autocast,
        gradient_checkpointing=params.gradient_checkpointing,
    )  # fmt: skip


# -- the folds ------------------------------------------------------------------------------------
@dataclass
class FoldData:
    """The file once read: its rows, shape, class names (classification) and each fold's rows."""

    table: Any
    shape: Any
    labels: list[str]
    folds: list[tuple[list[int], list[int]]]  # (training part, test part): row indices into the file


def fold_data(params: KFoldParams) -> FoldData:
    """The usable rows (rows with problems left out, or an error naming them) cut into k folds."""
    from core.data.splits import kfold_rows
    from core.finetune import classify
    from core.finetune.rundata import checked_table

    template = train_params(params, Path(params.output), None)
    table, shape, bad = checked_table(template)
    keep = [i for i in range(len(table)) if i not in bad]
    labels, per_row = [], None
    if params.task == "classification":
        labels = classify.label_names(table, shape, bad)
        column = table.dataset[shape.mapping["label"]]
        per_row = [str(column[i]) for i in keep]
    folds = kfold_rows(len(keep), params.k, params.seed, per_row)
    mapped = [([keep[i] for i in train], [keep[i] for i in test]) for train, test in folds]
    return FoldData(table, shape, labels, mapped)


def fold_rows(params: KFoldParams, data: FoldData, index: int) -> tuple[tuple, tuple, tuple]:
    """(train, validation, test) rows of fold ``index``: validation is a share of the training part
    (stratified for classification), the test part is capped at ``max_test_rows``, picked at random."""
    from core.data.splits import shuffled, split_rows

    part, test = data.folds[index]
    column = data.table.dataset[data.shape.mapping["label"]] if data.labels else None
    labels = [str(column[i]) for i in part] if column is not None else None
    split = split_rows(len(part), params.seed + index, params.validation_ratio, 0.0, labels)
    if 0 < params.max_test_rows < len(test):
        order = shuffled(len(test), params.seed, salt=index + 1)
        test = sorted(test[i] for i in order[: params.max_test_rows])
    return tuple(part[i] for i in split.train), tuple(part[i] for i in split.validation), tuple(test)


# -- progress -------------------------------------------------------------------------------------
class FoldContext(JobContext):
    """What a fold's training run or scoring reports, as part of the whole job: progress in folds
    (2.4 of 5) with the time left for all of them, stages as messages under the job's stage,
    metrics tagged with the fold; cancel is the job's own."""

    def __init__(self, outer: JobContext, k: int) -> None:
        super().__init__(lambda event: outer.emit(event.kind, **event.data))
        self._outer, self._k = outer, k
        self._started = time.monotonic()
        self._index, self._span, self._label = 0, (0.0, 1.0), ""
        self._share = 0.0  # of the current span: a stage message does not move the bar back
        self._logged: set[str] = set()

    def enter(self, index: int, start: float, end: float, label: str) -> None:
        """Fold ``index`` (0-based) from ``start`` to ``end`` of its own bar, doing ``label``."""
        self._index, self._span, self._label, self._share = index, (start, end), label, 0.0
        self._outer.stage(f"Fold {index + 1} of {self._k}: {label}")
        self.progress(0, 1)

    def cancel(self) -> None:
        self._outer.cancel()

    @property
    def cancelled(self) -> bool:
        return self._outer.cancelled

    def check_cancelled(self) -> None:
        self._outer.check_cancelled()

    def stage(self, message: str) -> None:
        self.progress(self._share, 1.0, message)

    def progress(self, done: float, total: float, message: str = "") -> None:
        self.check_cancelled()
        start, end = self._span
        share = min(1.0, done / total) if total > 0 else self._share
        self._share = share
        folds = self._index + start + (end - start) * share
        elapsed = time.monotonic() - self._started
        eta = elapsed * (self._k - folds) / folds if folds > 0 else None
        text = f"Fold {self._index + 1} of {self._k}: {message or self._label}"
        self._outer.emit("progress", done=folds, total=self._k, message=text, eta_s=eta)

    def metric(self, name: str, value: float, step: int | None = None) -> None:
        self._outer.emit("metric", name=name, value=value, step=step, fold=self._index)

    def log(self, message: str) -> None:
        """Each message once per job: every fold would repeat, say, why a metric has no value."""
        if message not in self._logged:
            self._logged.add(message)
            self._outer.log(message)


# -- run ------------------------------------------------------------------------------------------
def run(params: KFoldParams, ctx: JobContext) -> KFoldResult:
    from core.evaluate import metrics

    ctx.stage(f"Cutting {Path(params.dataset).name} into {params.k} folds")
    data = fold_data(params)
    result = KFoldResult(k=params.k, task=params.task, method=params.method.method,
                         metrics=metric_keys(params.task, metrics), settings=settings_of(params))  # fmt: skip
    fold_ctx = FoldContext(ctx, params.k)
    for index in range(params.k):
        try:
            ctx.check_cancelled()
            scores, sizes = run_fold(params, data, index, fold_ctx)
        except Cancelled:
            if not result.folds:
                raise
            result.cancelled = True
            break
        except (QuantTuneError, RuntimeError, OSError) as exc:  # the finished folds are still worth keeping
            if not result.folds:
                raise
            result.settings["error"] = fold_error(index, params.k, exc)
            ctx.log(result.settings["error"])
            break
        result.folds.append(scores)
        result.fold_sizes.append(sizes)
        ctx.emit("fold", index=index, scores=dict(scores), sizes=sizes)
    from core.atomic import write_json

    write_json(Path(params.output) / KFOLD_FILE, result.to_dict())
    return result


def fold_error(index: int, k: int, exc: BaseException) -> str:
    """What stopped the run at fold ``index`` (0-based), as the result records it."""
    why = str(exc) if isinstance(exc, QuantTuneError) else f"{type(exc).__name__}: {exc}"
    return f"Fold {index + 1} of {k} failed: {why}"


def run_fold(
    params: KFoldParams, data: FoldData, index: int, ctx: FoldContext
) -> tuple[dict, tuple[int, int]]:
    """Train fold ``index`` on the other folds, score it on its own; its scores and (train, test) sizes.
    Its folder goes once it is scored (kept with ``keep_models``), and always when it did not finish."""
    from core.finetune import train
    from core.quant.runs import remove_folder

    folder = Path(params.output) / f"fold-{index + 1}"
    remove_folder(folder)  # a fold an interrupted run left: its checkpoints would stop the training run
    rows = fold_rows(params, data, index)
    finished = False
    try:
        ctx.enter(index, 0.0, TRAIN_SHARE, "training")
        report = train.run(train_params(params, folder, rows), ctx)
        model, report.model = report.model, None
        ctx.enter(index, TRAIN_SHARE, 1.0, "scoring")
        scores = score_fold(params, data, model, list(rows[2]), ctx)
        finished = True
    finally:
        model = report = None
        gc.collect()  # the fold's model goes before the next one is built
        if not (finished and params.keep_models):
            remove_folder(folder)
    return scores, (len(rows[0]) + len(rows[1]), len(rows[2]))


def settings_of(params: KFoldParams) -> dict[str, Any]:
    """The params as plain data (what the result records), without the model."""
    plain = {name: getattr(params, name) for name in params.__dataclass_fields__ if name != "loaded"}
    plain.update(dataset=str(params.dataset), output=str(params.output), method=asdict(params.method),
                 columns=[list(pair) for pair in params.columns])  # fmt: skip
    plain["method"]["target_modules"] = list(plain["method"]["target_modules"])
    return plain


# -- scoring --------------------------------------------------------------------------------------
def metric_task(task: str) -> str:
    """The metrics' name of a task (plain text is "text" there)."""
    return "text" if task == "causal_lm" else task


def metric_keys(task: str, metrics: Any) -> list[str]:
    """The metric keys of a task's folds, in the table's order (``metrics``: core.evaluate.metrics)."""
    return list(metrics.TASK_METRICS[metric_task(task)])


def score_fold(params: KFoldParams, data: FoldData, model: Any, rows: list[int], ctx: FoldContext) -> dict:
    """The task's metrics of ``model`` on the fold's test ``rows`` (NaN or None where one has no value)."""
    from core.evaluate import generation
    from core.evaluate.scoring import AUTOCAST

    with generation.precision(model, AUTOCAST):  # as the Evaluate job scores: the figures compare
        return _score(params, data, model, rows, ctx)


def _score(params: KFoldParams, data: FoldData, model: Any, rows: list[int], ctx: FoldContext) -> dict:
    from core.evaluate import generation, metrics

    tokenizer = params.loaded.tokenizer
    turns, references = test_items(data, params.task, rows)
    if params.task == "classification":
        texts = [t[-1]["content"] for t in turns]
        predictions = generation.classifier_predictions(model, tokenizer, texts, params.eval_batch_size, ctx)
        scores, _confusion = metrics.classification_scores(references, predictions, data.labels)
        return _plain(scores)
    generated = generation.generate_batch(model, tokenizer, turns, params.max_new_tokens,
                                          params.eval_batch_size, ctx)  # fmt: skip
    outputs = [text.strip() for text in generated.texts]
    task = metric_task(params.task)
    scores, _per_example, unavailable, _extras = metrics.score_outputs(task, references, outputs, [])
    for key, why in unavailable.items():
        ctx.log(f"{key} has no value: {why}")
    if "perplexity" in metrics.TASK_METRICS[task]:
        ctx.progress(0, 0, "perplexity of the reference answers")
        scores["perplexity"], _tokens = generation.answer_perplexity(
            model, tokenizer, turns, references, params.eval_batch_size, ctx
        )
    return _plain(scores)


def test_items(data: FoldData, task: str, rows: list[int]) -> tuple[list[list[dict]], list[str]]:
    """Each test row's prompt as chat turns and its reference, asked as the Evaluate step asks them."""
    from core.evaluate.testdata import items

    task = "causal_lm" if task == "text" else task
    pairs = [item for _row, item in items(data.table, data.shape, task, rows)]
    return [turns for turns, _ in pairs], [reference for _, reference in pairs]


def _plain(scores: dict) -> dict[str, float | None]:
    """Plain floats; None for a metric with no value (NaN, or unavailable)."""
    out = {}
    for key, value in scores.items():
        number = None if value is None else float(value)
        out[key] = number if number is not None and math.isfinite(number) else None
    return out
