"""Quantization-aware training (QAT): the base weights train on the integer grid they will be saved on.

Every decoder linear layer (not the LM head, not the embeddings) gets a parametrization of its
weight (``torch.nn.utils.parametrize``), so the module stays an ``nn.Linear`` (peft wraps it as any
other) and its forward pass sees ``S · (clamp(round(W / S) + Z) − Z)``, one (S, Z) per group of
``qat_group_size`` inputs of each row (0: per output channel) — the formulas of core.quant.affine.

Gradients: the straight-through estimator, clipped (as LSQ and PACT): rounding passes the gradient
unchanged, clamping stops it, so a weight already outside the grid gets none.
Scales: "moving_average" follows each group's min and max with an exponential moving average, one
update per new value of the weights (a repeated forward pass with the same weights, as gradient
checkpointing does, counts once); "lsq" learns S per group by gradient, scaled by
1/sqrt(group length · qmax) (LSQ, Esser et al. 2020, with the group as the set sharing a scale), and,
for asymmetric grids, Z as a learned offset rounded in the forward pass (which alone keeps it an
integer); both start from the min-max values of RTN, so an untrained export equals plain RTN.

With ``qat_lora`` the frozen base gets peft LoRA (the LoRA method's settings) and the grid holds
W + ΔW (ΔW = B·A·scaling): the parametrization returns fake_quantize(W + ΔW) − ΔW and peft adds ΔW·x
back, so the layer computes what the exported integer layer will (up to float rounding; dropout
aside). LoRA beside a quantized W instead (FQ(W)·x + ΔW·x) would lose at export every change smaller
than half a step. Without ``qat_lora`` every base weight trains through the quantizer.

Checkpoints store the trainable tensors; the moving averages are therefore Parameters that never get
a gradient (AdamW skips them), so a resume continues the very same averages. At the end
``export_quantized`` writes the real integer model with the learned S and Z in the Quantize step's
format, and ``compare_with_ptq`` measures it against plain RTN and the unquantized base.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from core.errors import QuantTuneError
from core.quant.affine import Scheme, qrange, quantize, scale_zero
from core.quant.qtensor import QuantizedWeight, as_rows, block_ranges, quantize_rtn

SCALES = ("moving_average", "lsq")
# Weights drift slowly; a memory of about ten updates keeps the grid on them within a short run
# (torch.ao's 0.01, tuned for activations that change batch to batch, would barely move in 50 steps).
EMA_CONSTANT = 0.1
TINY = torch.finfo(torch.float32).tiny  # the smallest scale, as in core.quant.affine.scale_zero
EXPORT_FOLDER = "quantized"
REPORT_FILE = "qat_report.json"


def scheme_of(settings: Any) -> Scheme:
    """The Quantize step's scheme for the method settings (group size 0: per output channel)."""
    size = settings.qat_group_size
    return Scheme(settings.qat_bits, settings.qat_symmetric, "group" if size else "channel", size or 64)


def problems(settings: Any) -> list[str]:
    found = []
    if not 2 <= settings.qat_bits <= 8:
        found.append("QAT trains on grids of 2 to 8 bits")
    if settings.qat_group_size < 0:
        found.append("the QAT group size is 0 (one scale per output channel) or more")
    if settings.qat_scales not in SCALES:
        found.append(f"unknown QAT scales {settings.qat_scales!r} (choose {', '.join(SCALES)})")
    return found


# -- the differentiable quantizer ---------------------------------------------------------------
def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) in value (exactly: round(x) − x is exact in floating point), identity in gradient."""
    return x + (torch.round(x) - x).detach()


class _ScaleGrad(torch.autograd.Function):
    """The value unchanged, its gradient times ``factor`` (LSQ's gradient scale)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def _grouped(rows: torch.Tensor, group_len: int) -> torch.Tensor:
    """[rows, width] → [rows, groups, group_len], the last group zero-padded (as block_ranges)."""
    groups = math.ceil(rows.shape[1] / group_len)
    if groups * group_len != rows.shape[1]:
        rows = nn.functional.pad(rows, (0, groups * group_len - rows.shape[1]))
    return rows.reshape(rows.shape[0], groups, group_len)


def _ungrouped(blocks: torch.Tensor, width: int) -> torch.Tensor:
    return blocks.reshape(blocks.shape[0], -1)[:, :width]


def fake_quantize_ste(rows: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: Scheme,
                      group_len: int) -> torch.Tensor:  # fmt: skip
    """dequantize(quantize(rows)) with per-group ``scale``/``zero`` ([rows, groups]): the operations
    of core.quant.affine in the same order (so equal bit for bit), with gradients (see _FakeQuantize)."""
    qmin, qmax = qrange(scheme.bits, scheme.symmetric)
    return _FakeQuantize.apply(rows, scale, zero, qmin, qmax, group_len)


class _FakeQuantize(torch.autograd.Function):
    """Forward in place on one buffer: it runs on every weight at every step, and memory traffic is
    its whole cost (autograd's own graph of the same formula was several times slower on the
    default model). Backward: clipped straight-through for the weights (the gradient passes where
    the rounded code lies on the grid, none where the clamp cut it), and LSQ's for S and Z:
    ∂/∂S = round(x) − x inside, the clamp bound − Z outside; ∂/∂Z = −S outside, 0 inside."""

    @staticmethod
    def forward(ctx, rows, scale, zero, qmin: int, qmax: int, group_len: int):
        ctx.grid = (qmin, qmax, group_len, rows.shape[1])
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
        out = _grouped(rows, group_len) / s
        out.round_()
        if qmin >= 0:  # asymmetric (symmetric grids have Z = 0)
            out.add_(z)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # LSQ: backward recomputes from the weights
            ctx.save_for_backward(rows, scale, zero)
        elif ctx.needs_input_grad[0]:  # which codes the clamp cut is all it needs: a byte per weight
            ctx.save_for_backward((out >= qmin) & (out <= qmax))
        out.clamp_(qmin, qmax)
        return _ungrouped((out if qmin < 0 else out.sub_(z)).mul_(s), rows.shape[1])

    @staticmethod
    def backward(ctx, grad):
        (qmin, qmax, group_len, width), needs = ctx.grid, ctx.needs_input_grad
        g = _grouped(grad, group_len)
        if len(ctx.saved_tensors) == 1:
            return _ungrouped(g * ctx.saved_tensors[0], width), None, None, None, None, None
        rows, scale, zero = ctx.saved_tensors
        s, z = scale.unsqueeze(-1), zero.unsqueeze(-1)
        x = _grouped(rows, group_len) / s
        rounded = torch.round(x)
        codes = rounded + z
        inside = (codes >= qmin) & (codes <= qmax)
        d_rows = _ungrouped(g * inside, width) if needs[0] else None
        d_scale = (
            (g * torch.where(inside, rounded - x, codes.clamp(qmin, qmax) - z)).sum(-1) if needs[1] else None
        )
        d_zero = -(scale * (g * ~inside).sum(-1)) if needs[2] else None
        return d_rows, d_scale, d_zero, None, None, None


class FakeQuantizer(nn.Module):
    """The parametrization of one linear layer's weight: what the forward pass sees is on the grid."""

    def __init__(self, weight: torch.Tensor, scheme: Scheme, scales: str, layer: str, watched: bool,
                 lora: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.scheme, self.scales, self.layer, self.watched = scheme, scales, layer, watched
        object.__setattr__(self, "lora", lora)  # not a submodule: peft's layer holds this one (a cycle)
        rows = as_rows(weight.detach().float())
        self.group_len = scheme.group_size if scheme.granularity == "group" else rows.shape[1]
        lo, hi = block_ranges(rows, scheme)
        if scales == "lsq":
            scale, zero = scale_zero(lo, hi, scheme.bits, scheme.symmetric)
            qmax = qrange(scheme.bits, scheme.symmetric)[1]
            self.grad_factor = 1.0 / math.sqrt(self.group_len * qmax)
            self.scale = nn.Parameter(scale)
            self.zero = None if scheme.symmetric else nn.Parameter(zero)
        else:
            # Parameters only so that checkpoints (the trainable tensors) carry them: no gradient
            # ever reaches them (they are read detached), so the optimizer leaves them alone.
            self.observed_lo, self.observed_hi = nn.Parameter(lo.clone()), nn.Parameter(hi.clone())
            self._seen: tuple | None = None

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, Z), [rows, groups], as the forward pass uses them (and the export stores them)."""
        if self.scales == "lsq":
            scale = _ScaleGrad.apply(self.scale, self.grad_factor).clamp_min(TINY)
            if self.zero is None:
                return scale, torch.zeros_like(scale)
            qmin, qmax = qrange(self.scheme.bits, self.scheme.symmetric)
            return scale, round_ste(_ScaleGrad.apply(self.zero, self.grad_factor)).clamp(qmin, qmax)
        lo, hi = self.observed_lo.detach(), self.observed_hi.detach()
        return scale_zero(lo, hi, self.scheme.bits, self.scheme.symmetric)

    def delta(self) -> torch.Tensor | None:
        """LoRA's ΔW on this layer (None without LoRA or with the adapter switched off)."""
        layer = self.lora
        if layer is None or layer.disable_adapters:
            return None
        # in full precision, as the export computes it (autocast would round B·A to bf16)
        with torch.autocast(layer.lora_B[layer.active_adapters[0]].weight.device.type, enabled=False):
            deltas = [layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A]
        return sum(deltas) if deltas else None

    def target(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight the grid holds: W, or W + ΔW under LoRA."""
        delta = self.delta()
        return weight if delta is None else weight + delta

    def fake_quantize(self, target: torch.Tensor) -> torch.Tensor:
        scale, zero = self.current()
        rows = as_rows(target)
        return fake_quantize_ste(rows, scale, zero, self.scheme, self.group_len).reshape(target.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.delta()
        target = weight if delta is None else weight + delta
        if self.training and self.scales == "moving_average":
            self._observe(target, weight)
        out = self.fake_quantize(target)
        return out if delta is None else out - delta  # peft adds ΔW·x itself

    def _observe(self, target: torch.Tensor, weight: torch.Tensor) -> None:
        # The version counters change with every in-place update (optimizer step, checkpoint load):
        # one average update per new value of the weights, however often they are read.
        key = (weight._version, *(p._version for p in self._lora_weights()))
        if key == self._seen:
            return
        self._seen = key
        with torch.no_grad():
            lo, hi = block_ranges(as_rows(target.detach().float()), self.scheme)
            self.observed_lo.add_(EMA_CONSTANT * (lo - self.observed_lo))
            self.observed_hi.add_(EMA_CONSTANT * (hi - self.observed_hi))

    def _lora_weights(self) -> list[torch.Tensor]:
        layer = self.lora
        if layer is None:
            return []
        names = [a for a in layer.active_adapters if a in layer.lora_A]
        return [w for a in names for w in (layer.lora_A[a].weight, layer.lora_B[a].weight)]

    def quantize(self, target: torch.Tensor) -> QuantizedWeight:
        """The integer codes of ``target`` with this layer's S and Z (the Quantize step's type)."""
        with torch.no_grad():
            scale, zero = self.current()
            rows = as_rows(target.detach())
            qmin, _ = qrange(self.scheme.bits, self.scheme.symmetric)
            blocks = quantize(_grouped(rows, self.group_len), scale.unsqueeze(-1), zero.unsqueeze(-1),
                              self.scheme.bits, self.scheme.symmetric)  # fmt: skip
            codes = _ungrouped(blocks, rows.shape[1]).to(torch.int8 if qmin < 0 else torch.uint8)
            return QuantizedWeight(codes, scale.float().clone(), zero.to(torch.int16), self.scheme)


# -- the method ---------------------------------------------------------------------------------
def apply(model: Any, settings: Any) -> Any:
    """The model ready to train: every decoder linear layer fake-quantized, LoRA or all weights trainable."""
    from core.finetune import methods
    from core.quant.calibration import linear_layers

    found = problems(settings)
    if methods.is_sequence_classifier(model):
        found.append("QAT trains language models: its result is a quantized causal LM")
    if found:
        raise QuantTuneError("The QAT settings have problems: " + "; ".join(found) + ".",
                             "Correct the settings listed.")  # fmt: skip
    layers = linear_layers(model)  # names before peft wraps the model: the saved model's names
    watch = settings.qat_watch or next(iter(layers), "")
    if watch not in layers:
        raise QuantTuneError(f"The model has no linear layer {watch!r} to watch.",
                             f"Pick one of its layers, e.g. {next(iter(layers), '(none)')}.")  # fmt: skip
    if settings.qat_lora:
        model = methods.METHODS["lora"].apply(model, settings)  # freezes the base first
    else:
        model.requires_grad_(True)
    loras = _lora_layers(model)
    scheme = scheme_of(settings)
    for name, linear in layers.items():
        quantizer = FakeQuantizer(linear.weight, scheme, settings.qat_scales, name, name == watch,
                                  loras.get(id(linear)))  # fmt: skip
        parametrize.register_parametrization(linear, "weight", quantizer)
    return model


def _lora_layers(model: Any) -> dict[int, Any]:
    """peft's LoRA layers by the id of the nn.Linear each wraps."""
    from peft.tuners.lora import LoraLayer

    return {id(m.get_base_layer()): m for m in model.modules() if isinstance(m, LoraLayer)}


def quantizers(model: Any) -> list[FakeQuantizer]:
    return [m for m in model.modules() if isinstance(m, FakeQuantizer)]


def _parametrized(model: Any) -> list[tuple[nn.Linear, FakeQuantizer]]:
    found = [m for m in model.modules() if parametrize.is_parametrized(m, "weight")]
    return [
        (m, m.parametrizations.weight[0])
        for m in found
        if isinstance(m.parametrizations.weight[0], FakeQuantizer)
    ]


def metrics(model: Any) -> dict[str, float]:
    """S and Z of the watched layer's first group (row 0, group 0): the Train pane plots them."""
    watched = next((q for q in quantizers(model) if q.watched), None)
    if watched is None:
        return {}
    with torch.no_grad():
        scale, zero = watched.current()
    return {"qat_scale": float(scale[0, 0]), "qat_zero_point": float(zero[0, 0])}


# -- the real quantized model -------------------------------------------------------------------
def to_quantized(model: Any) -> tuple[Any, dict[str, QuantizedWeight], float]:
    """(a plain transformers model holding the dequantized integer weights, {layer: codes and the
    learned S and Z}, the largest difference from the fake-quantized weights: 0 when faithful).

    Works on a copy; LoRA's update is inside the quantized weights, so its layers are dropped."""
    plain = copy.deepcopy(model)
    quantized, seen = {}, {}
    with torch.no_grad():
        for linear, quantizer in _parametrized(plain):
            target = quantizer.target(linear.parametrizations.weight.original)
            seen[quantizer.layer] = quantizer.fake_quantize(target)  # what the trained model computes with
            quantized[quantizer.layer] = quantizer.quantize(target)
    if hasattr(plain, "peft_config"):
        plain = plain.unload()  # LoRA layers out, the base layers back in place: names as before peft
    for name, q in quantized.items():
        plain.set_submodule(name, _plain_linear(plain.get_submodule(name), q.dequantize()))
    plain.requires_grad_(False)
    difference = max(float((plain.get_submodule(n).weight - w).abs().max()) for n, w in seen.items())
    return plain.eval(), quantized, difference


def _plain_linear(parametrized: nn.Linear, weight: torch.Tensor) -> nn.Linear:
    # A new module, not remove_parametrizations: a deep copy shares the parametrized class with the
    # trained model, and removing the property from it would strip the trained model too.
    original = parametrized.parametrizations.weight.original
    linear = nn.utils.skip_init(nn.Linear, parametrized.in_features, parametrized.out_features,
                                parametrized.bias is not None, device=original.device,
                                dtype=original.dtype)  # fmt: skip
    with torch.no_grad():
        linear.weight.copy_(weight.reshape(linear.weight.shape))
        if parametrized.bias is not None:
            linear.bias.copy_(parametrized.bias)
    return linear


def export_quantized(model: Any, settings: Any, folder: Path, tokenizer: Any, meta: dict | None = None,
                     files: dict | None = None) -> Path:  # fmt: skip
    """Write the trained model as a quanttune-int folder (core.quant.artifact), with the learned S and
    Z; it loads with core.models.loading like any model the Quantize step saved."""
    from core.quant.artifact import save_quantized

    plain, quantized, difference = to_quantized(model)
    scheme = scheme_of(settings)
    info = {"settings": asdict(settings), "scheme": scheme.label, "export_max_abs_difference": difference}
    return save_quantized(plain, tokenizer, quantized, Path(folder), {**(meta or {}), "qat": info}, files)


@dataclass
class QatComparison:
    qat: float  # perplexity of the exported QAT model
    ptq: float  # plain RTN of the unquantized base at the same scheme
    base: float  # the unquantized base
    scheme: str
    tokens: int
    export_max_abs_difference: float

    def to_dict(self) -> dict:
        return asdict(self)


def ptq_rtn(base: Any, scheme: Scheme) -> Any:
    """A copy of ``base`` with every decoder linear layer rounded to nearest (min-max ranges)."""
    from core.quant.calibration import linear_layers

    model = copy.deepcopy(base)
    with torch.no_grad():
        for linear in linear_layers(model).values():
            q = quantize_rtn(linear.weight, scheme)
            linear.weight.copy_(q.dequantize().reshape(linear.weight.shape))
    return model.eval()


def perplexity_on(model: Any, windows: torch.Tensor, ctx: Any = None) -> float:
    """exp(mean NLL) over the token windows [n, length], each scored alone (as core.evaluate.perplexity)."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for window in windows:
            if ctx is not None:
                ctx.check_cancelled()
            ids = window.unsqueeze(0).to(device)
            total += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    return math.exp(total / max(1, tokens))


def compare_with_ptq(loaded: Any, trained: Any, settings: Any, windows: torch.Tensor,
                     ctx: Any = None) -> QatComparison:  # fmt: skip
    """Perplexity on the same windows of the exported QAT model, plain RTN of the loaded base at the
    same bits, groups and symmetry, and the unquantized base."""
    exported, _quantized, difference = to_quantized(trained)
    qat = perplexity_on(exported, windows, ctx)
    del exported
    ptq = perplexity_on(ptq_rtn(loaded.model, scheme_of(settings)), windows, ctx)
    base = perplexity_on(loaded.model, windows, ctx)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    return QatComparison(qat, ptq, base, scheme_of(settings).label, tokens, difference)


def finish(model: Any, params: Any, ctx: Any) -> QatComparison:
    """After training: compare with PTQ on the bundled held-out text and save the integer model in
    ``<output>/quantized`` (the comparison beside it, in qat_report.json)."""
    from core.evaluate.perplexity import bundled_text, windows_of

    loaded = params.loaded
    ctx.stage("Comparing the QAT model with plain quantization")
    context = getattr(loaded.model.config, "max_position_embeddings", 512) or 512
    window = min(512, context)
    windows = windows_of(loaded.tokenizer, bundled_text("heldout"), window, 8 * window)
    comparison = compare_with_ptq(loaded, model, params.method, windows, ctx)
    ctx.emit("log", message=f"QAT {comparison.scheme}: perplexity {comparison.qat:.2f} exported, "
             f"{comparison.ptq:.2f} with plain RTN, {comparison.base:.2f} unquantized")  # fmt: skip
    ctx.stage("Saving the quantized model with the learned scales")
    meta = {"base_model": loaded.ref.to_dict(), "comparison": comparison.to_dict()}
    export_quantized(model, params.method, Path(params.output) / EXPORT_FOLDER, loaded.tokenizer, meta,
                     {REPORT_FILE: comparison.to_dict()})  # fmt: skip
    return comparison
