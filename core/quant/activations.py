"""What calibration sees at each linear layer's input, and static activation quantization (W8A8).

``collect_input_stats`` runs the calibration batches once through the unquantized model, a few
samples at a time, and keeps per input channel: max |x|, mean |x| and mean x² (the diagonal of
the Hessian up to a factor 2), a range observer that saw every value, and a random subset of
whole input rows for the error searches of SmoothQuant and AWQ (core.quant.smoothquant,
core.quant.awq). Layers that read the very same tensor (Llama: q/k/v_proj, gate/up_proj) share
one InputStats: their inputs are counted once.

Static activation quantization fixes one (S, Z) per layer input from the observer's range, and a
forward pre-hook fake-quantizes the input with it on every call. The ranges serialise to JSON so
that a saved model can re-attach identical hooks after it is loaded again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from core.errors import QuantTuneError
from core.jobs import JobContext
from core.quant.affine import dequantize, quantize, scale_zero
from core.quant.calibration import TOKENS_PER_CHUNK
from core.quant.observers import MinMaxObserver, make_observer

SAMPLE_SEED = 0  # the kept rows are the same on every run with the same data
RANGES_FORMAT = "quanttune.activation_ranges"
RANGES_VERSION = 1


@dataclass
class InputStats:
    """What one linear layer's input looked like on the calibration data (float32, on the CPU)."""

    absmax: torch.Tensor  # [in_features] max |x| per input channel
    absmean: torch.Tensor  # [in_features] mean |x|
    sq_mean: torch.Tensor  # [in_features] mean x²: the Hessian diagonal up to a factor 2
    observer: Any  # a core.quant.observers observer that saw every input value
    sample: torch.Tensor  # [rows, in_features] random input rows (rows ≤ keep_rows)
    tokens: int  # input rows seen


# -- collecting ------------------------------------------------------------------------------------
class _Accumulator:
    """Running per-channel sums, an observer and a bottom-k random sample of one input's rows."""

    def __init__(self, name: str, observer, keep_rows: int) -> None:
        self.name, self.observer, self.keep_rows = name, observer, keep_rows
        self.absmax = self.abssum = self.sqsum = None
        self.tokens = 0
        self.generator = torch.Generator().manual_seed(SAMPLE_SEED)
        self.keys = torch.empty(0)
        self.sample: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        lo, hi = torch.aminmax(rows, dim=0)
        chunk_max = torch.maximum(-lo, hi)  # NaN propagates through both, inf stays inf
        if not torch.isfinite(chunk_max).all():
            raise _non_finite(self.name)
        if self.absmax is None:
            width = rows.shape[1]
            self.absmax = torch.zeros(width, device=rows.device)
            self.abssum = torch.zeros(width, dtype=torch.float64, device=rows.device)
            self.sqsum = torch.zeros(width, dtype=torch.float64, device=rows.device)
            self.sample = torch.empty(0, width)
        torch.maximum(self.absmax, chunk_max, out=self.absmax)
        # float32 within a chunk (a few thousand rows), float64 across chunks: millions of float32
        # additions would lose the small channels.
        magnitude = rows.abs()
        self.abssum += magnitude.sum(dim=0).double()
        self.sqsum += magnitude.square_().sum(dim=0).double()
        self.tokens += rows.shape[0]
        if isinstance(self.observer, MinMaxObserver):
            # A min-max observer (moving average too) only uses each batch's extremes: the
            # per-channel ones carry them, and save a pass over the whole input.
            self.observer.observe(torch.stack([lo, hi]))
        else:
            self.observer.observe(rows)
        self._keep(rows)

    def _keep(self, rows: torch.Tensor) -> None:
        # Bottom-k sampling: every row draws a random key and the keep_rows smallest keys stay,
        # which is a uniform random subset of all rows however many chunks arrive.
        keys = torch.cat([self.keys, torch.rand(rows.shape[0], generator=self.generator)])
        kept = keys.topk(min(self.keep_rows, keys.numel()), largest=False).indices.sort().values
        old = self.keys.numel()
        fresh = rows[(kept[kept >= old] - old).to(rows.device)].cpu()
        self.sample = torch.cat([self.sample[kept[kept < old]], fresh])
        self.keys = keys[kept]

    def stats(self) -> InputStats:
        tokens = max(self.tokens, 1)
        return InputStats(
            absmax=self.absmax.cpu(),
            absmean=(self.abssum / tokens).float().cpu(),
            sq_mean=(self.sqsum / tokens).float().cpu(),
            observer=self.observer,
            sample=self.sample,
            tokens=self.tokens,
        )


def _non_finite(name: str) -> QuantTuneError:
    return QuantTuneError(
        f"NaN activations in layer {name}: the model produced NaN or infinite values at this "
        "layer's input on the calibration text.",
        "Check that the unquantized model loads and answers correctly, or try another calibration text.",
    )


class _Collector:
    """Forward pre-hooks feeding one accumulator per distinct input tensor."""

    def __init__(self, observer: str, percentile: float, keep_rows: int) -> None:
        self.new_observer = lambda: make_observer(observer, percentile)
        self.keep_rows = keep_rows
        self.by_layer: dict[str, _Accumulator] = {}
        self.last_input: torch.Tensor | None = None
        self.last: _Accumulator | None = None

    def hook(self, name: str):
        def record(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            acc = self.by_layer.get(name)
            if x is self.last_input and (acc is None or acc is self.last):
                # The previous layer read this very tensor (q/k/v, gate/up): counted once.
                self.by_layer[name] = self.last
                return
            if acc is None:
                acc = self.by_layer[name] = _Accumulator(name, self.new_observer(), self.keep_rows)
            acc.add(x)
            self.last_input, self.last = x, acc

        return record

    def results(self) -> dict[str, InputStats]:
        done: dict[int, InputStats] = {}
        for acc in self.by_layer.values():
            if id(acc) not in done:
                done[id(acc)] = acc.stats()
        return {name: done[id(acc)] for name, acc in self.by_layer.items()}


class _Stop(Exception):
    """Ends a forward pass early: the LM head's logits are not needed."""


def _stop(module, args, kwargs):
    raise _Stop


def collect_input_stats(
    model: nn.Module,
    batches: torch.Tensor,
    layers: dict[str, nn.Linear],
    ctx: JobContext,
    *,
    observer: str = "minmax",
    percentile: float = 99.99,
    keep_rows: int = 256,
) -> dict[str, InputStats]:
    """Statistics of each listed layer's input over one no-grad pass of ``batches`` [n, seq_len].

    A layer the calibration never reached (an unused expert) is missing from the result.
    """
    if batches is None or batches.numel() == 0:
        raise QuantTuneError(
            "This method needs calibration data, and none was given.", "Pick a calibration text."
        )
    collector = _Collector(observer, percentile, keep_rows)
    hooks = {linear: collector.hook(name) for name, linear in layers.items()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and head not in hooks:
        hooks[head] = _stop  # the logits are the most expensive part of the pass, and unused
    device = next(model.parameters()).device
    chunks = batches.split(max(1, TOKENS_PER_CHUNK // max(1, batches.shape[1])))
    handles = [module.register_forward_pre_hook(fn, with_kwargs=True) for module, fn in hooks.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for done, ids in enumerate(chunks):
                ctx.check_cancelled()
                with suppress(_Stop):
                    model(input_ids=ids.to(device), use_cache=False)
                ctx.progress(done + 1, len(chunks), "Collecting activation statistics")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        collector.last_input = None
    return collector.results()


# -- static activation quantization ----------------------------------------------------------------
class StaticRanges(NamedTuple):
    """Per-tensor activation ranges by layer name, with the integer format they are meant for."""

    ranges: dict[str, tuple[float, float]]
    bits: int
    symmetric: bool


def activation_ranges(
    stats: dict[str, InputStats], bits: int = 8, symmetric: bool = False
) -> dict[str, tuple[float, float]]:
    """Each layer input's static range [lo, hi], as its observer chooses it for this format."""
    ranges = {}
    for name, entry in stats.items():
        found = entry.observer.range(bits, symmetric)
        ranges[name] = (float(found.lo), float(found.hi))
    return ranges


def _fake_quant_hook(lo: float, hi: float, bits: int, symmetric: bool):
    scale, zero = scale_zero(torch.tensor(lo), torch.tensor(hi), bits, symmetric)

    def fake_quantize(x: torch.Tensor) -> torch.Tensor:
        s, z = scale.to(x.device), zero.to(x.device)
        return dequantize(quantize(x.float(), s, z, bits, symmetric), s, z).to(x.dtype)

    def hook(module, args, kwargs):
        if args:
            return (fake_quantize(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "input": fake_quantize(kwargs["input"])}

    return hook


def attach_activation_quant(
    model: nn.Module, ranges: dict[str, tuple[float, float]], bits: int = 8, symmetric: bool = False
) -> list:
    """Fake-quantize each listed layer's input with its static per-tensor (S, Z) on every call.

    Returns the hook handles: ``remove(handles)`` gives back the unquantized activations.
    """
    handles = []
    try:
        for name, (lo, hi) in ranges.items():
            module = _linear(model, name)
            hook = _fake_quant_hook(lo, hi, bits, symmetric)
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    except BaseException:
        remove(handles)
        raise
    return handles


def _linear(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise QuantTuneError(
            f"The activation ranges name a layer {name} that this {type(model).__name__} does not have.",
            "Use the ranges with the model they were calibrated on, or quantize the model again.",
        ) from None


def remove(handles: Iterable) -> None:
    for handle in handles:
        handle.remove()


def ranges_to_json(ranges: dict[str, tuple[float, float]], bits: int, symmetric: bool) -> dict:
    """A JSON-ready form of static activation ranges (floats survive json exactly)."""
    return {
        "format": RANGES_FORMAT,
        "version": RANGES_VERSION,
        "bits": int(bits),
        "symmetric": bool(symmetric),
        "granularity": "tensor",
        "layers": {name: [float(lo), float(hi)] for name, (lo, hi) in ranges.items()},
    }


def ranges_from_json(data: dict) -> StaticRanges:
    """The ranges, bits and symmetry written by ``ranges_to_json``; a clear error if damaged."""
    try:
        if data.get("format") != RANGES_FORMAT or data.get("version") != RANGES_VERSION:
            raise ValueError("unknown format")
        bits, symmetric = int(data["bits"]), data["symmetric"]
        ranges = {str(name): (float(lo), float(hi)) for name, (lo, hi) in data["layers"].items()}
        if not 2 <= bits <= 16 or not isinstance(symmetric, bool):
            raise ValueError("bad format")
        if not all(math.isfinite(lo) and math.isfinite(hi) and lo <= hi for lo, hi in ranges.values()):
            raise ValueError("bad range")
    except (AttributeError, KeyError, TypeError, ValueError):
        raise QuantTuneError(
            "The saved activation ranges are damaged or from another program version.",
            "Quantize the model again to write them anew.",
        ) from None
    return StaticRanges(ranges, bits, symmetric)
