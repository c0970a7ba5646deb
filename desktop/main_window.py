"""The main window: steps on the left, the current step's pane on the right, menus, status bar."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Slot
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMainWindow, QMenu, QStackedWidget, QVBoxLayout, QWidget

from core.errors import ProjectError, QuantTuneError
from desktop import dialogs
from desktop.formatting import format_device
from desktop.jobs import JobHandle, JobRunner
from desktop.session import Session
from desktop.start_screen import StartScreen
from desktop.steps import STEPS
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.sidebar import Sidebar, SidebarStep

log = logging.getLogger(__name__)

APP_TITLE = "QuantTune"
# How long Quit waits for cancelled jobs. Loading blocks inside transformers between its
# cancel checks; converting the bundled model can take most of a minute on 2 cores.
STOP_WAIT_MS = 120_000
SAVE_STATES = {"none": "", "saved": "All changes saved", "pending": "Saving…", "failed": "Not saved!"}


class MainWindow(QMainWindow):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._closing = False
        self.runner = JobRunner(self)
        self.session = Session(self.runner, self)
        self.sidebar = Sidebar([SidebarStep(s.key, s.title, s.pane is not None) for s in STEPS])
        self.start_screen = StartScreen(self.session)
        self.banner = ErrorPanel()  # failures no pane started: autosave, settings, devices
        self.stack = QStackedWidget()
        self.stack.addWidget(self.start_screen)
        self.panes: dict[str, QWidget] = {}
        for spec in STEPS:
            if spec.pane is not None:
                self._add_pane(spec.key, spec.pane(self.session))
        self._build_central()
        self._build_status_bar()
        self._build_menus()
        self._connect()
        self.resize(1280, 860)
        self._on_project_changed(None)
        self.show_start()

    # -- construction -----------------------------------------------------------------------
    def _add_pane(self, key: str, pane: QWidget) -> None:
        self.panes[key] = pane
        self.stack.addWidget(pane)
        # Optional pane signals (see desktop.steps); emitted in the GUI thread.
        if hasattr(pane, "statusChanged"):
            pane.statusChanged.connect(partial(self.sidebar.set_status, key))
        if hasattr(pane, "stepRequested"):
            pane.stepRequested.connect(self.show_step)

    def _build_central(self) -> None:
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.addWidget(self.banner)
        right.addWidget(self.stack, 1)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addLayout(right, 1)
        self.setCentralWidget(central)

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.job_label = QLabel()
        self.project_label = QLabel()
        self.save_label = QLabel()
        self.device_label = QLabel("Device: finding…")
        for label in (self.job_label, self.project_label, self.save_label, self.device_label):
            label.setContentsMargins(8, 0, 8, 0)
            bar.addPermanentWidget(label)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.new_action = self._action(
            file_menu, "&New Project…", self.ask_new_project, QKeySequence.StandardKey.New
        )
        self.open_action = self._action(
            file_menu, "&Open Project…", self.ask_open_project, QKeySequence.StandardKey.Open
        )
        self.recent_menu = file_menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file_menu.addSeparator()
        self.rename_action = self._action(file_menu, "Re&name…", self.ask_rename)
        self.duplicate_action = self._action(file_menu, "D&uplicate", self.duplicate_project)
        self.save_as_action = self._action(
            file_menu, "Save &As…", self.ask_save_as, QKeySequence.StandardKey.SaveAs
        )
        self.delete_action = self._action(file_menu, "&Delete…", self.ask_delete)
        self.close_action = self._action(
            file_menu, "&Close Project", self.close_project, QKeySequence.StandardKey.Close
        )
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.project_actions = [
            self.rename_action,
            self.duplicate_action,
            self.save_as_action,
            self.delete_action,
            self.close_action,
        ]
        self.device_menu = self.menuBar().addMenu("&Device")
        self.device_group = QActionGroup(self)
        self.device_group.setExclusive(True)
        self.device_group.triggered.connect(self._on_device_action)
        self._fill_device_menu([])

    def _action(self, menu: QMenu, text: str, slot, shortcut: Any = None) -> QAction:
        action = menu.addAction(text)
        action.triggered.connect(slot)
        if shortcut is not None:
            action.setShortcut(shortcut)
        return action

    def _connect(self) -> None:
        self.sidebar.stepChosen.connect(self.show_step)
        self.sidebar.homeRequested.connect(self.show_start)
        self.start_screen.projectChosen.connect(self.open_project)
        s = self.session
        s.projectChanged.connect(self._on_project_changed)
        s.saveStateChanged.connect(self._on_save_state)
        s.problem.connect(self._on_problem)
        s.devicesChanged.connect(self._fill_device_menu)
        s.deviceChanged.connect(self._update_device_label)
        s.modelLoading.connect(self._on_model_loading)
        s.modelChanged.connect(self._on_model_changed)
        self.runner.jobsChanged.connect(self._update_job_label)

    # -- start-up work ----------------------------------------------------------------------
    def start_background_work(self, autoload: bool = True) -> None:
        """After the window shows: find the devices and (unless a project chose one) load the
        default model, both in the background."""
        self.session.detect_devices()
        if autoload and self.session.model is None and self.session.loading is None:
            self.session.load_default_model()

    # -- navigation -------------------------------------------------------------------------
    @Slot()
    def show_start(self) -> None:
        self.start_screen.refresh()
        self.stack.setCurrentWidget(self.start_screen)
        self.sidebar.set_current(None)

    @Slot(str)
    def show_step(self, key: str) -> None:
        pane = self.panes.get(key)
        if pane is None:
            return  # a step of a later release: the sidebar keeps it disabled
        self.stack.setCurrentWidget(pane)
        self.sidebar.set_current(key)

    def current_pane(self) -> QWidget:
        return self.stack.currentWidget()

    # -- projects ---------------------------------------------------------------------------
    @Slot(Path)
    def open_project(self, folder: Path) -> bool:
        try:
            self.session.open_project(folder)
        except ProjectError as exc:
            self.show_start()
            self.start_screen.show_error(exc)
            return False
        self.banner.dismiss()
        self.show_step(STEPS[0].key)
        return True

    @Slot()
    def ask_new_project(self) -> None:
        name = dialogs.ask_text(self, "New project", "Name of the new project:", "My project")
        if name is None:
            return
        try:
            project = self.session.new_project(name)
        except QuantTuneError as exc:
            self.banner.show_error(exc)
            return
        self.banner.dismiss()
        self.show_step(STEPS[0].key)
        self.statusBar().showMessage(f"Created project “{project.name}”.", 5000)

    @Slot()
    def ask_open_project(self) -> None:
        folder = dialogs.choose_folder(self, "Open project folder")
        if folder is not None:
            self.open_project(folder)

    @Slot()
    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        folders = self.session.settings.existing_recent_projects()
        for folder in folders:
            action = self.recent_menu.addAction(folder.name)
            action.setToolTip(str(folder))
            action.setData(str(folder))
            action.triggered.connect(self._on_recent_action)
        if not folders:
            self.recent_menu.addAction("No recent projects").setEnabled(False)

    @Slot()
    def _on_recent_action(self) -> None:
        action = self.sender()
        if isinstance(action, QAction) and action.data():
            self.open_project(Path(action.data()))

    def _run_project_action(self, action, done_message: str = "") -> bool:
        """Run a project operation; its failure shows in the banner, never silently."""
        try:
            action()
        except (QuantTuneError, OSError) as exc:
            self.banner.show_error(exc)
            return False
        if done_message:
            self.statusBar().showMessage(done_message, 5000)
        return True

    @Slot()
    def ask_rename(self) -> None:
        project = self.session.project
        if project is None:
            return
        name = dialogs.ask_text(self, "Rename project", "New name:", project.name)
        if name is not None:
            self._run_project_action(
                lambda: self.session.rename_project(name), f"Renamed to “{name.strip()}”."
            )

    @Slot()
    def duplicate_project(self) -> None:
        if self.session.project is not None:
            self._run_project_action(self.session.duplicate_project, "Now working in the copy.")

    @Slot()
    def ask_save_as(self) -> None:
        project = self.session.project
        if project is None:
            return
        name = dialogs.ask_text(self, "Save project as", "Name of the new project:", f"{project.name} copy")
        if name is not None and self._run_project_action(lambda: self.session.save_as(name)):
            self.banner.dismiss()
            self.statusBar().showMessage(f"Saved as “{name.strip()}”.", 5000)

    @Slot()
    def ask_delete(self) -> None:
        project = self.session.project
        if project is None:
            return
        if dialogs.confirm(
            self,
            "Delete project",
            f"Delete the project “{project.name}” and everything in its folder?",
            yes="Delete",
            no="Keep",
            details=str(project.folder),
        ) and self._run_project_action(self.session.delete_project, f"Deleted “{project.name}”."):
            self.show_start()

    @Slot()
    def close_project(self) -> None:
        self.session.close_project()
        self.show_start()

    @Slot(object)
    def _on_project_changed(self, project: Any) -> None:
        name = project.name if project is not None else None
        self.setWindowTitle(f"{name} — {APP_TITLE}" if name else APP_TITLE)
        self.sidebar.set_project_name(name)
        self.project_label.setText(f"Project: {name}" if name else "No project open")
        for action in self.project_actions:
            action.setEnabled(project is not None)
        self._update_device_label()
        self._refresh_load_status()

    @Slot(str)
    def _on_save_state(self, state: str) -> None:
        self.save_label.setText(SAVE_STATES.get(state, state))
        self.save_label.setStyleSheet("color: #c0392b; font-weight: bold;" if state == "failed" else "")

    @Slot(object)
    def _on_problem(self, exc: QuantTuneError) -> None:
        self.banner.show_error(exc)
        self.statusBar().showMessage(exc.message, 15_000)

    # -- devices ----------------------------------------------------------------------------
    @Slot(list)
    def _fill_device_menu(self, devices: list) -> None:
        for action in self.device_group.actions():
            self.device_group.removeAction(action)
        self.device_menu.clear()
        if not devices:
            self.device_menu.addAction("Finding devices…").setEnabled(False)
        for device in devices:
            action = self.device_menu.addAction(format_device(device))
            action.setCheckable(True)
            action.setData(device.id)
            self.device_group.addAction(action)
        self._update_device_label()

    @Slot(QAction)
    def _on_device_action(self, action: QAction) -> None:
        self.session.set_device(action.data())

    @Slot()
    def _update_device_label(self, *_: Any) -> None:
        chosen = self.session.resolved_device()
        for action in self.device_group.actions():
            action.setChecked(action.data() == chosen)
        info = self.session.device_info()
        self.device_label.setText(format_device(info) if info else "Device: finding…")

    # -- model status -----------------------------------------------------------------------
    @Slot(object, object)
    def _on_model_loading(self, handle: JobHandle, ref: Any) -> None:
        self.sidebar.set_status("load", "running", f"Loading {ref.name}…")
        handle.failed.connect(self._on_load_failed)
        handle.finished.connect(self._refresh_load_status)

    @Slot(object, str)
    def _on_load_failed(self, exc: BaseException, tb: str) -> None:
        if self.session.loading is None or self.sender() is self.session.loading[0]:
            self.sidebar.set_status("load", "error", "Loading failed")

    @Slot(object)
    def _on_model_changed(self, loaded: Any) -> None:
        self._refresh_load_status()

    @Slot()
    def _refresh_load_status(self, *_: Any) -> None:
        loading, loaded = self.session.loading, self.session.model
        if loading is not None:
            self.sidebar.set_status("load", "running", f"Loading {loading[1].name}…")
        elif loaded is not None:
            self.sidebar.set_status("load", "done", loaded.card.name)
        elif self.sidebar.status_text("load") != "Loading failed":
            self.sidebar.set_status("load", "todo", "No model yet")

    @Slot()
    def _update_job_label(self) -> None:
        names = [h.name for h in self.runner.active() if not h.background]
        self.job_label.setText(" · ".join(names))

    # -- closing ----------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        if self._closing:
            event.ignore()  # a second Quit while the first waits for jobs to stop
            return
        self._closing = True
        try:
            stopped = self.stop_jobs_for_quit()
        finally:
            self._closing = False
        if not stopped:
            event.ignore()
            return
        self.session.flush()
        event.accept()

    def stop_jobs_for_quit(self) -> bool:
        """Ask before cancelling running jobs; True when none runs any more."""
        active = self.runner.active()
        if not active:
            return True
        names = ", ".join(h.name for h in active if not h.background)
        if names and not dialogs.confirm(
            self,
            "Quit QuantTune",
            f"A job is running ({names}). Cancel it and quit?",
            yes="Cancel and quit",
            no="Keep working",
        ):
            return False
        self.statusBar().showMessage("Stopping the running jobs…")
        self.runner.cancel_all()
        if not self.runner.wait_all(STOP_WAIT_MS):
            log.error("Jobs did not stop in time: %s", [h.name for h in self.runner.active()])
        return True
