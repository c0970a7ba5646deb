"""The first screen: create a project, or pick one to continue (open, rename, copy, delete)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QStackedWidget,
    QStyle,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core import paths
from core import project as projects
from core.errors import ProjectError, QuantTuneError, StorageError
from desktop import dialogs
from desktop.formatting import format_ref
from desktop.jobs import JobHandle
from desktop.session import Session
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.job_bar import JobBar

log = logging.getLogger(__name__)
_FOLDER_ROLE = Qt.ItemDataRole.UserRole


@dataclass
class _Entry:
    folder: Path
    project: projects.Project | None
    error: ProjectError | None = None


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError):
        return iso or ""


def scan_projects(session: Session) -> list[_Entry]:
    """Projects in the projects folder plus recent ones elsewhere; damaged ones included."""
    folders: list[Path] = []
    root = paths.projects_dir()
    if root.is_dir():
        folders += [f for f in sorted(root.iterdir()) if not f.name.startswith(".") and f.is_dir()]
    folders += session.settings.existing_recent_projects()
    entries, seen = [], set()
    for folder in folders:
        key = folder.resolve()
        if key in seen or not (folder / projects.PROJECT_FILE).is_file():
            continue
        seen.add(key)
        try:
            entries.append(_Entry(folder, projects.load_project(folder)))
        except ProjectError as exc:
            entries.append(_Entry(folder, None, exc))
    return sorted(entries, key=lambda e: e.project.modified if e.project else "", reverse=True)


class StartScreen(QWidget):
    """Signal ``projectChosen(Path)``: the user wants to work in the project in that folder
    (already checked to be readable)."""

    projectChosen = Signal(Path)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._entries: dict[str, _Entry] = {}
        self.error_panel = ErrorPanel()
        # The model loading in the background (at start: the bundled default) shows its
        # progress here too, since this is where the user waits for it.
        self.load_bar = JobBar()
        self._build()
        session.projectChanged.connect(self.refresh)
        session.modelLoading.connect(self._on_model_loading)
        self.refresh()

    @Slot(object, object)
    def _on_model_loading(self, handle: JobHandle, ref: Any) -> None:
        self.load_bar.bind(handle)

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        title = QLabel("QuantTune")
        title.setObjectName("screenTitle")
        subtitle = QLabel(
            "Quantize and fine-tune a language model on this computer, offline. "
            "A project keeps the model, the settings of every step and the results."
        )
        subtitle.setWordWrap(True)
        self.new_button = QPushButton("New project…")
        self.new_button.setObjectName("primary")
        self.new_button.clicked.connect(self.ask_new_project)
        self.open_folder_button = QPushButton("Open project folder…")
        self.open_folder_button.clicked.connect(self.ask_open_folder)
        top = QHBoxLayout()
        top.addWidget(self.new_button)
        top.addWidget(self.open_folder_button)
        top.addStretch(1)

        self._build_list()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(32, 24, 32, 24)
        layout.addWidget(title)
        layout.addWidget(subtitle)
        layout.addSpacing(8)
        layout.addLayout(top)
        layout.addWidget(self.load_bar)
        layout.addWidget(self.error_panel)
        layout.addSpacing(8)
        heading = QLabel("Projects")
        heading.setObjectName("sectionTitle")
        layout.addWidget(heading)
        layout.addWidget(self.list_stack, 1)
        layout.addLayout(self._action_row())

    def _build_list(self) -> None:
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Project", "Modified", "Model"])
        self.tree.setRootIsDecorated(False)
        self.tree.setAlternatingRowColors(True)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.tree.itemActivated.connect(self.open_selected)
        self.empty_label = QLabel("No projects yet: press “New project…” to start one.")
        self.empty_label.setObjectName("hint")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        # The list and the "no projects" line share one place, which keeps its size either way.
        self.list_stack = QStackedWidget()
        self.list_stack.addWidget(self.tree)
        self.list_stack.addWidget(self.empty_label)

    def _action_row(self) -> QHBoxLayout:
        style = self.style()
        self.open_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_DialogOpenButton), "Open")
        self.rename_button = QPushButton("Rename…")
        self.duplicate_button = QPushButton("Duplicate")
        self.delete_button = QPushButton(style.standardIcon(QStyle.StandardPixmap.SP_TrashIcon), "Delete…")
        self.open_button.clicked.connect(self.open_selected)
        self.rename_button.clicked.connect(self.rename_selected)
        self.duplicate_button.clicked.connect(self.duplicate_selected)
        self.delete_button.clicked.connect(self.delete_selected)
        row = QHBoxLayout()
        for button in (self.open_button, self.rename_button, self.duplicate_button, self.delete_button):
            row.addWidget(button)
        row.addStretch(1)
        return row

    # -- the list -------------------------------------------------------------------------
    @Slot()
    def refresh(self) -> None:
        selected = self.selected_folder()
        self.tree.clear()
        self._entries.clear()
        for entry in scan_projects(self.session):
            self.tree.addTopLevelItem(self._item(entry))
        self.list_stack.setCurrentWidget(self.tree if self._entries else self.empty_label)
        if selected is not None:
            self.select(selected)
        elif self.tree.topLevelItemCount():
            self.tree.setCurrentItem(self.tree.topLevelItem(0))
        self._update_buttons()

    def _item(self, entry: _Entry) -> QTreeWidgetItem:
        if entry.project is not None:
            project = entry.project
            current = self.session.project is not None and self.session.project.folder == project.folder
            name = f"{project.name}  (open)" if current else project.name
            columns = [name, _local_time(project.modified), format_ref(project.load.model)]
        else:
            columns = [f"⚠ {entry.folder.name}", "", "damaged: cannot be read"]
        item = QTreeWidgetItem(columns)
        item.setData(0, _FOLDER_ROLE, str(entry.folder))
        item.setToolTip(0, str(entry.folder))
        self._entries[str(entry.folder)] = entry
        return item

    def selected_folder(self) -> Path | None:
        item = self.tree.currentItem()
        return Path(item.data(0, _FOLDER_ROLE)) if item is not None else None

    def select(self, folder: Path) -> bool:
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if Path(item.data(0, _FOLDER_ROLE)) == Path(folder):
                self.tree.setCurrentItem(item)
                return True
        return False

    def project_names(self) -> list[str]:
        return [e.project.name for e in self._entries.values() if e.project is not None]

    def _selected_entry(self) -> _Entry | None:
        folder = self.selected_folder()
        return self._entries.get(str(folder)) if folder is not None else None

    @Slot()
    def _update_buttons(self) -> None:
        entry = self._selected_entry()
        readable = entry is not None and entry.project is not None
        self.open_button.setEnabled(entry is not None)
        self.rename_button.setEnabled(readable)
        self.duplicate_button.setEnabled(readable)
        self.delete_button.setEnabled(entry is not None)

    def _is_open(self, entry: _Entry) -> bool:
        return self.session.project is not None and self.session.project.folder == entry.folder

    # -- actions --------------------------------------------------------------------------
    def show_error(self, exc: BaseException, details: str = "") -> None:
        self.error_panel.show_error(exc, details)

    @Slot()
    def ask_new_project(self) -> None:
        name = dialogs.ask_text(self, "New project", "Name of the new project:", "My project")
        if name is not None:
            self.create_project(name)

    def create_project(self, name: str) -> Path | None:
        try:
            project = projects.create_project(name)
        except QuantTuneError as exc:
            self.show_error(exc)
            return None
        self.error_panel.dismiss()
        self.refresh()
        self.projectChosen.emit(project.folder)
        return project.folder

    @Slot()
    def ask_open_folder(self) -> None:
        folder = dialogs.choose_folder(self, "Open project folder", str(paths.projects_dir()))
        if folder is not None:
            self.open_folder(folder)

    def open_folder(self, folder: Path) -> bool:
        """Check the project in ``folder`` can be read, then ask for it to be opened."""
        try:
            projects.load_project(folder)
        except ProjectError as exc:
            self.show_error(exc)
            return False
        self.error_panel.dismiss()
        self.projectChosen.emit(Path(folder))
        return True

    @Slot()
    def open_selected(self) -> None:
        entry = self._selected_entry()
        if entry is not None:
            self.open_folder(entry.folder)

    @Slot()
    def rename_selected(self) -> None:
        entry = self._selected_entry()
        if entry is None or entry.project is None:
            return
        name = dialogs.ask_text(self, "Rename project", "New name:", entry.project.name)
        if name is None:
            return
        try:
            if self._is_open(entry):
                self.session.rename_project(name)  # the open copy must not overwrite it later
            else:
                projects.rename_project(entry.project, name)
        except QuantTuneError as exc:
            self.show_error(exc)
            return
        self.refresh()

    @Slot()
    def duplicate_selected(self) -> None:
        entry = self._selected_entry()
        if entry is None or entry.project is None:
            return
        try:
            if self._is_open(entry):
                self.session.flush()  # copy what the user sees, not the last autosave
            copy = projects.duplicate_project(entry.project)
        except (QuantTuneError, OSError) as exc:
            self.show_error(exc)
            return
        self.refresh()
        self.select(copy.folder)

    @Slot()
    def delete_selected(self) -> None:
        entry = self._selected_entry()
        if entry is None:
            return
        name = entry.project.name if entry.project else entry.folder.name
        extra = " It is open now and will be closed." if self._is_open(entry) else ""
        if not dialogs.confirm(
            self,
            "Delete project",
            f"Delete the project “{name}” and everything in its folder?{extra}",
            yes="Delete",
            no="Keep",
            details=str(entry.folder),
        ):
            return
        self._delete(entry)

    def _delete(self, entry: _Entry) -> None:
        try:
            if self._is_open(entry):
                self.session.delete_project()
            else:
                projects.delete_project(entry.project or projects.Project(entry.folder.name, entry.folder))
        except OSError as exc:
            self.show_error(
                StorageError(f"Could not delete {entry.folder}: {exc}.", "Check the folder's permissions.")
            )
        self.refresh()


if __name__ == "__main__":  # preview: python -m desktop.start_screen
    import sys

    from PySide6.QtWidgets import QApplication

    from desktop.jobs import JobRunner

    app = QApplication(sys.argv)
    screen = StartScreen(Session(JobRunner()))
    screen.projectChosen.connect(lambda folder: print("chosen:", folder))
    screen.resize(900, 600)
    screen.show()
    sys.exit(app.exec())
