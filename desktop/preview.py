"""Run one pane on its own, for development: ``python -m desktop.panes.<pane>`` (practice 9).

The pane gets a session and a job runner of its own; ``start`` runs once the event loop does
(e.g. load a model); jobs are cancelled and waited for on exit.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QWidget

from desktop.jobs import JobRunner
from desktop.session import Session


def preview(make_pane: Callable[[Session], QWidget], size: tuple[int, int],
            start: Callable[[Session], Any] | None = None) -> int:  # fmt: skip
    app = QApplication(sys.argv)
    runner = JobRunner()
    session = Session(runner)
    pane = make_pane(session)
    pane.resize(*size)
    pane.show()
    if start is not None:
        QTimer.singleShot(0, partial(start, session))
    code = app.exec()
    runner.cancel_all()
    runner.wait_all(30_000)
    return code


def load_default(session: Session) -> Any:
    from core.models import sources

    return session.load_model(sources.DEFAULT_REF)
