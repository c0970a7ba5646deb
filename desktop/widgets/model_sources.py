"""The models the user can pick without a file dialog: recent ones and those found on disk."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.errors import ModelError
from core.models.sources import ModelRef
from desktop.formatting import format_bytes

_REF_ROLE = Qt.ItemDataRole.UserRole


class ModelSourceList(QWidget):
    """Two groups, "Recent" and "On this computer"; ``modelChosen(ModelRef)`` on Load or
    double-click, ``refreshRequested()`` when the user asks for a new scan."""

    modelChosen = Signal(object)
    refreshRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Model", "Size"])
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setMinimumHeight(150)
        self.tree.itemActivated.connect(self._on_activated)
        self.tree.itemSelectionChanged.connect(self._update_buttons)
        self.recent = self._group("Recent")
        self.found = self._group("On this computer (Hugging Face cache)")
        self.load_button = QPushButton("Load selected")
        self.load_button.clicked.connect(self.load_selected)
        self.refresh_button = QPushButton("Rescan")
        self.refresh_button.setToolTip("Look again for models in the local Hugging Face cache")
        self.refresh_button.clicked.connect(self.refreshRequested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.load_button)
        buttons.addStretch(1)
        buttons.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tree, 1)
        layout.addLayout(buttons)
        self.set_recent([])
        self.set_scanning()

    def _group(self, title: str) -> QTreeWidgetItem:
        group = QTreeWidgetItem([title])
        group.setFlags(Qt.ItemFlag.ItemIsEnabled)
        font = group.font(0)
        font.setBold(True)
        group.setFont(0, font)
        self.tree.addTopLevelItem(group)
        group.setFirstColumnSpanned(True)
        group.setExpanded(True)
        return group

    def _fill(self, group: QTreeWidgetItem, rows: list[tuple[ModelRef | None, str, str, str]]) -> None:
        group.takeChildren()
        for ref, name, size, tooltip in rows:
            child = QTreeWidgetItem([name, size])
            child.setToolTip(0, tooltip)
            if ref is None:  # an explanation, not a model
                child.setFlags(Qt.ItemFlag.NoItemFlags)
                group.addChild(child)
                child.setFirstColumnSpanned(True)
                continue
            else:
                child.setData(0, _REF_ROLE, ref)
            group.addChild(child)
        group.setExpanded(True)
        self._update_buttons()

    def set_recent(self, refs: list[dict[str, str]]) -> None:
        rows = []
        for data in refs:
            try:
                ref = ModelRef.from_dict(data)
            except ModelError:
                continue  # a settings entry from another version: skip, it is only a shortcut
            rows.append((ref, ref.name or ref.location, "", ref.location or "Bundled with QuantTune"))
        self._fill(self.recent, rows or [(None, "None yet", "", "")])

    def set_scanning(self) -> None:
        self._fill(self.found, [(None, "Looking…", "", "")])
        self.refresh_button.setEnabled(False)

    def set_available(self, models: list[Any]) -> None:
        """``models``: core.models.sources.AvailableModel list (the bundled default is skipped:
        it has its own button)."""
        rows = [
            (m.ref, m.ref.name, format_bytes(m.size_bytes) if m.size_bytes else "", m.detail)
            for m in models
            if m.ref.kind != "default"
        ]
        self._fill(self.found, rows or [(None, "No models in the local Hugging Face cache", "", "")])
        self.refresh_button.setEnabled(True)

    def set_scan_failed(self, message: str) -> None:
        self._fill(self.found, [(None, f"Could not look: {message}", "", message)])
        self.refresh_button.setEnabled(True)

    def refs(self, group: str = "found") -> list[ModelRef]:
        parent = self.found if group == "found" else self.recent
        children = (parent.child(i) for i in range(parent.childCount()))
        return [c.data(0, _REF_ROLE) for c in children if c.data(0, _REF_ROLE) is not None]

    def selected_ref(self) -> ModelRef | None:
        item = self.tree.currentItem()
        return item.data(0, _REF_ROLE) if item is not None else None

    @Slot()
    def load_selected(self) -> None:
        ref = self.selected_ref()
        if ref is not None:
            self.modelChosen.emit(ref)

    @Slot(QTreeWidgetItem, int)
    def _on_activated(self, item: QTreeWidgetItem, column: int) -> None:
        ref = item.data(0, _REF_ROLE)
        if ref is not None:
            self.modelChosen.emit(ref)

    @Slot()
    def _update_buttons(self) -> None:
        self.load_button.setEnabled(self.selected_ref() is not None)
