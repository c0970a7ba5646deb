"""The Train step: ``run(params, ctx) -> TrainReport``, a plain PyTorch loop read top to bottom.

setup (encode and split the data: ``rundata``; copy the model, apply the method) → loop (AdamW over
the trainable parameters, linear warmup then linear decay, clipping, evaluation, checkpoints, early
stopping; the loss as ``compute`` takes it) → save (``saving``: the adapter or the trained tensors in
``output/final``; with ``save_merged`` also the merged model in ``output/final/merged``, loadable with
transformers alone).

A hand-written loop rather than transformers' Trainer: resuming must reproduce a straight run
bit for bit (data order, RNG, optimizer), checkpoints must hold only the trainable tensors in
safetensors, and every step reports to ``ctx`` — each simple here, each a fight with Trainer.
Checkpoints live in ``output/checkpoints/step-N``; each is written whole or not at all.
torch is imported on first use: the window builds ``TrainParams`` on the GUI thread.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.errors import Cancelled, QuantTuneError
from core.finetune import classify, compute, methods, saving
from core.finetune.batches import Example, collate, pack, pad_id_of
from core.finetune.checkpoints import (
    STATE,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints_after,
    save_checkpoint,
)
from core.finetune.rundata import data_fingerprint, epoch_order, load_examples, rows_problems
from core.finetune.runlog import MetricsLog
from core.jobs import JobContext

TASKS = ("instruction", "causal_lm", "classification")
AUTOCAST = ("off", "bf16", "auto")


@dataclass(frozen=True)
class TrainParams:
    loaded: Any  # core.models.loading.LoadedModel; a copy is trained, never this one
    dataset: Path
    output: Path
    task: str = "instruction"
    columns: tuple[tuple[str, str], ...] = ()  # role -> column pairs overriding the detected mapping
    method: methods.MethodSettings = field(default_factory=methods.MethodSettings)
    max_length: int = 512
    validation_ratio: float = 0.1
    test_ratio: float = 0.0  # held out for the Evaluate step, never trained on
    drop_bad_rows: bool = False  # leave rows with problems out instead of refusing to start
    seed: int = 0
    batch_size: int = 4
    learning_rate: float = 2e-4
    epochs: int = 1
    max_steps: int = 0  # 0: as many as the epochs take
    warmup_steps: int = 0
    max_grad_norm: float = 1.0  # 0: no clipping
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 0  # 0: checkpoint only at the end
    early_stopping_patience: int = 0  # evaluations without a better validation loss; 0: off
    resume_from: Path | None = None
    save_merged: bool = False  # also final/merged: the model with the adapter folded in (transformers alone)
    pack: bool = False  # each step's examples end to end in one row: no padding (see batches.pack)
    autocast: str = "off"  # "off", "bf16", or "auto": bf16 where the hardware multiplies it natively
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    labels: tuple[str, ...] = ()  # classification: the classes; () = every label in the file
    # An explicit split: (train, validation, test) row indices into the file (k-fold cross-validation);
    # the shares above are then ignored. Rows with problems are still left out.
    rows: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    def validate(self) -> list[str]:
        problems = list(self.method.validate())
        if self.loaded is None or getattr(self.loaded, "model", None) is None:
            problems.append("load a model first")
        if not Path(self.dataset).is_file():
            problems.append(f"there is no dataset file at {self.dataset}")
        if self.task not in TASKS:
            problems.append(f"unknown task {self.task!r} (choose {', '.join(TASKS)})")
        if self.method.method == "feature" and self.task != "classification":
            problems.append("feature extraction trains a classification head: choose the classification task")
        if self.labels and len(set(self.labels)) < 2:
            problems.append("a classifier needs at least two labels")
        if self.save_merged and (why := saving.merge_problem(self.method)):
            problems.append(why + ": save the adapter alone (turn off saving a merged model)")
        if self.max_length < 8:
            problems.append("the maximum length is at least 8 tokens")
        if self.autocast not in AUTOCAST:
            problems.append(f"unknown autocast {self.autocast!r} (choose {', '.join(AUTOCAST)})")
        if self.rows is not None:
            problems += rows_problems(self.rows)
        elif not (0.0 <= self.validation_ratio < 1.0 and 0.0 <= self.test_ratio < 1.0):
            problems.append("the validation and test shares lie in [0, 1)")
        elif self.validation_ratio + self.test_ratio >= 0.9:
            problems.append("validation and test together leave under 10% to train on: lower them")
        if self.batch_size < 1:
            problems.append("the batch size is at least 1")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            problems.append("the learning rate must be above 0 (e.g. 2e-4)")
        if self.epochs < 1 and self.max_steps < 1:
            problems.append("train at least one epoch or one step")
        if min(self.max_steps, self.warmup_steps, self.eval_every, self.save_every) < 0:
            problems.append("step counts cannot be negative")
        if self.max_grad_norm < 0 or self.early_stopping_patience < 0:
            problems.append("gradient clipping and patience cannot be negative (0 turns them off)")
        watched = self.rows[1] if self.rows is not None and len(self.rows) == 3 else self.validation_ratio
        if self.early_stopping_patience and not watched:
            problems.append("early stopping needs a validation share above 0")
        if self.resume_from is not None and not (Path(self.resume_from) / STATE).is_file():
            problems.append(f"{self.resume_from} is not a checkpoint folder")
        if self.resume_from is None and list_checkpoints(self.output):
            problems.append(f"{self.output} holds another run's checkpoints: resume or pick a new folder")
        return problems


@dataclass(frozen=True)
class Checkpoint:
    step: int
    loss: float
    time: float
    path: Path


@dataclass
class TrainReport:
    steps: int
    final_train_loss: float
    best_validation_loss: float | None
    losses: list[float]
    trainable_parameters: int
    total_parameters: int
    seconds: float
    tokens_per_second: float
    checkpoints: list[Checkpoint]
    output: Path
    truncated_rows: int = 0
    stopped_early: bool = False
    qat: dict | None = None  # QAT: perplexity of the exported model, plain RTN and the base (qat.finish)
    model: Any = field(default=None, repr=False, compare=False)  # the trained model, in memory

    def to_dict(self) -> dict:
        d = asdict(replace(self, model=None))
        d.pop("model")
        d["final_train_loss"] = _finite_or_none(self.final_train_loss)
        d["losses"] = [_finite_or_none(v) for v in self.losses]
        d["output"] = str(self.output)
        d["checkpoints"] = [{**asdict(c), "path": str(c.path)} for c in self.checkpoints]
        return d


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# -- setup ----------------------------------------------------------------------------------------
def _schedule(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


@dataclass
class RunState:
    """What the loop carries: the model, its optimizer and the progress to checkpoint."""

    model: Any
    optimizer: Any
    scheduler: Any
    train: list[Example]
    val: list[Example]
    total_steps: int
    per_epoch: int
    step: int = 0
    losses: list[float] = field(default_factory=list)
    best_val: float | None = None
    bad_evals: int = 0
    evaluated: int = 0  # the last step whose validation finished (a stop may land mid-validation)
    tokens: int = 0
    seconds: float = 0.0
    truncated: int = 0
    fingerprint: str = ""  # of the training examples: a resume must see the same data
    saved_at: int = -1  # the step of the last checkpoint this run wrote
    log: MetricsLog | None = None
    packed: bool = False  # TrainParams.pack, where the method and task allow it
    autocast: Any = None  # the torch dtype forward passes autocast to; None: full precision

    def state(self, seed: int) -> dict:
        epoch = self.step // self.per_epoch
        return {"step": self.step, "epoch": epoch, "loss": self.losses[-1] if self.losses else float("nan"),
                "losses": self.losses, "best_val": self.best_val, "bad_evals": self.bad_evals,
                "evaluated": self.evaluated, "tokens": self.tokens, "seconds": self.seconds,
                "data": self.fingerprint, "order": epoch_order(len(self.train), seed, epoch)}  # fmt: skip


def prepare(params: TrainParams, ctx: JobContext) -> RunState:
    """The run at its first step (or at ``resume_from``'s): the data encoded and split (the split
    written to the output folder), the method applied to a copy of the model, the optimizer."""
    import torch

    ctx.stage("Preparing the data")
    tokenizer = params.loaded.tokenizer
    train, val, truncated, labels = load_examples(params, tokenizer)
    ctx.stage("Preparing the model")
    if labels:  # classification: a new head on a copy of the base
        base = classify.build_classifier(params.loaded.model, labels, pad_id_of(tokenizer), params.seed)
    else:  # QLoRA quantizes the loaded model into a new one: a float copy would only take memory
        own = methods.METHODS[params.method.method].builds_own_model
        base = params.loaded.model if own else copy.deepcopy(params.loaded.model)
    torch.manual_seed(params.seed)  # the new weights (LoRA's A, a head) start the same in every run
    model = methods.apply(base, params.method)
    model.train()
    if params.gradient_checkpointing:
        # non-reentrant: correct with frozen inputs (LoRA, prompts) without forcing input gradients
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # under peft's wrapper
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    trainables = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainables, lr=params.learning_rate, weight_decay=0.0)
    per_epoch = math.ceil(len(train) / params.batch_size)
    total = params.max_steps or per_epoch * params.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(params.warmup_steps, total))
    run = RunState(model, optimizer, scheduler, train, val, total, per_epoch, truncated=truncated,
                   fingerprint=data_fingerprint(train))  # fmt: skip
    run.packed, run.autocast = compute.can_pack(params, model), compute.autocast_dtype(params.autocast, model)
    if params.resume_from is not None:
        _resume(run, params)
    return run


def _resume(run: RunState, params: TrainParams) -> None:
    state = load_checkpoint(Path(params.resume_from), run.model, run.optimizer, run.scheduler)
    if state["data"] != run.fingerprint or state["order"] != epoch_order(
        len(run.train), params.seed, state["epoch"]
    ):
        raise QuantTuneError(
            "The checkpoint was trained on other data, another validation share or another seed.",
            "Resume with the same dataset and settings, or start afresh.",
        )
    if state.get("batch_size", params.batch_size) != params.batch_size:
        raise QuantTuneError(
            "The checkpoint was trained with another batch size: its steps would skip or repeat rows.",
            "Resume with the batch size the run started with, or start afresh.",
        )
    # This run's learning rate on the same schedule (a diverged run may resume lower): LambdaLR
    # computes base rate × factor(step), so for an unchanged rate this is bit for bit the old one.
    factor, lr = _schedule(params.warmup_steps, run.total_steps), params.learning_rate
    run.scheduler.base_lrs = [lr for _ in run.optimizer.param_groups]
    for group in run.optimizer.param_groups:
        group["initial_lr"], group["lr"] = lr, lr * factor(run.scheduler.last_epoch)
    run.scheduler._last_lr = [group["lr"] for group in run.optimizer.param_groups]
    run.step, run.losses, run.best_val = state["step"], list(state["losses"]), state["best_val"]
    run.bad_evals, run.tokens, run.seconds = state["bad_evals"], state["tokens"], state["seconds"]
    run.evaluated = state.get("evaluated", run.step)


# -- the loop -------------------------------------------------------------------------------------
def step_batch(run: RunState, params: TrainParams, pad_id: int) -> dict:
    """The batch of the run's next step: its rows in the epoch's order, packed or padded, on the device."""
    epoch, index = divmod(run.step, run.per_epoch)
    order = epoch_order(len(run.train), params.seed, epoch)
    rows = order[index * params.batch_size : (index + 1) * params.batch_size]
    examples = [run.train[i] for i in rows]
    if run.packed:
        return compute.on_device(pack(examples, pad_id), run.model)
    pad = classify.collate if params.task == "classification" else collate
    return compute.on_device(pad(examples, pad_id), run.model)


def _train_step(run: RunState, params: TrainParams, batch: dict) -> tuple[float, float, float]:
    import torch

    step = run.step + 1
    loss = compute.batch_loss(run.model, batch, run.autocast)
    if not torch.isfinite(loss):
        raise _diverged(step, f"the loss became {loss.item()}", params)
    loss.backward()
    trainables = [p for p in run.model.parameters() if p.requires_grad]
    clip = params.max_grad_norm if params.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(trainables, clip)
    if not torch.isfinite(grad_norm):
        raise _diverged(step, "the gradients became infinite", params)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad_norm.item(), lr


def _diverged(step: int, what: str, params: TrainParams) -> QuantTuneError:
    return QuantTuneError(
        f"Training diverged at step {step}: {what} (learning rate {params.learning_rate:g}).",
        "Lower the learning rate (try a tenth) and keep gradient clipping on, then start again (or resume "
        "from an earlier checkpoint: those saved before this step are intact).",
    )


def _checkpoint(run: RunState, params: TrainParams) -> None:
    folder = Path(params.output) / "checkpoints" / f"step-{run.step}"
    save_checkpoint(
        folder,
        run.model,
        run.optimizer,
        run.scheduler,
        {**run.state(params.seed), "batch_size": params.batch_size},
    )
    run.saved_at = run.step


def _evaluate_and_stop(run: RunState, params: TrainParams, ctx: JobContext, pad_id: int) -> bool:
    """Evaluate when due (and not done yet for this step); True when early stopping says to stop."""
    due = (params.eval_every and run.step % params.eval_every == 0) or run.step == run.total_steps
    if not run.val or not due or run.evaluated == run.step:
        return False
    if params.task == "classification":
        val_loss, accuracy = classify.evaluate(run.model, run.val, params.batch_size, ctx)
        _report(run, ctx, {"val_loss": val_loss, "val_accuracy": accuracy})
    else:
        val_loss = compute.evaluate(run.model, run.val, params.batch_size, pad_id, ctx)
        _report(run, ctx, {"val_loss": val_loss})
    run.evaluated = run.step
    if run.best_val is None or val_loss < run.best_val:
        run.best_val, run.bad_evals = val_loss, 0
        return False
    run.bad_evals += 1
    return 0 < params.early_stopping_patience <= run.bad_evals


def _loop(run: RunState, params: TrainParams, ctx: JobContext) -> bool:
    """Train until the last step (or early stop: returns True); on cancel checkpoint, then raise."""
    pad_id = pad_id_of(params.loaded.tokenizer)
    ctx.stage("Training")
    if run.step and _evaluate_and_stop(run, params, ctx, pad_id):  # a validation a stop cut short
        return True
    while run.step < run.total_steps:
        try:  # a cancel arrives between steps (or during evaluation), so run.step is always complete
            ctx.check_cancelled()
            _one_step(run, params, ctx, pad_id)
            stop = _evaluate_and_stop(run, params, ctx, pad_id)
            if stop or (params.save_every and run.step % params.save_every == 0):
                _checkpoint(run, params)
            ctx.progress(run.step, run.total_steps, f"Step {run.step} of {run.total_steps}")
        except Cancelled:
            _checkpoint(run, params)
            raise
        if stop:
            return True
    return False


def _report(run: RunState, ctx: JobContext, values: dict[str, float]) -> None:
    """Each metric to the window (or CLI) and, as one line for this step, to the run's log."""
    for name, value in values.items():
        ctx.metric(name, value, run.step)
    if run.log is not None:
        run.log.write(run.step, values)


def _one_step(run: RunState, params: TrainParams, ctx: JobContext, pad_id: int) -> None:
    import psutil  # the process's memory after each step, for the plot and the log

    batch = step_batch(run, params, pad_id)
    started = time.perf_counter()
    loss, grad_norm, lr = _train_step(run, params, batch)
    elapsed = time.perf_counter() - started
    # real tokens: padding is not work done (a packed batch counts its own: it has no mask)
    tokens = int(batch["real_tokens"] if "real_tokens" in batch else batch["attention_mask"].sum())
    run.step, run.tokens, run.seconds = run.step + 1, run.tokens + tokens, run.seconds + elapsed
    run.losses.append(loss)
    values = {"loss": loss, "learning_rate": lr, "grad_norm": grad_norm,
              "tokens_per_second": tokens / max(elapsed, 1e-9), "seconds": run.seconds,
              "memory_mb": psutil.Process().memory_info().rss / 1e6}  # fmt: skip
    method_metrics = methods.METHODS[params.method.method].metrics
    _report(run, ctx, {**values, **(method_metrics(run.model) if method_metrics else {})})


# -- run ------------------------------------------------------------------------------------------
def run(params: TrainParams, ctx: JobContext) -> TrainReport:
    started = time.monotonic()
    run_state = prepare(params, ctx)
    if params.resume_from is not None:  # a later history (a resume from an earlier checkpoint) is over
        prune_checkpoints_after(Path(params.output), run_state.step)
    run_state.log = MetricsLog(params.output, keep_until=run_state.step)
    try:
        stopped_early = _loop(run_state, params, ctx)
    finally:
        run_state.log.close()
    ctx.stage("Saving")
    if run_state.saved_at != run_state.step:
        _checkpoint(run_state, params)
    saving.save_final(run_state.model, params.method, Path(params.output) / "final",
                      merged=params.save_merged, tokenizer=params.loaded.tokenizer)  # fmt: skip
    qat_result = None
    if params.method.method == "qat":  # the real integer model with the learned S and Z, against PTQ
        from core.finetune import qat

        qat_result = qat.finish(run_state.model, params, ctx).to_dict()
    counts = methods.trainable(run_state.model)
    return TrainReport(
        steps=run_state.step,
        final_train_loss=run_state.losses[-1] if run_state.losses else float("nan"),
        best_validation_loss=run_state.best_val,
        losses=list(run_state.losses),
        trainable_parameters=counts.trainable,
        total_parameters=counts.total,
        seconds=time.monotonic() - started,
        tokens_per_second=run_state.tokens / max(run_state.seconds, 1e-9),
        checkpoints=[Checkpoint(*c) for c in list_checkpoints(params.output)],
        output=Path(params.output),
        qat=qat_result,
        truncated_rows=run_state.truncated,
        stopped_early=stopped_early,
        model=run_state.model,
    )
