"""Export an evaluation: one self-contained HTML report, and CSV/JSON of every number.

The HTML file carries everything it shows (plots as PNG data URIs, CSS inline, no scripts), so it
opens offline, can be mailed and prints readably. Plots are drawn on matplotlib ``Figure`` objects
with an Agg canvas attached directly, which leaves pyplot's global backend (and so any Qt backend)
untouched. Every text that came from the user, a dataset or a model is HTML-escaped.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from core.atomic import write_text
from core.evaluate import metrics as eval_metrics
from core.evaluate.curves import Curves
from core.evaluate.report_plots import (
    DASH,
    best_values,
    clean,
    cost_png,
    curves_png,
    format_cost,
    format_metric,
    kfold_png,
    metric_bars_png,
    metric_info,
    metric_keys,
    number,
)  # fmt: skip
from core.evaluate.results import EvalExample, Evaluation, KFoldResult, VariantResult
from core.evaluate.textdiff import diff_html, disagree

NOT_A_LABEL = "(not a label)"  # the confusion matrix's column for answers outside the labels
COSTS = (("size_bytes", "Size"), ("peak_memory_bytes", "Memory"), ("tokens_per_second", "Tokens/s"))
MAX_CELL_CHARS = 2000  # a cell of the HTML example table; the CSV keeps every character
CSV_FIELDS = ("section", "variant_id", "label", "kind", "metric", "value", "std", "size_bytes",
              "peak_memory_bytes", "tokens_per_second", "seconds", "error")  # fmt: skip
Marks = dict[str, dict[str, str]]  # "variant id|row" -> {"mark": "good" | "bad", "output": text marked}


# -- JSON and CSV ---------------------------------------------------------------------------------
def write_json(path: Path, evaluation: Evaluation, kfold: KFoldResult | None = None,
               curves: Sequence[Curves] = ()) -> Path:  # fmt: skip
    """Every number: the evaluation, the k-fold result (with its summary) and the training curves."""
    data = {
        "evaluation": evaluation.to_dict(),
        "kfold": kfold.to_dict() if kfold is not None else None,
        "curves": [c.to_dict() for c in curves],
    }
    write_text(Path(path), json.dumps(clean(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return Path(path)


def write_csv(path: Path, evaluation: Evaluation, kfold: KFoldResult | None = None) -> Path:
    """One row per variant × metric (with the cost columns) and, for k-fold, per fold × metric and
    the mean ± std; the per-example outputs go to ``<stem>-examples.csv`` beside it."""
    path = Path(path)
    rows = list(_variant_rows(evaluation)) + (list(_kfold_rows(kfold)) if kfold is not None else [])
    write_text(path, _csv_text(CSV_FIELDS, rows))
    write_text(examples_csv_path(path), _csv_text(*_example_table(evaluation)))
    return path


def examples_csv_path(path: Path) -> Path:
    return Path(path).with_name(f"{Path(path).stem}-examples.csv")


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()


def _cell(value: Any) -> Any:
    """repr: a float read back is the very same float; no value (None, NaN) is an empty cell."""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else value


def _variant_rows(evaluation: Evaluation) -> Iterable[list[Any]]:
    for v in evaluation.variants:
        costs = [v.size_bytes, v.peak_memory_bytes, v.tokens_per_second, v.seconds, v.error]
        for key in metric_keys(evaluation):
            yield ["test", v.id, v.label, v.kind, key, v.scores.get(key), None, *costs]


def _kfold_rows(kfold: KFoldResult) -> Iterable[list[Any]]:
    for i, scores in enumerate(kfold.folds, start=1):
        for key in kfold.metrics:
            yield ["kfold", f"fold {i}", f"Fold {i} of {kfold.k}", kfold.method, key, scores.get(key), None]
    for key, stats in kfold.summary().items():
        mean, std = stats if stats else (None, None)
        yield ["kfold", "mean", f"Mean of {len(kfold.folds)} folds", kfold.method, key, mean, std]


def _example_table(evaluation: Evaluation) -> tuple[list[str], list[list[Any]]]:
    score_keys = {v.id: sorted({k for s in v.example_scores for k in s}) for v in evaluation.variants}
    header = ["row of the file (from 1)", "input", "reference"]
    for v in evaluation.variants:
        header += [f"{v.id}: output"] + [f"{v.id}: {k}" for k in score_keys[v.id]]
    rows = []
    for i, example in enumerate(evaluation.examples):
        row: list[Any] = [example.row + 1, example.prompt, example.reference]  # as the app numbers rows
        for v in evaluation.variants:
            scores = v.example_scores[i] if i < len(v.example_scores) else {}
            row += [_output(v, i)] + [scores.get(k) for k in score_keys[v.id]]
        rows.append(row)
    return header, rows


def _output(variant: VariantResult, index: int) -> str:
    return variant.outputs[index] if index < len(variant.outputs) else ""


def is_wrong(task: str, variant: VariantResult, index: int) -> bool:
    """Whether the example's own scores make the output wrong (the rule of the app's output table)."""
    scores = variant.example_scores[index] if index < len(variant.example_scores) else {}
    return bool(scores) and eval_metrics.is_wrong(task, scores)


# -- HTML -----------------------------------------------------------------------------------------
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; max-width: 1200px;
       margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: .3em .5em; vertical-align: top; text-align: left; }
th { background: #f2f2f2; } td.num { text-align: right; white-space: nowrap; }
td.text { white-space: pre-wrap; max-width: 28em; overflow-wrap: anywhere; }
td.wrong { background: #fbe3e4; } .mark { font-size: 11px; border-radius: 3px; padding: 0 .3em; }
.good { background: #dff0d8; } .bad { background: #f2dede; } .muted { color: #666; }
.note { background: #fff8e1; border-left: 4px solid #f0ad4e; padding: .4em .7em; }
img { max-width: 100%; } dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: 600; } dd { margin: 0; }
#only-differing:checked ~ table tr.same { display: none; }
@media print { body { margin: 0; max-width: none; } .no-print { display: none; }
  tr, img { page-break-inside: avoid; } h2, h3 { page-break-after: avoid; } }
"""


def write_html(path: Path, evaluation: Evaluation, kfold: KFoldResult | None = None,
               curves: Sequence[Curves] = (), project_name: str = "",
               marks: Marks | None = None) -> Path:  # fmt: skip
    """The whole report as one self-contained HTML file (plots embedded)."""
    write_text(Path(path), render_html(evaluation, kfold, curves, project_name, marks))
    return Path(path)


def render_html(evaluation: Evaluation, kfold: KFoldResult | None = None, curves: Sequence[Curves] = (),
                project_name: str = "", marks: Marks | None = None) -> str:  # fmt: skip
    title = escape(f"Evaluation — {project_name}" if project_name else "Evaluation")
    sections = [_summary_html(evaluation, project_name), _results_html(evaluation), _charts_html(evaluation),
                _confusion_html(evaluation), _examples_html(evaluation, marks or {}), _curves_html(curves),
                _kfold_html(kfold) if kfold is not None else ""]  # fmt: skip
    body = "\n".join(s for s in sections if s)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{title}</h1>\n{body}\n</body>\n</html>\n"
    )


def _img(uri: str | None, alt: str) -> str:
    return f'<p><img src="{uri}" alt="{escape(alt)}"></p>' if uri else ""


def _table(head: Iterable[str], rows: Iterable[str]) -> str:
    """A table from header texts (escaped here) and ready rows (``<tr>…</tr>``)."""
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    return f"<table>\n<tr>{header}</tr>\n" + "\n".join(rows) + "\n</table>"


def _summary_html(evaluation: Evaluation, project_name: str) -> str:
    items = [("Project", project_name), ("Task", evaluation.task), ("Dataset", evaluation.dataset),
             ("Test examples", str(len(evaluation.examples))), ("Variants", str(len(evaluation.variants))),
             ("Date", evaluation.created.replace("T", " ")), ("Evaluation", evaluation.id)]  # fmt: skip
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items if v)
    notes = [f"{metric_info(k).title} has no value: {why}" for k, why in evaluation.unavailable.items()]
    notes += [f"{v.label} could not be scored: {v.error}" for v in evaluation.variants if v.error]
    notes += [f"{v.label}: {note}" for v in evaluation.variants for note in v.notes]
    listed = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return f"<h2>Summary</h2>\n<dl>{rows}</dl>" + (f"\n<ul>{listed}</ul>" if listed else "")


def _results_html(evaluation: Evaluation) -> str:
    keys, best = metric_keys(evaluation), best_values(evaluation)
    head = "".join(f'<th title="{escape(metric_info(k).hover)}">{escape(metric_info(k).title)}</th>'
                   for k in keys)  # fmt: skip
    head += "".join(f"<th>{title}</th>" for _, title in COSTS)
    rows = []
    for v in evaluation.variants:
        cells = []
        for key in keys:
            value, text = number(v.scores.get(key)), escape(format_metric(key, v.scores.get(key)))
            bold = value is not None and len(evaluation.variants) > 1 and value == best.get(key)
            cells.append(f'<td class="num">{f"<b>{text}</b>" if bold else text}</td>')
        cells += [f'<td class="num">{escape(format_cost(k, getattr(v, k)))}</td>' for k, _ in COSTS]
        variant = f'{escape(v.label)}<br><span class="muted">{escape(v.kind)}</span>'
        rows.append(f"<tr><th>{variant}</th>{''.join(cells)}</tr>")
    return (
        f"<h2>Results</h2>\n<table>\n<tr><th>Variant</th>{head}</tr>\n" + "\n".join(rows) + "\n</table>\n"
        '<p class="muted">The best value of each metric is in bold (hover a metric for what it means). '
        "Size: the weights; memory: what the weights take while the model runs; tokens/s: speed.</p>"
    )


def _charts_html(evaluation: Evaluation) -> str:
    bars, cost = metric_bars_png(evaluation), cost_png(evaluation)
    if not bars and not cost:
        return ""
    return "\n".join(
        ["<h2>Charts</h2>", _img(bars, "each metric per variant"), _img(cost, "quality against cost")]
    )


def _confusion_html(evaluation: Evaluation) -> str:
    if evaluation.task != "classification" or not evaluation.labels:
        return ""
    from sklearn.metrics import confusion_matrix

    labels = list(evaluation.labels)
    parts = [
        "<h2>Confusion matrices</h2>",
        '<p class="muted">Rows: the true label; columns: the predicted one.</p>',
    ]
    for v in evaluation.variants:
        if v.error or not v.outputs:
            continue
        truth = [e.reference for e in evaluation.examples]
        predicted = [o.strip() if o.strip() in labels else NOT_A_LABEL for o in v.outputs[: len(truth)]]
        columns = labels + [NOT_A_LABEL] * (NOT_A_LABEL in predicted)  # a generated answer that is no label
        matrix = confusion_matrix(truth, predicted, labels=columns)
        top = max(int(matrix.max()), 1)
        rows = [
            f"<tr><th>{escape(name)}</th>"
            + "".join(
                f'<td class="num" style="background: rgba(76,114,176,{0.05 + 0.6 * n / top:.2f})">{n}</td>'
                for n in matrix[i].tolist()
            )  # fmt: skip
            + "</tr>"
            for i, name in enumerate(labels)  # no example truly is "not a label": no row for it
        ]
        parts.append(f"<h3>{escape(v.label)}</h3>\n" + _table(["", *columns], rows))
    return "\n".join(parts)


def _cell_text(text: str) -> str:
    return escape(text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS] + " …")


def _output_html(task: str, example: EvalExample, output: str) -> str:
    """An output with its differences from the reference highlighted (a label is right or wrong whole)."""
    if task == "classification" or not example.reference:
        return _cell_text(output)
    return diff_html(example.reference[:MAX_CELL_CHARS], output[:MAX_CELL_CHARS])


def _mark_badge(marks: Marks, variant: VariantResult, row: int, output: str) -> str:
    mark = marks.get(f"{variant.id}|{row}") or {}
    if mark.get("mark") not in ("good", "bad"):
        return ""
    stale = "" if mark.get("output", output) == output else " (on an earlier output)"
    return f'<br><span class="mark {mark["mark"]}">marked {mark["mark"]}{stale}</span>'


def _examples_html(evaluation: Evaluation, marks: Marks) -> str:
    if not evaluation.examples:
        return ""
    shown = [v for v in evaluation.variants if not v.error]
    rows = []
    for i, example in enumerate(evaluation.examples):
        outputs = [_output(v, i) for v in shown]
        wrong = [is_wrong(evaluation.task, v, i) for v in shown]
        cells = "".join(
            f'<td class="text{" wrong" if w else ""}">{"✗ " if w else ""}'
            f"{_output_html(evaluation.task, example, o)}{_mark_badge(marks, v, example.row, o)}</td>"
            for v, o, w in zip(shown, outputs, wrong, strict=True)
        )
        kind = "differs" if disagree(outputs) or any(wrong) else "same"
        rows.append(
            f'<tr class="{kind}"><td class="num">{example.row + 1}</td>'
            f'<td class="text">{_cell_text(example.prompt)}</td>'
            f'<td class="text">{_cell_text(example.reference)}</td>{cells}</tr>'
        )
    return (
        "<h2>Outputs</h2>\n"
        '<p class="muted">✗ on red: a wrong answer. In an output, words the reference lacks are on red and '
        "the reference's words it lacks are struck through. Marks are the verdicts given in the app.</p>\n"
        '<input type="checkbox" id="only-differing" class="no-print"> <label for="only-differing" '
        'class="no-print">Only rows where variants disagree or are wrong</label>\n'
        + _table(["Row of the file", "Input", "Reference", *(v.label for v in shown)], rows)
    )


def _curves_html(curves: Sequence[Curves]) -> str:
    parts = ["<h2>Training curves</h2>"] if curves else []
    for c in curves:
        name = c.label or c.run_id
        parts += [f"<h3>{escape(name)}</h3>", _img(curves_png(c), f"training and validation loss of {name}")]
        parts += [f'<p class="note">{escape(c.note)}</p>'] if c.note else []
    return "\n".join(parts)


def _kfold_html(kfold: KFoldResult) -> str:
    summary, rows = kfold.summary(), []
    for key in kfold.metrics:
        stats = summary.get(key)
        spread = f"{format_metric(key, stats[0])} ± {format_metric(key, stats[1])}" if stats else DASH
        folds = "".join(f'<td class="num">{escape(format_metric(key, f.get(key)))}</td>' for f in kfold.folds)
        title = escape(metric_info(key).title)
        rows.append(f'<tr><th>{title}</th><td class="num"><b>{escape(spread)}</b></td>{folds}</tr>')
    sizes = ", ".join(f"{train}/{test}" for train, test in kfold.fold_sizes)
    about = f"{kfold.k} folds, method {kfold.method}" + (
        f"; training/test rows per fold: {sizes}" if sizes else ""
    )
    stopped = f"Stopped after {len(kfold.folds)} of {kfold.k} folds: the summary covers those."
    return "\n".join([
        "<h2>k-fold cross-validation</h2>", f"<p>{escape(about)}.</p>",
        f'<p class="note">{stopped}</p>' if kfold.cancelled else "",
        _table(["Metric", "Mean ± std", *(f"Fold {i}" for i in range(1, len(kfold.folds) + 1))], rows),
        _img(kfold_png(kfold), "each metric per fold"),
    ])  # fmt: skip


def export_all(
    path: Path, evaluation: Evaluation, kfold: KFoldResult | None = None, project: Any = None
) -> list[Path]:
    """The HTML report (with the project's finished runs' training curves and the user's marks), the
    CSV of every number, the CSV of every output and the JSON, side by side; their paths, HTML first."""
    from core.evaluate.curves import run_curves

    path = Path(path)
    finished = [r for r in project.train_runs if r.get("status") == "finished"] if project else []
    curves = [run_curves(project, record) for record in finished]
    name, marks = (project.name, project.evaluate.marks) if project else ("", None)
    html = write_html(path, evaluation, kfold, curves, project_name=name, marks=marks)
    csv_path = write_csv(path.with_suffix(".csv"), evaluation, kfold)
    data = write_json(path.with_suffix(".json"), evaluation, kfold, curves)
    return [Path(html), Path(csv_path), examples_csv_path(Path(csv_path)), Path(data)]
