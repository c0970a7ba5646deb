"""The wizard's seven steps down the left side, each with a status icon and a status line.

Steps that are not built yet are listed but disabled, with a tooltip saying so: the user sees
where the journey goes without landing on an empty page.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QSize, Qt, Signal, Slot
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from desktop.icons import status_icon

LATER = "Arrives in a later release"
_STATUS_WIDTH = 160  # pixels left for the status line beside the icon
_KEY_ROLE = Qt.ItemDataRole.UserRole


@dataclass(frozen=True)
class SidebarStep:
    key: str
    title: str
    available: bool


class _StepRow(QWidget):
    """Number, icon, title and a small status line; painted over the list's selection."""

    def __init__(self, number: int, step: SidebarStep) -> None:
        super().__init__()
        self.icon = QLabel()
        self.title = QLabel(f"{number}. {step.title}")
        self.title.setObjectName("stepTitle")
        self.status = QLabel()
        self.status.setObjectName("hint")
        self.full_status = ""
        grid = QGridLayout(self)
        grid.setContentsMargins(8, 6, 8, 6)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(0)
        grid.addWidget(self.icon, 0, 0, 2, 1, Qt.AlignmentFlag.AlignVCenter)
        grid.addWidget(self.title, 0, 1)
        grid.addWidget(self.status, 1, 1)
        grid.setColumnStretch(1, 1)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)

    def set_state(self, state: str, text: str) -> None:
        self.icon.setPixmap(status_icon(state).pixmap(18, 18))
        self.full_status = text
        # Model names can be long: elide to the sidebar's width, the tooltip keeps it whole.
        width = _STATUS_WIDTH
        self.status.setText(self.status.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, width))
        self.status.setToolTip(text if self.status.text() != text else "")


class Sidebar(QFrame):
    """Signals: ``stepChosen(key)`` for an enabled step, ``homeRequested()`` for the projects."""

    stepChosen = Signal(str)
    homeRequested = Signal()

    def __init__(self, steps: list[SidebarStep], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        self.setFixedWidth(230)
        self.home = QPushButton("  Projects")
        self.home.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_DirHomeIcon))
        self.home.setToolTip("Back to the list of projects")
        self.home.clicked.connect(self.homeRequested)
        self.project_label = QLabel()
        self.project_label.setObjectName("sidebarProject")
        self.project_label.setWordWrap(True)
        self.list = QListWidget()
        self.list.setIconSize(QSize(18, 18))
        self.list.setFrameShape(QFrame.Shape.NoFrame)
        self.list.itemClicked.connect(self._on_item)
        self.list.itemActivated.connect(self._on_item)
        self._rows: dict[str, tuple[QListWidgetItem, _StepRow]] = {}
        for number, step in enumerate(steps, start=1):
            self._add(number, step)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.home)
        layout.addWidget(self.project_label)
        layout.addWidget(self.list, 1)

    def _add(self, number: int, step: SidebarStep) -> None:
        item = QListWidgetItem()
        item.setData(_KEY_ROLE, step.key)
        row = _StepRow(number, step)
        item.setSizeHint(QSize(200, 48))
        if step.available:
            row.set_state("todo", "Not started")
        else:
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled & ~Qt.ItemFlag.ItemIsSelectable)
            item.setToolTip(LATER)
            row.setToolTip(LATER)
            row.setEnabled(False)
            row.set_state("locked", "Later release")
        self.list.addItem(item)
        self.list.setItemWidget(item, row)
        self._rows[step.key] = (item, row)

    # -- reading ------------------------------------------------------------------------
    def step_keys(self) -> list[str]:
        return list(self._rows)

    def is_enabled(self, key: str) -> bool:
        return bool(self._rows[key][0].flags() & Qt.ItemFlag.ItemIsEnabled)

    def tooltip(self, key: str) -> str:
        return self._rows[key][0].toolTip()

    def status_text(self, key: str) -> str:
        return self._rows[key][1].full_status

    def current(self) -> str | None:
        item = self.list.currentItem()
        return item.data(_KEY_ROLE) if item is not None and item.isSelected() else None

    # -- writing ------------------------------------------------------------------------
    def set_status(self, key: str, state: str, text: str) -> None:
        """Show ``state`` (todo, running, done, stale, error) and a short text for a step."""
        item, row = self._rows[key]
        if self.is_enabled(key):
            row.set_state(state, text)

    def set_current(self, key: str | None) -> None:
        """Highlight ``key`` (None: no step, e.g. while the project list shows)."""
        if key is None:
            self.list.clearSelection()
            self.list.setCurrentItem(None)
            return
        self.list.setCurrentItem(self._rows[key][0])

    def set_project_name(self, name: str | None) -> None:
        self.project_label.setText(name or "No project open")

    def choose(self, key: str) -> bool:
        """Act as a click on ``key``; False (and nothing happens) if the step is disabled."""
        if not self.is_enabled(key):
            return False
        self.set_current(key)
        self.stepChosen.emit(key)
        return True

    @Slot(QListWidgetItem)
    def _on_item(self, item: QListWidgetItem) -> None:
        if item.flags() & Qt.ItemFlag.ItemIsEnabled:
            self.stepChosen.emit(item.data(_KEY_ROLE))
