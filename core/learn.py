"""The Learn panel's texts: each step's concept in the product's own words, with the loaded
model's numbers filled in where they apply. Texts live in resources/learn/<step>.html."""

from __future__ import annotations

import html
from importlib import resources
from string import Template
from typing import Any

INT_GROUP_SIZE = 64  # the group size the memory table assumes for INT8/INT4 scales


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} K"
    return str(n)


def _memory_table(numbers: dict[str, Any]) -> str:
    memory = numbers.get("memory_bytes")
    params = numbers.get("parameters")
    if not memory or not params:
        return "<p><i>Load a model to see these numbers for it.</i></p>"
    name = html.escape(str(numbers.get("name", "this model")))
    rows = "".join(
        f"<tr><td>{precision}</td><td align='right'>{format_bytes(size)}</td>"
        f"<td align='right'>{size * 8 / params:.2f}</td></tr>"
        for precision, size in memory.items()
    )
    return (
        f"<p>For <b>{name}</b>, N = {params:,} weights:</p>"
        "<table border='1' cellspacing='0' cellpadding='4'>"
        "<tr><th>precision</th><th>weights in memory</th><th>bits per weight</th></tr>"
        f"{rows}</table>"
    )


def _tensor_block(numbers: dict[str, Any]) -> str:
    if "skew" not in numbers:
        return "<p><i>Select a tensor in the table to see these numbers for it.</i></p>"
    n = {k: html.escape(str(v)) if isinstance(v, str) else v for k, v in numbers.items()}
    return (
        f"<p><b>{n['tensor']}</b>: mean {n['mean']:.4g}, std {n['std']:.4g} (|mean|/std = "
        f"{abs(n['mean']) / n['std'] if n['std'] else float('nan'):.3g}), skewness {n['skew']:.3g}, "
        f"excess kurtosis {n['kurtosis']:.3g}, {100 * n['outliers']:.3g}% of values beyond "
        f"{n['k']:g}&middot;std.</p>"
        f"<p>At INT{n['bits']}, per tensor: symmetric S = {n['sym_scale']:.4g}, Z = 0 (range "
        f"&plusmn;{n['sym_hi']:.4g}); asymmetric S = {n['asym_scale']:.4g}, Z = {n['asym_zero']} "
        f"(range {n['asym_lo']:.4g} to {n['asym_hi']:.4g}).</p>"
        f"<p>Rule of thumb: {n['rule']}. Measured: <b>{n['recommendation']}</b>.</p>"
    )


_BLOCKS = {"load": _memory_table, "inspect": _tensor_block}


def render(step: str, numbers: dict[str, Any] | None = None) -> str:
    """HTML for the Learn panel of ``step``; ``numbers`` fill in the loaded model's or the selected
    tensor's values (may be empty: the text then says where they will come from)."""
    numbers = numbers or {}
    text = resources.files("resources").joinpath("learn", f"{step}.html").read_text("utf-8")
    block = _BLOCKS.get(step)
    # Plain values fill same-named placeholders (escaped); a step's block fills $numbers.
    values = {k: html.escape(str(v)) for k, v in numbers.items() if isinstance(v, str | int | float)}
    defaults = {k: "…" for k in _placeholders(text)}
    return Template(text).safe_substitute(
        {**defaults, **values, "numbers": block(numbers) if block else "", "group": INT_GROUP_SIZE}
    )


def _placeholders(text: str) -> set[str]:
    return {m.group("named") or m.group("braced") for m in Template.pattern.finditer(text)} - {None}
