"""Export of the Evaluate step's report: the user picks the HTML file, a job writes it
(core.evaluate.report.export_all: plots drawn with matplotlib, which takes a moment) with CSV and
JSON of every number beside it, under the same name. The job reads a copy of the project taken in
the GUI thread, so the window may go on editing the project meanwhile.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QWidget

from desktop import dialogs
from desktop.jobs import JobHandle, JobRunner


@dataclass(frozen=True)
class ExportParams:
    path: Path  # the HTML file; the CSV and JSON go beside it
    evaluation: Any = field(repr=False)
    kfold: Any = field(default=None, repr=False)
    project: Any = field(default=None, repr=False)  # a copy: its training runs' curves go in the report

    def validate(self) -> list[str]:
        folder = Path(self.path).parent
        return [] if folder.is_dir() else [f"there is no folder {folder}"]


def export_job(params: ExportParams, ctx: Any) -> list[Path]:
    """Write the report; returns the paths written, the HTML file first."""
    from core.evaluate import report

    ctx.stage("Drawing the report's plots and writing CSV and JSON")
    return report.export_all(params.path, params.evaluation, params.kfold, params.project)


def ask_params(parent: QWidget, project: Any, evaluation: Any, kfold: Any) -> ExportParams | None:
    """Ask where to save the report (None: the user cancelled)."""
    name = f"{project.name} evaluation.html" if project is not None else "evaluation.html"
    start = project.folder / name if project is not None else Path(name)
    path = dialogs.choose_save_file(parent, "Export report", "HTML report (*.html)", str(start))
    if path is None:
        return None
    if path.suffix.lower() not in (".html", ".htm"):
        path = path.with_suffix(".html")
    # a snapshot: the job reads it in its thread while the window may edit the project
    return ExportParams(path, evaluation, kfold, copy.deepcopy(project) if project is not None else None)


def start(runner: JobRunner, params: ExportParams, owner: Any) -> JobHandle:
    return runner.start(export_job, params, name="Exporting the report", owner=owner)


def ask_and_start(owner: Any, project: Any, evaluation: Any, kfold: Any) -> JobHandle | None:
    """Ask where (``owner``: the pane, with ``runner`` and ``error_panel``), then start the export;
    None when the user cancelled or the place cannot be written (the error panel says why)."""
    params = ask_params(owner, project, evaluation, kfold)
    if params is None:
        return None
    if problems := params.validate():
        owner.error_panel.show_message("The report cannot be saved: " + "; ".join(problems) + ".",
                                       "Choose another place.")  # fmt: skip
        return None
    return start(owner.runner, params, owner)


def saved_text(paths: list[Path]) -> str:
    others = ", ".join(p.name for p in paths[1:])
    return f"Report saved: {paths[0]} (every number beside it: {others})."
