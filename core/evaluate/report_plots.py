"""The report's numbers as shown (formatted, best per metric) and its plots, as PNG data URIs.

Plots are drawn on matplotlib ``Figure`` objects with an Agg canvas attached directly, which leaves
pyplot's global backend (and so any Qt backend) untouched; matplotlib is imported on first use.
"""

from __future__ import annotations

import io
import math
from typing import Any

from core.evaluate import metrics as eval_metrics
from core.evaluate.curves import Curves
from core.evaluate.results import Evaluation, KFoldResult
from core.learn import format_bytes

DASH = "—"


# -- numbers --------------------------------------------------------------------------------------
def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def metric_info(key: str) -> eval_metrics.Metric:
    return eval_metrics.METRICS.get(key) or eval_metrics.Metric(key, key, "", scale="ratio")


def format_metric(key: str, value: Any) -> str:
    """A score as the table shows it; "—" when there is none (None, NaN, infinite)."""
    return DASH if number(value) is None else eval_metrics.format_value(key, float(value))


def format_cost(key: str, value: Any) -> str:
    found = number(value)
    if found is None:
        return DASH
    return f"{found:.1f}" if key == "tokens_per_second" else format_bytes(found)


def chart_scale(key: str) -> float:
    """What a chart multiplies by to show what the table shows (fractions as %)."""
    return 100.0 if metric_info(key).scale == "fraction" else 1.0


def metric_keys(evaluation: Evaluation) -> list[str]:
    """The evaluation's metrics in order, then any other score a variant carries."""
    keys = list(evaluation.metrics)
    for variant in evaluation.variants:
        keys += [k for k in variant.scores if k not in keys]
    return keys


def scored_keys(evaluation: Evaluation) -> list[str]:
    """The metrics at least one variant has a value for (the charts draw only those)."""
    return [
        k
        for k in metric_keys(evaluation)
        if any(number(v.scores.get(k)) is not None for v in evaluation.variants)
    ]


def best_values(evaluation: Evaluation) -> dict[str, float]:
    """metric -> the best value any variant reached (the table bolds it)."""
    best = {}
    for key in scored_keys(evaluation):
        values = [x for x in (number(v.scores.get(key)) for v in evaluation.variants) if x is not None]
        best[key] = max(values) if metric_info(key).higher_is_better else min(values)
    return best


def clean(obj: Any) -> Any:
    """JSON-safe: NaN and infinities become null (JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


# -- plots ----------------------------------------------------------------------------------------
def figure(width: float, height: float) -> Any:
    # lazy: the app pays for matplotlib only when it exports; an Agg canvas of its own, no pyplot
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_uri(fig: Any) -> str:
    import base64
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a label may hold a character no bundled font draws: a box is fine
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from", category=UserWarning)
        fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def short_label(text: str, n: int = 32) -> str:
    """A label cut in the middle: variants differ at the end as often as at the start
    ("LoRA r8 · units" and "LoRA r8 · units → INT4 … GPTQ")."""
    if len(text) <= n:
        return text
    head = (n - 1) // 2
    return text[:head] + "…" + text[len(text) - (n - 1 - head) :]


def grid(fig: Any, count: int, cols: int) -> list[Any]:
    rows = math.ceil(count / cols)
    return [fig.add_subplot(rows, cols, n + 1) for n in range(count)]


def metric_bars_png(evaluation: Evaluation) -> str | None:
    """One horizontal bar chart per metric (a bar per variant), in one image."""
    keys, variants = scored_keys(evaluation), evaluation.variants
    if not keys:
        return None
    cols = min(2, len(keys))
    fig = figure(5.2 * cols, math.ceil(len(keys) / cols) * (0.8 + 0.32 * len(variants)))
    for ax, key in zip(grid(fig, len(keys), cols), keys, strict=True):
        values = [number(v.scores.get(key)) for v in variants]
        bars = ax.barh(range(len(variants)), [(x or 0.0) * chart_scale(key) for x in values], color="#4c72b0")
        ax.bar_label(bars, labels=[format_metric(key, x) for x in values], padding=3, fontsize=8)
        ax.set_yticks(range(len(variants)), [short_label(v.label) for v in variants], fontsize=8)
        ax.invert_yaxis()
        ax.margins(x=0.25)
        better = "higher" if metric_info(key).higher_is_better else "lower"
        ax.set_title(f"{metric_info(key).title} ({better} is better)", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
    return png_uri(fig)


def cost_png(evaluation: Evaluation) -> str | None:
    """The first metric with values against model size and against speed: what quality costs."""
    keys = scored_keys(evaluation)
    if not keys:
        return None
    key, panels = keys[0], []
    for cost, title, scale in (
        ("size_bytes", "Size (MB)", 1e-6),
        ("tokens_per_second", "Tokens per second", 1),
    ):
        points = [(number(getattr(v, cost)), number(v.scores.get(key)), v.label) for v in evaluation.variants]
        points = [
            (x * scale, y * chart_scale(key), name)
            for x, y, name in points
            if x is not None and y is not None
        ]
        if points:
            panels.append((title, points))
    if not panels:
        return None
    fig = figure(5.0 * len(panels), 3.6)
    for ax, (title, points) in zip(grid(fig, len(panels), len(panels)), panels, strict=True):
        ax.scatter([p[0] for p in points], [p[1] for p in points], color="#dd8452", zorder=3)
        for x, y, name in points:
            ax.annotate(short_label(name, 22), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(title, fontsize=8)
        ax.set_ylabel(metric_info(key).title + (" (%)" if chart_scale(key) == 100 else ""), fontsize=8)
        ax.margins(x=0.25, y=0.12)  # room for the names beside the points
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    return png_uri(fig)


def curves_png(curves: Curves) -> str | None:
    """Training loss (raw, faint, and smoothed), validation loss, validation accuracy on its own axis."""
    if not curves.train_steps and not curves.val_steps:
        return None
    fig = figure(7.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curves.train_steps, curves.train_loss, color="#4c72b0", alpha=0.25, linewidth=1)
    ax.plot(curves.train_steps, curves.train_loss_smooth, color="#4c72b0", label="training loss (smoothed)")
    ax.plot(curves.val_steps, curves.val_loss, "o-", color="#dd8452", label="validation loss")
    if curves.diverges_at is not None:
        ax.axvline(
            curves.diverges_at, color="#c44e52", linestyle="--", label=f"best: step {curves.diverges_at}"
        )
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.grid(alpha=0.3)
    accuracy = [(s, a) for s, a in zip(curves.val_steps, curves.val_accuracy, strict=False) if a is not None]
    axes = [ax]
    if accuracy:
        axes.append(ax.twinx())
        axes[1].plot(*zip(*accuracy, strict=True), "s:", color="#55a868", label="validation accuracy")
        axes[1].set_ylabel("accuracy", fontsize=8)
    handles = [h for a in axes for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="best")
    ax.set_title(short_label(curves.label or curves.run_id, 80), fontsize=9)
    return png_uri(fig)


def kfold_png(kfold: KFoldResult) -> str | None:
    """Each metric per fold, with its mean (line) and ± one standard deviation (band)."""
    summary = kfold.summary()
    keys = [k for k in kfold.metrics if summary.get(k)]
    if not keys:
        return None
    cols = min(3, len(keys))
    fig = figure(3.6 * cols, 2.8 * math.ceil(len(keys) / cols))
    folds = list(range(1, len(kfold.folds) + 1))
    for ax, key in zip(grid(fig, len(keys), cols), keys, strict=True):
        scale, (mean, std) = chart_scale(key), summary[key]
        values = [math.nan if number(f.get(key)) is None else f[key] * scale for f in kfold.folds]
        ax.axhspan((mean - std) * scale, (mean + std) * scale, color="#4c72b0", alpha=0.12)
        ax.axhline(mean * scale, color="#4c72b0", linewidth=1)
        ax.plot(folds, values, "o", color="#4c72b0")
        ax.set_xticks(folds)
        ax.set_xlabel("fold", fontsize=8)
        ax.set_title(metric_info(key).title, fontsize=9)
        ax.tick_params(labelsize=8)
    return png_uri(fig)
