"""Before Start: how much memory a training run will need, whether it fits, and what to change.

Peak memory = weights + gradients of the trainable parameters + optimizer state (AdamW: two FP32
moments per trainable parameter) + activations kept for the backward pass. Activations per decoder
layer follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
Models", eq. 1): s·b·h·(34 + 5·a·s/h) bytes at 16 bits, scaled to the compute precision and to the
MLP's real width (the formula assumes 4·h, ungated); with gradient checkpointing only each layer's input is
kept, plus one layer's full activations while it is recomputed. LoRA adds a dropout copy of each
adapted layer's input. benchmarks/train_memory.py compares it with measured peaks on the default model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

OPTIMIZER_BYTES = 8  # AdamW: exp_avg and exp_avg_sq in FP32 per trainable parameter
HEADROOM = 0.85  # use at most this share of the free memory: the OS and the app need the rest


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    trainable: int
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    weight_bytes: int = 4  # per parameter as loaded (FP32: 4; a 4-bit base: about 0.5)
    adapter_inputs: int = 0  # per layer, the summed input widths of LoRA-adapted linears
    vocab_matrices: int = 1  # vocabulary × hidden matrices among the parameters: 2 when the head is untied

    @classmethod
    def of(cls, model: Any) -> ModelShape:
        from core.finetune.methods import trainable

        counts, c = trainable(model), model.config
        width = getattr(c, "intermediate_size", 4 * c.hidden_size)
        adapted = sum(m.in_features for n, m in model.named_modules() if n.endswith("lora_A.default"))
        head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
        untied = head is not None and head.weight is not embeddings.weight
        return cls(counts.total, counts.trainable, c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
                   width, c.vocab_size, adapter_inputs=adapted // max(1, c.num_hidden_layers),
                   vocab_matrices=2 if untied else 1)  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    available: int | None  # free memory of the device (None: unknown)
    advice: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.peak <= self.available * HEADROOM


def activation_bytes(shape: ModelShape, batch: int, seq_len: int, compute_bytes: int = 4,
                     checkpointing: bool = False) -> int:  # fmt: skip
    """Bytes of activations kept for the backward pass (all layers, plus the logits)."""
    s, b, h, a = seq_len, batch, shape.hidden, shape.heads
    mlp_scale = (shape.intermediate / (4 * h)) if h else 1.0
    # 34 = 18 (attention, norms) + 16 (MLP at width 4h); a gated MLP (SwiGLU) keeps gate, up and
    # their product: half as much again
    per_layer_16 = s * b * h * (18 + 16 * mlp_scale * 1.5 + 5 * a * s / h)
    per_layer = per_layer_16 * compute_bytes / 2
    logits = s * b * shape.vocab * 4 * 2  # FP32 logits and their softmax, for the loss
    # LoRA's dropout keeps its own copy of each adapted layer's input, and the mask
    per_layer += s * b * shape.adapter_inputs * (compute_bytes + 1)
    if checkpointing:
        return int(shape.layers * s * b * h * compute_bytes + per_layer + logits)
    return int(shape.layers * per_layer + logits)


def estimate(shape: ModelShape, batch: int, seq_len: int, *, compute_bytes: int = 4,
             checkpointing: bool = False, available: int | None = None) -> Estimate:  # fmt: skip
    result = _parts(shape, batch, seq_len, compute_bytes, checkpointing, available)
    if result.fits is not False:
        return result
    advice = _advice(shape, batch, seq_len, compute_bytes, checkpointing, available)
    return Estimate(result.weights, result.gradients, result.optimizer, result.activations, available, advice)


def _parts(shape: ModelShape, batch: int, seq_len: int, compute_bytes: int, checkpointing: bool,
           available: int | None) -> Estimate:  # fmt: skip
    return Estimate(
        weights=shape.parameters * shape.weight_bytes,
        gradients=shape.trainable * 4,
        optimizer=shape.trainable * OPTIMIZER_BYTES,
        activations=activation_bytes(shape, batch, seq_len, compute_bytes, checkpointing),
        available=available,
    )


def _advice(shape: ModelShape, batch: int, seq_len: int, compute_bytes: int, checkpointing: bool,
            available: int) -> list[str]:  # fmt: skip
    """Changes that would fit, each tried on its own, smallest peak first."""
    lora = ModelShape(**{**shape.__dict__, "trainable": shape.parameters // 100})
    options = [  # (text, shape, batch, length, checkpointing), where the change applies
        (f"batch size {max(1, batch // 4)}", shape, max(1, batch // 4), seq_len, checkpointing, batch > 1),
        ("gradient checkpointing", shape, batch, seq_len, True, not checkpointing),
        (f"maximum length {seq_len // 2}", shape, batch, seq_len // 2, checkpointing, seq_len > 128),
        (
            "LoRA instead of every weight",
            lora,
            batch,
            seq_len,
            checkpointing,
            shape.trainable > lora.trainable * 10,
        ),
    ]
    good = []
    for text, changed, b, s, ckpt, applies in options:
        e = _parts(changed, b, s, compute_bytes, ckpt, available)
        if applies and e.fits:
            good.append((e.peak, text))
    return [f"{text} (needs about {peak / 1e9:.1f} GB)" for peak, text in sorted(good)] or [
        "none of batch size, checkpointing, length or LoRA alone is enough: combine them, or use QLoRA"
    ]


def available_memory(device: str = "cpu") -> int | None:
    """Free memory of ``device`` in bytes (RAM for the CPU)."""
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    try:
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    except (RuntimeError, ValueError, AssertionError):
        return None


# -- time ---------------------------------------------------------------------------------------
# Seconds = the run's FLOPs ÷ the rate this machine reaches on this model with these settings, plus a
# fixed cost per step. A FLOP count alone needs an efficiency that varies with the machine, the
# precision and the shapes (LoRA on the default model reaches about 60% of a large matmul's rate in
# FP32), and timing a step at full size costs as much as a step (tens of seconds at batch 16 × 512).
# So two small real steps are timed — the method applied, the run's first examples, packed or padded,
# with the run's autocast, after a warm-up pass — one about a third the size of the other: the line
# through them gives the rate and the part that does not grow with the batch (autocast's weight casts,
# Python), to which the optimizer's measured step is added. Cached per model and settings. The same
# FLOP formula then prices every step of the run, counted exactly: each step's examples come from the
# epoch order the run will use. benchmarks/train_speed.py compares the estimate with real runs.
PROBE_TOKENS = 192  # the larger timed step holds about this many tokens (one or two seconds on CPU)
_SPEEDS: dict[tuple, tuple[Speed, ModelShape, bool]] = {}


@dataclass(frozen=True)
class Speed:
    flops_per_second: float  # training compute (forward + backward), as the probe reached it
    step_seconds: float  # per step whatever its size: casts, clipping, the optimizer, zeroing gradients


@dataclass(frozen=True)
class TimeEstimate:
    train_seconds: float
    eval_seconds: float  # every evaluation on the validation rows together
    steps: int
    tokens_per_second: float  # real (non-padding) tokens per second while training
    speed: Speed
    shape: ModelShape  # of the model as it will train (the method applied): for the memory estimate
    cost_seconds: float  # what making this estimate took (more the first time: the probe)
    longest: int = 0  # tokens of the longest example: a batch's activations grow to batch × this

    @property
    def seconds(self) -> float:
        return self.train_seconds + self.eval_seconds

    def to_dict(self) -> dict:
        return {
            "seconds": self.seconds,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "steps": self.steps,
            "tokens_per_second": self.tokens_per_second,
            "flops_per_second": self.speed.flops_per_second,
            "cost_seconds": self.cost_seconds,
        }


def step_flops(shape: ModelShape, examples: list, packed: bool, backward: bool = True) -> float:
    """FLOPs of one step over ``examples`` (core.finetune.batches.Example), padded or packed.

    Forward: 2 per weight per token; backward: 2 more for the input gradients, and 2 per trainable
    weight per token for its own gradient (so 6·N for full fine-tuning, about 4·N for LoRA). The
    vocabulary head works on every position of a padded batch, but only where the next token is
    learnt in a packed one; a classifier has none. Attention's QKᵀ and AV add 4·S²·hidden per
    layer for each row of S tokens (the masked half is computed too), thrice with its backward.
    """
    lengths, learnt = [len(e.input_ids) for e in examples], _learnt(examples)
    rows = _rows(lengths, packed)
    tokens = sum(rows)
    logits = 0 if learnt is None else sum(learnt) if packed else tokens
    body = shape.parameters - shape.vocab_matrices * shape.vocab * shape.hidden
    per_weight = 2 + (2 + 2 * shape.trainable / max(1, shape.parameters) if backward else 0)
    attention = sum(4 * s * s * shape.hidden * shape.layers for s in rows) * (3 if backward else 1)
    return per_weight * (body * tokens + shape.vocab * shape.hidden * logits) + attention


def _rows(lengths: list[int], packed: bool) -> list[int]:
    """Row widths of the batch, as core.finetune.batches builds it."""
    if not packed:
        return [max(lengths)] * len(lengths)
    from core.finetune.batches import PACK_ROW_TOKENS

    capacity = max(PACK_ROW_TOKENS, *lengths)
    rows = [0] * -(-sum(lengths) // capacity)
    for n in sorted(lengths, reverse=True):
        rows[rows.index(min(rows))] += n
    return [max(rows)] * len(rows)


def time_estimate(params: Any, ctx: Any = None) -> TimeEstimate:
    """How long training with ``params`` (a core.finetune.train.TrainParams) takes on this machine.

    Reads and encodes the data as the run will; the first time for a model and these settings it
    also times two small steps on a copy of the model (two to four seconds for the default model on
    two CPU cores). ``ctx`` receives the stages of preparing that copy.
    """
    import tempfile
    from pathlib import Path

    from core.finetune import train
    from core.finetune.rundata import load_examples
    from core.jobs import JobContext

    started, ctx = time.perf_counter(), ctx or JobContext()
    key = (id(params.loaded.model), params.method, params.task, params.pack, params.autocast,
           params.gradient_checkpointing)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:  # the run writes its split there: not into the output
        probe_params = replace(params, output=Path(tmp), resume_from=None)
        if key in _SPEEDS:
            examples, val = load_examples(probe_params, params.loaded.tokenizer, write_split=False)[:2]
        else:
            import torch

            with torch.random.fork_rng():  # the probe's seeding and dropout leave the process's RNG be
                run = train.prepare(probe_params, ctx)
                examples, val = run.train, run.val
                shape = ModelShape.of(run.model)
                _SPEEDS[key] = (measure_speed(run, probe_params, shape), shape, run.packed)
                del run
    speed, shape, packed = _SPEEDS[key]
    return _price(params, examples, val, speed, shape, packed, time.perf_counter() - started)


def measure_speed(run: Any, params: Any, shape: ModelShape) -> Speed:
    """Time two small real steps of ``run`` (a core.finetune.train.RunState from ``train.prepare``) on its
    first examples."""
    import torch

    from core.finetune import train
    from core.finetune.batches import pad_id_of
    from core.finetune.compute import batch_loss
    from core.finetune.rundata import epoch_order

    first = [run.train[i] for i in epoch_order(len(run.train), params.seed, 0)[:8]]
    small = _fitting(first, PROBE_TOKENS // 3, 1)
    large = _fitting(first, PROBE_TOKENS, small + 1)
    pad_id = pad_id_of(params.loaded.tokenizer)
    trainables = [p for p in run.model.parameters() if p.requires_grad]
    times = []
    for count in (small, small, large):  # the first pass warms up (kernel choice, allocations)
        batch = train.step_batch(run, replace(params, batch_size=count), pad_id)  # as the run builds step 1
        started = _now(batch)
        batch_loss(run.model, batch, run.autocast).backward()
        computed = _now(batch)
        torch.nn.utils.clip_grad_norm_(trainables, params.max_grad_norm or float("inf"))
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        times.append(
            (step_flops(shape, first[:count], run.packed), computed - started, _now(batch) - computed)
        )
    (f1, t1, _), (f2, t2, optimizer) = times[1:]
    rate = (f2 - f1) / (t2 - t1) if f2 > f1 and t2 > t1 else 0.0
    fixed = t1 - f1 / rate if rate > 0 else -1.0
    if not 0 <= fixed <= t1 / 2:  # one example only, or timings too noisy for a line: proportional
        rate, fixed = f2 / max(t2, 1e-9), 0.0
    return Speed(rate, fixed + optimizer)


def _fitting(examples: list, tokens: int, at_least: int) -> int:
    """How many of the first ``examples`` fit ``tokens`` (at least ``at_least``, as many as there are)."""
    count, total = 0, 0
    while count < len(examples) and (count < at_least or total + len(examples[count].input_ids) <= tokens):
        total, count = total + len(examples[count].input_ids), count + 1
    return count


def _now(batch: dict) -> float:
    """The time once the device has finished what was queued (a GPU works asynchronously)."""
    import torch

    device = next(iter(batch.values())).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _learnt(examples: list) -> list[int] | None:
    """Per example, the positions whose next token is learnt; None for classification rows."""
    if not all(hasattr(e, "labels") for e in examples):
        return None
    return [sum(label != -100 for label in e.labels[1:]) for e in examples]


def _price(params: Any, examples: list, val: list, speed: Speed, shape: ModelShape, packed: bool,
           cost: float) -> TimeEstimate:  # fmt: skip
    """Every step of the run (its examples in the run's epoch order), then every evaluation."""
    from core.finetune.rundata import epoch_order

    size, rate = params.batch_size, speed.flops_per_second
    per_epoch = -(-len(examples) // size)
    steps = params.max_steps or per_epoch * params.epochs
    seconds, tokens, order = 0.0, 0, (-1, [])
    for step in range(_resumed_at(params), steps):
        epoch, index = divmod(step, per_epoch)
        if order[0] != epoch:
            order = (epoch, epoch_order(len(examples), params.seed, epoch))
        batch = [examples[i] for i in order[1][index * size : (index + 1) * size]]
        seconds += step_flops(shape, batch, packed) / rate + speed.step_seconds
        tokens += sum(len(e.input_ids) for e in batch)
    evaluations = (-(-steps // params.eval_every) if params.eval_every else 1) if val else 0
    one = sum(step_flops(shape, val[i : i + size], False, backward=False) for i in range(0, len(val), size))
    longest = max((len(e.input_ids) for e in examples + val), default=0)
    return TimeEstimate(
        seconds, evaluations * one / rate, steps, tokens / max(seconds, 1e-9), speed, shape, cost, longest
    )


def _resumed_at(params: Any) -> int:
    """The step a resumed run starts from (0 for a new run)."""
    import json
    from pathlib import Path

    if params.resume_from is None:
        return 0
    try:
        return int(json.loads((Path(params.resume_from) / "state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError):
        return 0
