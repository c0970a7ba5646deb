"""The Quantize job: post-training quantization of a loaded model, with a report that shows its
work (per-layer error, size and perplexity before and after) and a folder that reloads exactly.

Recipe: copy the model → measure it → quantize every chosen linear layer (RTN, or GPTQ on
calibration data) → measure again → save. The loaded model itself is never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import QuantTuneError
from core.quant.affine import GRANULARITIES, Scheme, quant_error
from core.quant.embeddings import include_head
from core.quant.weight_ranges import WEIGHT_OBSERVERS

INT_PRECISIONS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2}
FLOAT_PRECISIONS = {"fp16": 16, "bf16": 16}
BNB_PRECISIONS = {"nf4": 4, "fp4": 4, "int8": 8}  # with method "bitsandbytes"
METHODS = ("rtn", "gptq", "awq", "bitsandbytes")
LAYER_PRECISIONS = (*INT_PRECISIONS, "fp16", "fp32")


@dataclass(frozen=True)
class QuantizeParams:
    loaded: Any = field(compare=False, repr=False)  # core.models.loading.LoadedModel
    precision: str = "int4"
    symmetric: bool = False
    granularity: str = "group"
    group_size: int = 64
    method: str = "rtn"
    observer: str = "minmax"
    percentile: float = 99.99
    include_head: bool = False
    include_embeddings: bool = False  # the token embeddings too (a tied LM head follows them)
    keep_layers: tuple[str, ...] = ()  # layers whose name contains one of these stay in FP32
    # (layer name, precision) pairs: these layers at another precision than the rest
    # ("int8", "int4", "int3", "int2" with the same scheme; "fp16"; "fp32" = left as it is)
    overrides: tuple[tuple[str, str], ...] = ()
    calibration_text: str = field(default="", repr=False)  # empty: the bundled calibration text
    calibration_samples: int = 21
    calibration_seq_len: int = 512
    eval_text: str = field(default="", repr=False)  # empty: the bundled held-out text
    eval_window: int = 512
    eval_max_tokens: int = 4096
    measure_perplexity: bool = True
    output: str = ""  # folder to save into; empty: keep in memory only
    budget_mb: float = 0.0  # > 0: bits per layer chosen from measured sensitivity to fit this size
    activations: bool = False  # W8A8: the layers' inputs too, with static ranges from calibration
    activation_observer: str = "minmax"  # how those ranges are chosen
    smoothquant: bool = False  # W8A8: move activation outliers into the weights first
    smooth_alpha: float = 0.5

    def validate(self) -> list[str]:
        problems = []
        known = {**INT_PRECISIONS, **FLOAT_PRECISIONS, **BNB_PRECISIONS}
        if self.precision not in known:
            problems.append(f"unknown precision {self.precision!r} (choose {', '.join(known)})")
        problems += self._bnb_problems()
        if self.granularity not in GRANULARITIES:
            problems.append(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group" and self.group_size not in (32, 64, 128, 256):
            problems.append(f"group size must be 32, 64, 128 or 256 (got {self.group_size})")
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}")
        if self.observer not in WEIGHT_OBSERVERS:
            problems.append(f"weight observer must be one of {', '.join(WEIGHT_OBSERVERS)}")
        if self.precision in FLOAT_PRECISIONS and self.method == "gptq":
            problems.append("GPTQ is for integer precisions; FP16/BF16 are plain casts")
        if self.method == "gptq" and (self.calibration_samples < 1 or self.calibration_seq_len < 16):
            problems.append("GPTQ needs at least one calibration sample of 16 tokens or more")
        for name, precision in self.overrides:
            if precision not in LAYER_PRECISIONS:
                problems.append(f"layer {name}: unknown precision {precision!r} "
                                f"(choose {', '.join(LAYER_PRECISIONS)})")  # fmt: skip
        problems += self._activation_problems()
        if self.include_embeddings and (
            self.precision not in INT_PRECISIONS or self.method == "bitsandbytes"
        ):
            problems.append(
                "embeddings are quantized to integers by the affine methods (not FP16/BF16, NF4/FP4)"
            )
        if self.budget_mb > 0 and self.precision not in INT_PRECISIONS:
            problems.append("a size budget chooses integer bits per layer: pick INT8, INT4, INT3 or INT2")
        if not 50.0 < self.percentile < 100.0:
            problems.append("the percentile must lie between 50 and 100")
        return problems

    def _activation_problems(self) -> list[str]:
        from core.quant.observers import OBSERVERS

        problems = []
        if self.method == "awq" and self.precision not in INT_PRECISIONS:
            problems.append("AWQ is for integer precisions")
        if self.activations and (self.precision != "int8" or self.method == "bitsandbytes"):
            problems.append("activations are quantized with INT8 weights (W8A8) by RTN, GPTQ or AWQ")
        if self.smoothquant and not self.activations:
            problems.append("SmoothQuant prepares W8A8: quantize the activations too, or turn it off")
        if self.activation_observer not in OBSERVERS:
            problems.append(f"activation observer must be one of {', '.join(OBSERVERS)}")
        if not 0.0 <= self.smooth_alpha <= 1.0:
            problems.append("SmoothQuant's α lies between 0 and 1")
        return problems

    def _bnb_problems(self) -> list[str]:
        if self.precision in ("nf4", "fp4") and self.method != "bitsandbytes":
            return [f"{self.precision.upper()} is a bitsandbytes data type: choose the method bitsandbytes"]
        if self.method != "bitsandbytes":
            return []
        problems = []
        if self.precision not in BNB_PRECISIONS:
            problems.append("bitsandbytes quantizes to NF4, FP4 or INT8 (LLM.int8()) only")
        if self.overrides or self.keep_layers:
            problems.append(
                "bitsandbytes quantizes every linear layer alike: remove the per-layer precisions"
            )
        return problems

    @property
    def scheme(self) -> Scheme:
        return Scheme(
            INT_PRECISIONS.get(self.precision, 8), self.symmetric, self.granularity, self.group_size
        )

    def layer_precision(self, name: str) -> str:
        """The precision one layer gets: its override, FP32 when kept, else the model's."""
        if any(k and k in name for k in self.keep_layers):
            return "fp32"
        return dict(self.overrides).get(name, self.precision)


@dataclass
class LayerReport:
    name: str
    params: int
    mse: float
    sqnr_db: float
    bits: int


@dataclass
class QuantizeReport:
    settings: dict[str, Any]
    layers: list[LayerReport]
    size_before_bytes: int
    size_after_bytes: int
    perplexity_before: float | None
    perplexity_after: float | None
    seconds: float
    output: str = ""
    fingerprint: dict[str, Any] | None = None  # see core.quant.runs.output_fingerprint
    activations: dict[str, Any] | None = None  # W8A8: static input ranges (activations.ranges_to_json)
    model: Any = field(default=None, repr=False, compare=False)  # the quantized model, in memory
    quantized: dict | None = field(default=None, repr=False, compare=False)  # layer -> QuantizedWeight
    # the FP32 weights that were rounded where they differ from the loaded model's (AWQ, SmoothQuant)
    reference: dict | None = field(default=None, repr=False, compare=False)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.size_after_bytes / max(1, self.parameters)

    @property
    def parameters(self) -> int:
        return self.settings.get("parameters", 0)

    def to_dict(self) -> dict[str, Any]:
        skip = ("model", "quantized", "reference", "layers")
        data = {f: getattr(self, f) for f in self.__dataclass_fields__ if f not in skip}
        data["bits_per_weight"] = self.bits_per_weight
        data["layers"] = [_finite(asdict(layer)) for layer in self.layers]
        return data


def _finite(row: dict) -> dict:
    # JSON has no infinity: an exactly representable layer has SQNR "inf"
    return {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()}


def run(params: QuantizeParams, ctx) -> QuantizeReport:
    started = time.monotonic()
    source = params.loaded
    ppl_before = _perplexity(source.model, source.tokenizer, params, ctx, "before")
    bnb = params.method == "bitsandbytes"
    model, quantized, layers, after, params, reference = (_quantize_bnb if bnb else _quantize_affine)(
        params, ctx
    )
    ppl_after = _perplexity(model, source.tokenizer, params, ctx, "after")
    settings = {
        k: v for k, v in asdict(params).items() if k not in ("loaded", "calibration_text", "eval_text")
    }
    scheme = f"bitsandbytes {params.precision.upper()}" if bnb else params.scheme.label
    settings.update(model=source.card.name, parameters=_parameters(source.model), scheme=scheme)
    report = QuantizeReport(
        settings,
        layers,
        _parameters(source.model) * 4,
        after,
        ppl_before,
        ppl_after,
        time.monotonic() - started,
    )
    report.activations = getattr(model, "quanttune_activations", None)
    ctx.check_cancelled()  # a cancel late in the run must not leave a saved model behind
    if params.output:
        from core.quant.runs import output_fingerprint

        report.fingerprint = output_fingerprint(model, source.tokenizer)
        (_save_bnb if bnb else _save)(model, source, quantized, params, report, ctx)
    # for the S and Z view, "Ask", evaluation
    report.model, report.quantized, report.reference = model, quantized, reference
    return report


def _quantize_affine(params: QuantizeParams, ctx):
    """Integer (RTN, GPTQ) or FP16/BF16: (model, {layer: QuantizedWeight}, layer reports, bytes)."""
    source = params.loaded
    ctx.stage("Copying the model (the loaded one stays as it is)")
    model = copy.deepcopy(source.model)
    if params.budget_mb > 0:
        from core.quant.mixed import budget_overrides

        params = dataclasses.replace(params, overrides=budget_overrides(model, source.tokenizer, params, ctx))
    prepared = _prepare(model, source.tokenizer, params, ctx)
    if params.precision in FLOAT_PRECISIONS:
        quantized, names = {}, _cast(model, params.precision)
    else:
        quantized = _quantize_int(model, source.tokenizer, params, ctx)
        names = list(_linear_names(model, params))
        if params.include_embeddings:
            from core.quant.embeddings import quantize_embeddings

            embedded = quantize_embeddings(model, params, ctx)
            quantized.update(embedded)
            names = [*embedded, *names]
    if prepared is not None:
        from core.quant import activation_aware

        activation_aware.attach(model, prepared)
        model.quanttune_activations = prepared.to_json()  # travels with the model: reports, saving
    reference = prepared.reference if prepared is not None else {}
    layers = _layer_reports(source.model, model, names, params, reference)
    return model, quantized, layers, _sizes(source.model, quantized, params)[1], params, reference


def _prepare(model, tokenizer, params: QuantizeParams, ctx):
    """AWQ / SmoothQuant / W8A8 ranges on the copy before rounding (None: not asked for)."""
    from core.quant import activation_aware, calibration

    if not activation_aware.needed(params):
        return None
    layers = calibration.linear_layers(model, include_head=include_head(model, params))
    layers = {n: m for n, m in layers.items() if params.layer_precision(n) in INT_PRECISIONS}
    return activation_aware.prepare(model, tokenizer, params, layers, ctx)


def _quantize_bnb(params: QuantizeParams, ctx):
    """bitsandbytes LLM.int8() / NF4 / FP4 layers: real memory savings when the model runs."""
    from core.quant import bnb

    source = params.loaded
    skip = () if params.include_head else ("lm_head",)
    result = bnb.quantize_bnb(source.model, source.tokenizer, params.precision, skip_modules=skip, ctx=ctx)
    layers = []
    for name in result.layers:
        original = source.model.get_submodule(name).weight.detach()
        error = quant_error(original, result.dequantized_weight(name).reshape(original.shape))
        bits = BNB_PRECISIONS[params.precision]
        layers.append(LayerReport(name, original.numel(), error.mse, error.sqnr_db, bits))
    return result.model, None, layers, result.weights_bytes, params, {}


def _quantize_int(model, tokenizer, params: QuantizeParams, ctx) -> dict:
    from core.quant import calibration, gptq
    from core.quant.qtensor import as_rows, quantize_with_ranges
    from core.quant.weight_ranges import weight_ranges

    layers = calibration.linear_layers(model, include_head=include_head(model, params))
    _cast_layers(model, [n for n in layers if params.layer_precision(n) == "fp16"], "fp16")
    layers = {n: m for n, m in layers.items() if params.layer_precision(n) in INT_PRECISIONS}
    scheme = params.scheme

    def quantize_layer(name, linear, hessian):
        scheme = dataclasses.replace(params.scheme, bits=INT_PRECISIONS[params.layer_precision(name)])
        rows = as_rows(linear.weight.detach().float())
        lo, hi = weight_ranges(rows, scheme, params.observer, params.percentile)
        if hessian is None:
            return quantize_with_ranges(rows, lo, hi, scheme)
        return gptq.gptq_quantize(
            rows, hessian, scheme, ranges=(lo, hi), name=name, check_cancelled=ctx.check_cancelled
        )

    batches = None
    if params.method == "gptq":
        from core.evaluate.perplexity import bundled_text

        text = params.calibration_text or bundled_text("calibration")
        batches = calibration.calibration_batches(tokenizer, text, params.calibration_samples,
                                                  params.calibration_seq_len)  # fmt: skip
    ctx.stage(f"Quantizing {len(layers)} layers ({params.method.upper()}, {scheme.label})")
    return calibration.quantize_sequential(
        model, batches, quantize_layer, ctx, needs_hessian=params.method == "gptq", layers=layers
    )


def _cast(model, precision: str) -> list[str]:
    """FP16/BF16: every floating weight rounded to the half format (computed back in FP32)."""
    import torch

    names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(_HALF[precision]).float())
    return names


def _cast_layers(model, names: list[str], precision: str) -> None:
    import torch

    with torch.no_grad():
        for name in names:
            weight = model.get_submodule(name).weight
            weight.copy_(weight.to(_HALF[precision]).float())


class _Half(dict):
    def __missing__(self, key):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16}[key]


_HALF = _Half()  # precision -> torch dtype, without importing torch at module import


def _linear_names(model, params: QuantizeParams) -> list[str]:
    from core.quant.calibration import linear_layers

    return list(linear_layers(model, include_head=include_head(model, params)))


PRECISION_BITS = {**INT_PRECISIONS, **FLOAT_PRECISIONS, "fp32": 32}


def _layer_reports(original, quantized_model, names: list[str], params: QuantizeParams,
                   reference: dict) -> list[LayerReport]:  # fmt: skip
    """Each layer's weight error; against ``reference`` (weights rescaled by AWQ or SmoothQuant,
    what was rounded) where given, else against the original."""
    reports = []
    for name in names:
        bits = PRECISION_BITS[params.layer_precision(name)]
        w = reference.get(name, original.get_submodule(name).weight)
        w_hat = quantized_model.get_submodule(name).weight
        error = quant_error(w.detach(), w_hat.detach())
        reports.append(LayerReport(name, w.numel(), error.mse, error.sqnr_db, bits))
    return reports


def _perplexity(model, tokenizer, params: QuantizeParams, ctx, when: str) -> float | None:
    if not params.measure_perplexity:
        return None
    from core.evaluate import perplexity as ppl

    text = params.eval_text or ppl.bundled_text("heldout")
    ctx.stage(f"Measuring perplexity {when}")
    sub = ppl.PerplexityParams(model, tokenizer, text, params.eval_window, params.eval_max_tokens)
    problems = sub.validate()
    if problems:
        raise QuantTuneError("The evaluation text cannot be used: " + "; ".join(problems) + ".",
                             "Pick a longer evaluation text.")  # fmt: skip
    return ppl.run(sub, ctx).perplexity


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def _sizes(model, quantized: dict, params: QuantizeParams) -> tuple[int, int]:
    """Bytes of the weights before (FP32) and after: quantized layers packed at their bits with
    their scales, cast models at 2 bytes, everything else as it was."""
    before = _parameters(model) * 4
    if params.precision in FLOAT_PRECISIONS:
        return before, before // 2
    halves = [n for n in _linear_names(model, params) if params.layer_precision(n) == "fp16"]
    half = sum(model.get_submodule(name).weight.numel() for name in halves)
    replaced = sum(model.get_submodule(name).weight.numel() for name in quantized)
    kept = _parameters(model) - replaced - half
    return before, kept * 4 + half * 2 + sum(q.nbytes_packed for q in quantized.values())


def _save(model, source, quantized: dict, params: QuantizeParams, report: QuantizeReport, ctx) -> None:
    from core.quant.artifact import save_quantized

    ctx.stage(f"Saving to {params.output}")
    meta = {"base_model": source.ref.to_dict(), "report": report.to_dict()}
    if report.activations:
        meta["activations"] = report.activations
    dtype = _HALF[params.precision] if params.precision in FLOAT_PRECISIONS else None
    files = {"report.json": report.to_dict()}
    folder = save_quantized(model, source.tokenizer, quantized, Path(params.output), meta, files, dtype)
    report.output = str(folder)


def _save_bnb(model, source, _quantized, params: QuantizeParams, report: QuantizeReport, ctx) -> None:
    from core.quant.bnb import save_bnb

    ctx.stage(f"Saving to {params.output}")
    meta = {"base_model": source.ref.to_dict(), "report": report.to_dict()}
    folder = save_bnb(model, source.tokenizer, Path(params.output), meta, {"report.json": report.to_dict()})
    report.output = str(folder)
