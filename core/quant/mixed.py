"""Automatic mixed precision: one bit width per layer, the least total quality loss under a size
budget.

Sensitivity of a layer at b bits: the expected squared error its quantization adds to the layer's
output, E‖(W − Q(W))·x‖² ≈ Σ_j E[x_j²]·Σ_i (W_ij − Q(W)_ij)² (inputs taken as uncorrelated across
channels, the diagonal of the GPTQ/OBQ Hessian). Without input statistics E[x_j²] = 1, the plain
squared weight error. Q is round-to-nearest with min-max ranges at the scheme for b bits; 16 bits
means "keep in FP16". The total loss is the sum over layers.

That sum weighs layers by the absolute size of their outputs, and on the default model it misleads:
at the size of uniform INT4 group-64 (116 MB), the plan it picks (16 layers at 8 bits, 52 at 3, 2 at
2) has a 5× smaller estimated loss but perplexity 44.1 against uniform's 32.2 (FP32: 24.9); at
the size of uniform INT3 (103 MB), 804 against 69.7. Layers whose outputs are small (layer 0's
attention, reading the small early residual stream) look cheap but feed every later layer.
``relative=True`` divides each error by the layer's expected output energy Σ_j E[x_j²]·Σ_i W_ij²
(a noise-to-signal ratio) and did better (33.8 and 86.2), still not better than uniform: errors
do not add across layers, and any 2-bit layer costs more than the sum predicts.

Choosing is a multiple-choice knapsack. scipy's milp could take it as an integer programme; a
dynamic programme over the Pareto frontier of (bytes, error) states is simpler to trust: exact
while the frontier stays under ``MAX_STATES`` states (costs shaped like the default model's 210
layers × 5 options peak at 5,500; 0.1–0.4 s), otherwise thinned to that many, evenly spaced in
bytes (the tests measure what thinning costs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.errors import QuantTuneError
from core.quant.affine import Scheme, fake_quantize

FP16_BITS = 16  # the option "keep this layer in FP16"
INT_BITS = (2, 3, 4, 5, 6, 7, 8)
MAX_STATES = 20_000  # frontier states kept per layer: 0.3 s for 210 layers × 5 options


@dataclass(frozen=True)
class LayerCost:
    bits: int
    bytes: int  # the weight's size at these bits, scales and zero points included
    error: float  # Σ_j E[x_j²]·Σ_i (W_ij − Q(W)_ij)²
    mse: float  # plain mean squared weight error, for display


@dataclass
class Plan:
    bits: dict[str, int]
    total_bytes: int  # layers + fixed bytes
    total_error: float
    fixed_bytes: int
    budget_bytes: int
    layer_bytes: dict[str, int] = field(default_factory=dict)

    @property
    def count_by_bits(self) -> dict[int, int]:
        """How many layers got each bit width, widest first."""
        counts: dict[int, int] = {}
        for b in sorted(self.bits.values(), reverse=True):
            counts[b] = counts.get(b, 0) + 1
        return counts


# -- sensitivity -----------------------------------------------------------------------------------
def measure_sensitivity(
    layers: dict[str, nn.Linear],
    scheme_for_bits: Callable[[int], Scheme],
    bits_options: Iterable[int],
    input_sq_mean: dict[str, torch.Tensor] | None = None,
    ctx=None,
    relative: bool = False,
    fisher: dict[str, torch.Tensor] | None = None,
) -> dict[str, dict[int, LayerCost]]:
    """The cost (bytes, error) of every layer at every bit width in ``bits_options``.

    Only the weight is counted; biases (and any tensor not quantized) belong to the fixed bytes.
    ``relative``: each error divided by the layer's expected output energy (see the module notes).
    ``fisher``: per-weight Fisher information (see ``fisher_diagonals``); the error is then
    Σ F_ij·(W_ij − Q(W)_ij)², twice the loss increase it predicts, and the other statistics are unused.
    """
    options = sorted(set(bits_options))
    bad = [b for b in options if b not in INT_BITS and b != FP16_BITS]
    if bad or not options:
        raise QuantTuneError(
            f"Bit widths {bad or options} cannot be chosen per layer.",
            f"Choose among {', '.join(map(str, INT_BITS))} and {FP16_BITS} (keep in FP16).",
        )
    costs = {}
    for done, (name, layer) in enumerate(layers.items()):
        if ctx is not None:
            ctx.progress(done, len(layers), f"Measuring {name}")
        weight = layer.weight.detach().float()
        if fisher is not None:
            costs[name] = {b: fisher_cost(weight, b, scheme_for_bits, fisher[name]) for b in options}
            continue
        energy = None if input_sq_mean is None else input_sq_mean[name].detach().float()
        costs[name] = {b: layer_cost(weight, b, scheme_for_bits, energy, relative) for b in options}
    return costs


def fisher_cost(
    weight: torch.Tensor, bits: int, scheme_for_bits: Callable[[int], Scheme], fisher
) -> LayerCost:
    """One layer at one bit width, its error weighted by each weight's Fisher information."""
    plain = layer_cost(weight, bits, scheme_for_bits, None)
    restored = weight.half().float() if bits == FP16_BITS else fake_quantize(weight, scheme_for_bits(bits))
    error = float((fisher.double() * (weight - restored).double().square()).sum())
    return LayerCost(bits, plain.bytes, error, plain.mse)


def fisher_diagonals(model: nn.Module, layers: dict[str, nn.Linear], batches: torch.Tensor, ctx=None):
    """Mean squared gradient of the language-model loss for every weight of ``layers``, one
    calibration sample at a time: the diagonal of the empirical Fisher information, which says how
    much the loss rises when a weight moves — through every later layer, not just this one's output
    (the measure HAWQ and SqueezeLLM use to decide where bits matter)."""
    sums = {name: torch.zeros_like(layer.weight, dtype=torch.float32) for name, layer in layers.items()}
    weights = {name: layer.weight for name, layer in layers.items()}
    saved = {name: w.requires_grad for name, w in weights.items()}
    others = [p for p in model.parameters() if all(p is not w for w in weights.values())]
    frozen = [p.requires_grad for p in others]
    device = next(model.parameters()).device
    try:
        for p in others:
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for i, sample in enumerate(batches):
            if ctx is not None:
                ctx.check_cancelled()
                ctx.progress(i, len(batches), "Measuring how much each weight matters")
            ids = sample.unsqueeze(0).to(device)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            for name, w in weights.items():
                sums[name] += w.grad.detach().float().square()
    finally:
        model.zero_grad(set_to_none=True)
        for name, w in weights.items():
            w.requires_grad_(saved[name])
        for p, flag in zip(others, frozen, strict=True):
            p.requires_grad_(flag)
    return {name: total / max(len(batches), 1) for name, total in sums.items()}


def layer_cost(
    weight: torch.Tensor,
    bits: int,
    scheme_for_bits: Callable[[int], Scheme],
    energy: torch.Tensor | None,
    relative: bool = False,
) -> LayerCost:
    """One layer at one bit width; ``energy``: E[x_j²] per input channel (None: all 1)."""
    if bits == FP16_BITS:
        restored, nbytes = weight.half().float(), 2 * weight.numel()
    else:
        scheme = scheme_for_bits(bits)
        restored = fake_quantize(weight, scheme)
        nbytes = math.ceil(weight.numel() * (bits + scheme.overhead_bits(tuple(weight.shape))) / 8)
    column_error = (weight - restored).square_().sum(dim=0, dtype=torch.float64)  # Σ_i, per input channel j
    error = _weighted(column_error, energy)
    if relative:
        error = error / max(_weighted(weight.square().sum(dim=0, dtype=torch.float64), energy), 1e-30)
    mse = float(column_error.sum()) / max(weight.numel(), 1)
    return LayerCost(bits, int(nbytes), error, mse)


def _weighted(per_column: torch.Tensor, energy: torch.Tensor | None) -> float:
    """Σ_j E[x_j²]·per_column[j] (all E[x_j²] = 1 without input statistics)."""
    return float(per_column.sum() if energy is None else per_column @ energy.double())


def input_sq_means(model: nn.Module, layers: dict[str, nn.Linear], batches: torch.Tensor, ctx=None):
    """E[x_j²] of every layer's input, per input channel, over all tokens of ``batches`` ([n, seq])."""
    sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def hook_for(name):
        def hook(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] += x.square().sum(dim=0)
            counts[name] += x.shape[0]

        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if ctx is not None:
                    ctx.progress(i, len(batches), "Measuring layer inputs")
                model(batch.unsqueeze(0).to(device))
    finally:
        for handle in handles:
            handle.remove()
    return {name: (total / max(counts[name], 1)).float() for name, total in sums.items()}


# -- choosing --------------------------------------------------------------------------------------
def choose_bits(
    costs: dict[str, dict[int, LayerCost]],
    budget_bytes: int,
    fixed_bytes: int = 0,
    max_states: int = MAX_STATES,
) -> Plan:
    """One bit width per layer: total bytes ≤ ``budget_bytes``, total error least."""
    names = list(costs)
    options = [sorted(costs[n].values(), key=lambda c: (c.bytes, c.error)) for n in names]
    floor = fixed_bytes + sum(opts[0].bytes for opts in options)
    if floor > budget_bytes:
        raise QuantTuneError(
            f"Even the smallest choice for every layer needs {floor / 1e6:.2f} MB, over the budget of "
            f"{budget_bytes / 1e6:.2f} MB.",
            f"Raise the budget to at least {floor / 1e6:.2f} MB, or offer fewer bits or larger groups.",
        )
    # rest[i]: the fewest bytes layers i… can still add; a state above budget − rest[i + 1] cannot finish
    rest = np.cumsum([0] + [opts[0].bytes for opts in reversed(options)])[::-1]
    state_bytes, state_error = np.array([fixed_bytes], dtype=np.int64), np.zeros(1)
    trail = []
    for i, opts in enumerate(options):
        limit = budget_bytes - int(rest[i + 1])
        state_bytes, state_error, parent, choice = _extend(state_bytes, state_error, opts, limit, max_states)
        trail.append((parent, choice))
    best = int(np.argmin(state_error))
    picks = _backtrack(trail, best)
    chosen = {n: options[i][k] for i, (n, k) in enumerate(zip(names, picks, strict=True))}
    return Plan(
        bits={n: c.bits for n, c in chosen.items()},
        total_bytes=int(state_bytes[best]),
        total_error=float(state_error[best]),
        fixed_bytes=fixed_bytes,
        budget_bytes=budget_bytes,
        layer_bytes={n: c.bytes for n, c in chosen.items()},
    )


def _extend(state_bytes, state_error, opts: list[LayerCost], limit: int, max_states: int):
    """Every state × every option of the next layer, cut to the budget and to its Pareto frontier."""
    n_opts = len(opts)
    add_bytes = np.array([c.bytes for c in opts], dtype=np.int64)
    add_error = np.array([c.error for c in opts])
    new_bytes = (state_bytes[:, None] + add_bytes[None, :]).ravel()
    new_error = (state_error[:, None] + add_error[None, :]).ravel()
    parent, choice = np.divmod(np.arange(new_bytes.size, dtype=np.int32), n_opts)
    order = np.lexsort((new_error, new_bytes))
    order = order[new_bytes[order] <= limit]
    err = new_error[order]
    # keep a state only if it beats every cheaper one (ties in bytes: the first, least error)
    cheaper_best = np.minimum.accumulate(np.concatenate(([np.inf], err[:-1])))
    order = order[err < cheaper_best]
    if order.size > max_states:
        order = _thin(order, new_bytes, max_states)
    return new_bytes[order], new_error[order], parent[order], choice[order]


def _thin(order: np.ndarray, new_bytes: np.ndarray, max_states: int) -> np.ndarray:
    # On a Pareto frontier error falls as bytes grow: the last state of each byte bucket is its best.
    b = new_bytes[order]
    span = int(b[-1] - b[0]) + 1
    bucket = (b - b[0]) * max_states // span
    last_of_bucket = np.concatenate((bucket[1:] != bucket[:-1], [True]))
    return order[last_of_bucket]


def _backtrack(trail: list[tuple[np.ndarray, np.ndarray]], state: int) -> list[int]:
    picks = []
    for parent, choice in reversed(trail):
        picks.append(int(choice[state]))
        state = int(parent[state])
    return picks[::-1]


def plan_cost(costs: dict[str, dict[int, LayerCost]], bits: dict[str, int], fixed_bytes: int = 0):
    """(total bytes, total error) of a given assignment of bits to layers."""
    chosen = [costs[name][b] for name, b in bits.items()]
    return fixed_bytes + sum(c.bytes for c in chosen), sum(c.error for c in chosen)


# -- a plan for the Quantize job -------------------------------------------------------------------
FISHER_SAMPLES = 4  # calibration windows for the Fisher information: more changed few choices


def budget_overrides(model: nn.Module, tokenizer, params, ctx) -> tuple[tuple[str, str], ...]:
    """Per-layer precisions that fit ``params.budget_mb`` with the least predicted loss.

    Layers the user set by hand keep their precision. The plan may raise layers to 8 bits, and
    lowers some below the chosen bits only when the budget is smaller than uniform quantization:
    measured on the default model, the second-order estimate underrates 3- and 2-bit layers, so
    trading them for 8-bit ones at the same size lost quality (perplexity 33.2 against 32.2).
    """
    from types import SimpleNamespace

    from core.quant.calibration import calibration_batches, linear_layers
    from core.quant.plan import estimate_size

    base = int(params.precision[3:])
    hand = dict(params.overrides)
    from core.quant.embeddings import include_head

    layers = {n: m for n, m in linear_layers(model, include_head(model, params)).items() if n not in hand}
    scheme_for = lambda bits: Scheme(bits, params.symmetric, params.granularity, params.group_size)  # noqa: E731
    keys = (
        "precision",
        "symmetric",
        "granularity",
        "group_size",
        "include_head",
        "include_embeddings",
        "method",
    )
    settings = SimpleNamespace(**{k: getattr(params, k) for k in keys}, overrides=hand)
    uniform = estimate_size(model, settings).bytes_after
    fixed = uniform - sum(
        layer_cost(m.weight.detach().float(), base, scheme_for, None).bytes for m in layers.values()
    )
    budget = int(params.budget_mb * 1e6)
    options = {b for b in (2, 3, 4, 8) if b >= base} | (
        {base - 1} if budget < uniform and base > 2 else set()
    )
    ctx.stage(f"Measuring how sensitive each layer is ({FISHER_SAMPLES} calibration windows)")
    from core.evaluate.perplexity import bundled_text

    text = params.calibration_text or bundled_text("calibration")
    batches = calibration_batches(tokenizer, text, FISHER_SAMPLES, params.calibration_seq_len)
    fisher = fisher_diagonals(model, layers, batches, ctx)
    costs = measure_sensitivity(layers, scheme_for, options, ctx=ctx, fisher=fisher)
    plan = choose_bits(costs, budget, fixed)
    chosen = {n: f"int{b}" for n, b in plan.bits.items() if b != base}
    return tuple(sorted({**chosen, **hand}.items()))
