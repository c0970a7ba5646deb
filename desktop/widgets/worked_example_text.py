"""The words and tables of the Scales view: a tensor's S and Z summary, a block's name, and the
worked example x → q → x′ as HTML (no Qt: the pane, the view and tests share these)."""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.quant.explain import BlockRow, ScaleRow, WorkedExample
    from core.quant.qtensor import QuantizedWeight

NO_WEIGHT = (
    "The base model is not loaded, so the original FP32 weights x of this block are not at hand "
    "and x → q → x′ cannot be shown. Load the base model to see this block worked through."
)


def num(value: float | int, digits: int = 4) -> str:
    """A number for display: ``digits`` significant digits, with a true minus sign."""
    if isinstance(value, int):
        return str(value).replace("-", "−")
    if not math.isfinite(value):
        return {math.inf: "∞", -math.inf: "−∞"}.get(value, "NaN")
    return f"{value:.{digits}g}".replace("-", "−")


# -- the export job ----------------------------------------------------------------------------


# -- text of the tree and of the worked example ------------------------------------------------
def tensor_texts(row: ScaleRow) -> list[str]:
    scales = (
        num(row.scale_min)
        if row.pairs == 1
        else f"{num(row.scale_min)} · {num(row.scale_median)} · {num(row.scale_max)}"
    )
    zero = "0" if row.zero_min is None else f"{row.zero_min}–{row.zero_max}"
    return [row.name, row.scheme, f"{row.pairs:,}", scales, zero]


def block_label(block: BlockRow) -> str:
    rows = f"row {block.row}" if block.last_row == block.row else f"rows {block.row}–{block.last_row}"
    group = f" · group {block.group}" if block.group else ""
    return f"{rows}{group} · cols {block.first_col}–{block.last_col}"


def step_rows(e: WorkedExample) -> list[list[str]]:
    """The example's table: one row per step of x → q → x′ (its name first), one column per
    sample value. Read down a column to follow one weight through quantization."""
    steps = [("x", lambda s: num(s.x)), ("x / S", lambda s: num(s.x_over_s)),
             ("round(x / S)", lambda s: num(s.rounded))]  # fmt: skip
    if not e.symmetric:
        steps.append(("+ Z", lambda s: num(s.shifted)))
    steps += [
        (f"q = clamp(·, {num(e.qmin)}, {num(e.qmax)})", lambda s: num(s.q)),
        ("x′ = S·(q − Z)", lambda s: num(s.x_hat)),
        ("error x − x′", lambda s: num(s.error, 3)),
        ("clipped", lambda s: "yes" if s.clipped else "no"),
    ]
    if any(s.stored_q != s.q for s in e.samples):
        steps.append(("stored q", lambda s: num(s.stored_q)))
    return [[title, *(cell(s) for s in e.samples)] for title, cell in steps]


def _table(e: WorkedExample) -> str:
    # Headers may wrap between words; numbers never (a wrapped 0.0001857 reads as two numbers).
    head = "".join(f"<th>{escape(s.label)}<br>({s.row}, {s.col})</th>" for s in e.samples)
    body = "".join(
        "<tr>" + "".join(f"<td style='white-space:nowrap'>{escape(c)}</td>" for c in row) + "</tr>"
        for row in step_rows(e)
    )
    return f"<table cellspacing='0' cellpadding='3' border='1'><tr><th></th>{head}</tr>{body}</table>"


def _where(e: WorkedExample) -> str:
    rows = f"row {e.row}" if e.rows[0] == e.rows[1] else f"rows {e.rows[0]}–{e.rows[1]}"
    return f"{rows}, columns {e.cols[0]}–{e.cols[1]}"


def example_html(e: WorkedExample) -> str:
    n = e.values.numel()
    formulas = "<br>".join(escape(f) for f in e.formulas)
    summary = (
        f"Whole block: {n:,} values · MSE {num(e.mse)} · SQNR {num(e.sqnr_db)} dB · "
        f"{e.clipped:,} of {n:,} clipped (outside [lo, hi])"
    )
    regrouped = [s for s in e.samples if s.stored_q != s.q]
    note = (
        f"<p>The stored codes of {len(regrouped)} of these values differ from rounding x with this "
        "S and Z: the method chose them by more than rounding (GPTQ, for one).</p>"
        if regrouped
        else ""
    )
    return (
        f"<p><b>{escape(e.name)}</b> — {_where(e)} · {escape(e.scheme)}</p>"
        f"<p style='font-family:monospace'>{formulas}</p>"
        f"{_table(e)}<p>{escape(summary)}</p>{note}"
    )


def no_weight_html(name: str, q: QuantizedWeight, block: BlockRow) -> str:
    from core.quant.affine import qrange

    qmin, qmax = qrange(q.scheme.bits, q.scheme.symmetric)
    s, z = block.scale, block.zero
    return (
        f"<p><b>{escape(name)}</b> — {escape(block_label(block))} · {escape(q.scheme.label)}</p>"
        f"<p style='font-family:monospace'>S = {num(s)}, Z = {num(z)}: the range [lo, hi] = "
        f"[{num(s * (qmin - z))}, {num(s * (qmax - z))}], codes q ∈ [{num(qmin)}, {num(qmax)}]</p>"
        f"<p>{escape(NO_WEIGHT)}</p>"
    )
