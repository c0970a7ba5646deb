"""The Precision step's words and formulas: what each precision means, the scheme's formulas as
used, and notes on the recommendation and the granularity (shared by the pane and its tests)."""

from __future__ import annotations

from typing import Any

# (key, menu text, what it means)
PRECISIONS = (
    ("int8", "INT8", "256 levels per weight: usually within 1% of the original quality."),
    ("int4", "INT4", "16 levels: a quarter of INT8's size; the method and the groups matter."),
    ("int3", "INT3", "8 levels: small, lossy; GPTQ or AWQ and small groups are needed."),
    ("int2", "INT2", "4 levels: an experiment; expect a large loss."),
    ("nf4", "NF4", "bitsandbytes' 4-bit NormalFloat: levels placed for normally distributed weights."),
    ("fp4", "FP4", "bitsandbytes' 4-bit floating point."),
    ("fp16", "FP16", "Half precision: every weight rounded to 16-bit floating point."),
    ("bf16", "BF16", "bfloat16: FP32's range with 8 bits of mantissa."),
)
INTEGER = ("int8", "int4", "int3", "int2")
GRANULARITIES = (
    ("tensor", "Per tensor", "one S (and Z) for the whole tensor"),
    ("channel", "Per channel", "one S (and Z) per output channel (row)"),
    ("group", "Group-wise", "one S (and Z) per group of consecutive weights in a row"),
)
GROUP_SIZES = (32, 64, 128)
GGUF_GROUP_HINT = (
    "This model's weights came from a 4-bit GGUF with groups of 32: quantizing at group 32 "
    "reproduces them almost exactly and flatters every method. Compare methods at 64."
)


def formula_html(bits: int, symmetric: bool) -> str:
    """The scheme's formulas at ``bits``, as used (the standard sign of Z)."""
    if symmetric:
        top = 2 ** (bits - 1) - 1
        return (
            f"S = max|x| / (2<sup>{bits}−1</sup> − 1) = max|x| / {top},&nbsp; Z = 0,&nbsp; "
            f"q = clamp(round(x / S), −{top}, {top}),&nbsp; x′ = S·q"
        )
    top = 2**bits - 1
    return (
        f"S = (max − min) / (2<sup>{bits}</sup> − 1) = (max − min) / {top},&nbsp; "
        f"Z = round(−min / S),&nbsp; q = clamp(round(x / S) + Z, 0, {top}),&nbsp; x′ = S·(q − Z)"
        "<br><span style='color:#6b7078'>The range [min, max] is widened to include 0, so 0 is stored "
        "exactly. (Some texts write Z = round(min / S): that is the same offset with the opposite "
        "sign convention.)</span>"
    )


def float_formula(precision: str) -> str:
    if precision in ("nf4", "fp4"):
        return (
            f"{precision.upper()}: each block of 64 weights is divided by its absolute maximum and "
            "rounded to the nearest of 16 fixed levels; the block maxima are themselves quantized "
            "to 8 bits (double quantization). Symmetry and granularity are fixed by the format."
        )
    return f"{precision.upper()}: each weight rounded to the nearest {precision.upper()} number; no S or Z."


def recommendation_text(recs: dict) -> str:
    if not recs:
        return "Run the Inspect step to get a recommendation from the weights themselves."
    sym = sum(1 for r in recs.values() if r.get("symmetric"))
    asym = len(recs) - sym
    choice = "symmetric" if sym > asym else "asymmetric"
    return f"Inspect recommended {choice}: asymmetric for {asym} tensors, symmetric for {sym}."


def granularity_text(s: Any, loaded: Any) -> str:
    tip = next(tip for key, _, tip in GRANULARITIES if key == s.granularity)
    text = tip[0].upper() + tip[1:] + "."
    if s.granularity == "group" and loaded is not None:
        from core.quant.plan import quantizable_layers

        widths = {shape[-1] for shape in quantizable_layers(loaded.model).values()}
        odd = sorted(w for w in widths if w % s.group_size)
        if odd:
            text += f" Rows {', '.join(map(str, odd))} wide end with a shorter group."
        if s.group_size == 32 and loaded.ref.kind in ("default", "gguf"):
            text += " " + GGUF_GROUP_HINT
    return text
