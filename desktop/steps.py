"""The wizard's steps, in order: the one table the sidebar, the stack and the menus read.

A later release adds a step's pane by filling in its ``pane`` here; nothing else changes. A pane
may offer ``statusChanged(state, text)`` (its sidebar status) and ``stepRequested(key)`` (go to
another step); the main window connects them when present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtWidgets import QWidget

from desktop.panes.calibrate_pane import CalibratePane
from desktop.panes.evaluate_pane import EvaluatePane
from desktop.panes.inspect_pane import InspectPane
from desktop.panes.load_pane import LoadPane
from desktop.panes.method_pane import MethodPane
from desktop.panes.precision_pane import PrecisionPane
from desktop.panes.train_pane import TrainPane
from desktop.session import Session


@dataclass(frozen=True)
class StepSpec:
    key: str  # as in core.project.STEPS and Project.step_status
    title: str
    pane: Callable[[Session], QWidget] | None  # None: arrives in a later release


STEPS: tuple[StepSpec, ...] = (
    StepSpec("load", "Load model", LoadPane),
    StepSpec("inspect", "Inspect weights", InspectPane),
    StepSpec("precision", "Precision & symmetry", PrecisionPane),
    StepSpec("calibrate", "Calibrate", CalibratePane),
    StepSpec("method", "Fine-tuning method", MethodPane),
    StepSpec("train", "Train", TrainPane),
    StepSpec("evaluate", "Evaluate", EvaluatePane),
)
