"""Calibration for post-training quantization: token windows from a text, and the sequential,
block-by-block pass that feeds each linear layer's input statistics to a quantizer (GPTQ).

The pass follows the GPTQ paper's procedure (Frantar et al. 2022, §4 and the reference llama.py):
only one decoder block's activations are in memory at a time, and every block is calibrated on
the outputs of the blocks before it *after* they were quantized, so it can correct their error.
Within a block the linear layers go in stages of those that read the same input (Llama: q/k/v,
then o, then gate/up, then down: "true sequential"), each stage seeing the earlier ones quantized.

Works with any transformers causal LM whose decoder blocks sit in one ModuleList (see
``decoder_blocks``). The model's weights are replaced in place by their dequantized values; if
the pass is cancelled or fails, the model is left partly quantized and should be discarded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn

from core.errors import QuantTuneError
from core.jobs import JobContext
from core.quant.qtensor import QuantizedWeight

QuantizeLayer = Callable[[str, nn.Linear, "torch.Tensor | None"], QuantizedWeight]
TOKENS_PER_CHUNK = 2048  # samples run through a block together: bounds activation memory
# Where transformers keeps the decoder blocks, by model family.
BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "transformer.h",
    "transformer.blocks",
    "gpt_neox.layers",
)


# -- calibration data ------------------------------------------------------------------------------
def calibration_batches(tokenizer, text: str, n_samples: int, seq_len: int) -> torch.Tensor:
    """[n, seq_len] token ids: consecutive windows of the tokenized text, n ≤ n_samples.

    Fewer than ``n_samples`` windows come back when the text is too short for all of them.
    """
    if n_samples < 1 or seq_len < 1:
        raise QuantTuneError(
            f"Calibration needs at least one sample of at least one token "
            f"(got {n_samples} samples of {seq_len} tokens).",
            "Set the number of samples and the sequence length to 1 or more.",
        )
    if not text.strip():
        raise QuantTuneError(
            "The calibration text is empty.",
            f"Choose a text with at least {seq_len} tokens (a few pages of plain text).",
        )
    # verbose=False: a text longer than the model's context is expected here; it is cut below.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    n = min(n_samples, len(ids) // seq_len)
    if n == 0:
        raise QuantTuneError(
            f"The calibration text has {len(ids)} tokens; one window of {seq_len} tokens needs {seq_len}.",
            f"Choose a longer text, or set the sequence length to at most {len(ids)} tokens.",
        )
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).reshape(n, seq_len)


def linear_layers(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """Every nn.Linear of the model by module name; the LM head only when asked for."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (include_head or module is not head)
    }


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order."""
    for path in BLOCK_PATHS:
        module = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return module
    # Unknown family: the one ModuleList as long as the config's layer count.
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    found = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if len(found) == 1:
        return found[0]
    raise QuantTuneError(
        f"Could not find the decoder blocks of this {type(model).__name__}, so it cannot be "
        "calibrated block by block.",
        "Quantize it with RTN, which needs no calibration, or use a Llama-style model.",
    )


# -- the sequential pass ---------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from a hook to end a forward pass once the input we wanted has been seen."""


class _Gram:
    """Running Σ XᵀX (float32) over a linear layer's inputs; H = 2/N · Σ XᵀX."""

    def __init__(self, name: str) -> None:
        self.name, self.sum, self.tokens = name, None, 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if self.sum is None:
            self.sum = torch.zeros(x.shape[1], x.shape[1], device=x.device)
        self.sum.addmm_(x.t(), x)
        self.tokens += x.shape[0]

    def hessian(self, cols: int, device: torch.device) -> torch.Tensor:
        if self.sum is None:  # calibration never reached the layer: GPTQ falls back to rounding
            return torch.zeros(cols, cols, device=device)
        # Checked once here rather than on every input: a NaN or infinite input always reaches
        # the diagonal of Σ XᵀX (as x²), and so does an overflow of the sum itself.
        if not torch.isfinite(self.sum.diagonal()).all():
            raise QuantTuneError(
                f"NaN activations in layer {self.name}: its inputs hold NaN or infinite values "
                "on the calibration text.",
                "Check that the unquantized model gives sensible answers, try another calibration "
                "text, or quantize with RTN, which needs no activations.",
            )
        return self.sum.mul_(2.0 / self.tokens)


@contextmanager
def _pre_hooks(hooks: dict[nn.Module, Callable]) -> Iterator[None]:
    handles = [module.register_forward_pre_hook(fn, with_kwargs=True) for module, fn in hooks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def quantize_sequential(
    model: nn.Module,
    batches: torch.Tensor,
    quantize_layer: QuantizeLayer,
    ctx: JobContext,
    needs_hessian: bool,
    *,
    layers: dict[str, nn.Linear] | None = None,
) -> dict[str, QuantizedWeight]:
    """Quantize ``layers`` (default: every linear but the LM head) block by block, in place.

    ``quantize_layer(name, linear, H)`` gets H = 2/N · Σ XᵀX of the layer's calibration inputs
    (None when ``needs_hessian`` is false: then no activations are collected at all). Linears
    outside the decoder blocks (the LM head, when included) are calibrated last.
    """
    layers = linear_layers(model) if layers is None else layers
    progress = _Progress(ctx, len(layers))
    ctx.progress(0, len(layers), "Collecting calibration activations" if needs_hessian else "")
    if not needs_hessian:
        return {name: progress.apply(name, linear, None, quantize_layer) for name, linear in layers.items()}
    results: dict[str, QuantizedWeight] = {}
    if batches is None or batches.numel() == 0:
        raise QuantTuneError(
            "This method needs calibration data, and none was given.", "Pick a calibration text."
        )
    with _inference(model):
        blocks = decoder_blocks(model)
        chunks = _block_inputs(model, batches, blocks[0], ctx)
        plans: dict = {}
        for block in blocks:
            members = set(block.modules())
            in_block = {linear: name for name, linear in layers.items() if linear in members}
            if in_block:
                done, chunks = _quantize_block(block, in_block, chunks, quantize_layer, progress, plans)
                results |= done
            else:
                chunks = _run_block(block, chunks, ctx)
        rest = {name: linear for name, linear in layers.items() if name not in results}
        if rest:
            results |= _quantize_outside_blocks(model, batches, rest, quantize_layer, progress)
    return results


class _Progress:
    """Quantizes one layer into the model and reports it."""

    def __init__(self, ctx: JobContext, total: int) -> None:
        self.ctx, self.total, self.done = ctx, total, 0

    def apply(self, name: str, linear: nn.Linear, hessian, quantize_layer: QuantizeLayer) -> QuantizedWeight:
        self.ctx.check_cancelled()
        qweight = quantize_layer(name, linear, hessian)
        with torch.no_grad():
            # Later layers must see this layer's quantization error, so it goes into the model now.
            linear.weight.copy_(qweight.dequantize(linear.weight.dtype).reshape(linear.weight.shape))
        self.done += 1
        self.ctx.progress(self.done, self.total, f"Quantized {name}")
        return qweight


def _chunks_of(batches: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    per_chunk = max(1, TOKENS_PER_CHUNK // max(1, batches.shape[1]))
    return [ids.to(device) for ids in batches.split(per_chunk)]


def _block_inputs(model: nn.Module, batches: torch.Tensor, first: nn.Module, ctx: JobContext) -> list:
    """Run the model up to its first block on each chunk of samples; keep what the block receives.

    Besides the hidden states, transformers passes the block keyword arguments (attention mask,
    position ids, rotary position embeddings…); they are replayed as they are into every block.
    """
    chunks = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        chunks.append((hidden, args[1:], kwargs))
        raise _Stop

    device = next(model.parameters()).device
    with _pre_hooks({first: grab}):
        for ids in _chunks_of(batches, device):
            ctx.check_cancelled()
            with suppress(_Stop):
                model(input_ids=ids, use_cache=False)
    if not chunks:
        raise QuantTuneError(
            f"The model never ran its first decoder block ({type(first).__name__}) on the calibration "
            "data, so it cannot be calibrated block by block.",
            "Quantize it with RTN, which needs no calibration.",
        )
    if not all(torch.isfinite(hidden).all() for hidden, _, _ in chunks):
        raise QuantTuneError(
            "NaN activations in the model's embeddings: the first decoder block got NaN or infinite inputs.",
            "Check that the unquantized model gives sensible answers, or quantize with RTN.",
        )
    return chunks


def _forward(block: nn.Module, chunk) -> torch.Tensor:
    hidden, args, kwargs = chunk
    out = block(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _run_block(block: nn.Module, chunks: list, ctx: JobContext) -> list:
    """The block's outputs (the next block's inputs), computed with its quantized weights."""
    out = []
    for chunk in chunks:
        ctx.check_cancelled()
        out.append((_forward(block, chunk), *chunk[1:]))
    return out


def _quantize_block(block, in_block: dict, chunks: list, quantize_layer, progress: _Progress, plans: dict):
    """Quantize a block's linears stage by stage, each stage calibrated on the quantized earlier
    ones; then run the quantized block. Returns the QuantizedWeights and the block's outputs."""
    results = {}
    by_name = {name: linear for linear, name in in_block.items()}
    stages, unreached, run_once = _block_plan(block, in_block, chunks[0], plans)
    replay, pending = _Replay(run_once, len(chunks)), set(in_block)
    for stage in stages:
        with replay.active(pending):
            hessian = _stage_hessian(block, by_name[stage[0]], stage[0], chunks, progress.ctx)
        for name in stage:  # the stage's layers read the same input, so they share one H
            results[name] = progress.apply(name, by_name[name], hessian, quantize_layer)
            pending.discard(by_name[name])
    for name in unreached:
        linear = by_name[name]
        hessian = _Gram(name).hessian(linear.in_features, linear.weight.device)
        results[name] = progress.apply(name, linear, hessian, quantize_layer)
    with replay.active(set(), record=False):
        return results, _run_block(block, chunks, progress.ctx)


def _block_plan(block: nn.Module, in_block: dict, chunk, plans: dict):
    """The block's stages and unreached linears (full names), and its direct children that run
    once per pass. Found by a pass over one chunk once per block layout, then reused for the
    blocks built the same way."""
    local = {module: name for name, module in block.named_modules() if module in in_block}
    to_full = {name: in_block[module] for module, name in local.items()}
    key = tuple(sorted(to_full))
    stages, unreached, run_once = plans.get(key) or _stages(block, local, chunk)
    if not unreached:  # else look again next time: another chunk may reach them (routed experts)
        plans[key] = (stages, unreached, run_once)
    children = [block.get_submodule(name) for name in run_once]
    return [[to_full[n] for n in stage] for stage in stages], [to_full[n] for n in unreached], children


def _stages(block: nn.Module, in_block: dict, chunk):
    """One pass over one chunk: the block's linears grouped by the input tensor they read, in the
    order they run; the linears that did not run; the direct children that ran exactly once."""
    calls, runs = [], {}

    def record(module, args, kwargs):
        calls.append((in_block[module], args[0] if args else kwargs["input"]))

    def count(module, args, kwargs):
        runs[module] = runs.get(module, 0) + 1

    children = dict(block.named_children())
    with _pre_hooks(dict.fromkeys(in_block, record) | dict.fromkeys(children.values(), count)):
        _forward(block, chunk)
    stages: list[tuple[torch.Tensor, list[str]]] = []
    for name, x in calls:
        if any(name in names for _, names in stages):
            raise QuantTuneError(
                f"The layer {name} runs more than once per pass through its decoder block, so GPTQ "
                "cannot calibrate it.",
                "Quantize this model with RTN.",
            )
        shared = next((names for seen, names in stages if seen is x), None)
        if shared is None:
            stages.append((x, [name]))
        else:
            shared.append(name)
    reached = {name for name, _ in calls}
    run_once = [name for name, child in children.items() if runs.get(child) == 1]
    return [names for _, names in stages], [n for n in in_block.values() if n not in reached], run_once


class _Replay:
    """Skips the parts of a block that an earlier pass already computed.

    A direct child of the block that ran to its end before a pass stopped, and holds no layer
    still to be quantized, gives the same output in every later pass over the same chunks: that
    output is kept and handed back instead of running the child again. In a Llama block this
    skips the whole attention part in the pass for down_proj and in the output pass (a fifth of
    the calibration time).
    """

    def __init__(self, children: list[nn.Module], n_chunks: int) -> None:
        self.children, self.n_chunks = children, n_chunks  # children that run once per pass
        self.kept: dict[nn.Module, list] = {}

    @contextmanager
    def active(self, pending: set[nn.Module], record: bool = True) -> Iterator[None]:
        """For one pass over all chunks: replay what is kept, record the other children."""
        recorded = {child: [] for child in self.children if record and child not in self.kept}
        handles = [child.register_forward_hook(self._recorder(recorded[child])) for child in recorded]
        for child, outputs in self.kept.items():
            # An instance attribute shadows the class's forward; deleting it restores that.
            child.forward = self._replayer(iter(outputs))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for child in self.kept:
                del child.forward
        for child, outputs in recorded.items():
            if len(outputs) == self.n_chunks and not any(m in pending for m in child.modules()):
                self.kept[child] = outputs

    @staticmethod
    def _recorder(outputs: list):
        return lambda module, args, out: outputs.append(_copied(out))

    @staticmethod
    def _replayer(outputs: Iterator):
        return lambda *args, **kwargs: _copied(next(outputs))


def _copied(out):
    # Copies both ways: the block may change a child's output in place (``x += residual``).
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_copied(item) for item in out)
    return out


def _stage_hessian(block: nn.Module, first: nn.Linear, name: str, chunks: list, ctx: JobContext):
    """H of the input that a stage's first layer reads, over all chunks.

    Each pass stops at that layer: nothing after it is needed yet.
    """
    gram = _Gram(name)

    def take(module, args, kwargs):
        gram.add(args[0] if args else kwargs["input"])
        raise _Stop

    with _pre_hooks({first: take}):
        for chunk in chunks:
            ctx.check_cancelled()
            with suppress(_Stop):
                _forward(block, chunk)
    return gram.hessian(first.in_features, first.weight.device)


def _quantize_outside_blocks(model, batches, rest: dict, quantize_layer, progress: _Progress) -> dict:
    """Linears outside the decoder blocks, on one pass of the whole (already quantized) model."""
    grams = {linear: _Gram(name) for name, linear in rest.items()}

    def take(module, args, kwargs):
        grams[module].add(args[0] if args else kwargs["input"])

    device = next(model.parameters()).device
    with _pre_hooks(dict.fromkeys(grams, take)):
        for ids in _chunks_of(batches, device):
            progress.ctx.check_cancelled()
            model(input_ids=ids, use_cache=False)
    return {
        name: progress.apply(name, linear, grams[linear].hessian(linear.in_features, device), quantize_layer)
        for name, linear in rest.items()
    }
