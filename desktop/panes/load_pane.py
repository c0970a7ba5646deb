"""Step 1, "Load model": pick a model and a device, see its card, ask it a question.

Data flow: the pane asks the Session to load a ModelRef (the Session runs core's load job and
keeps the result); the pane follows that job (progress, errors, the unsafe-model question)
and mirrors the loaded model's card.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PySide6.QtCore import Slot
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QShowEvent
from PySide6.QtWidgets import (
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from core.errors import QuantTuneError, UnsafeModel
from core.models import sources
from core.models.sources import DEFAULT_REF, ModelRef
from desktop import dialogs
from desktop.formatting import format_device
from desktop.jobs import JobHandle, NoParams
from desktop.session import Session
from desktop.widgets.ask_box import AskBox
from desktop.widgets.error_panel import ErrorPanel
from desktop.widgets.job_bar import JobBar
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.model_card import ModelCardView
from desktop.widgets.model_sources import ModelSourceList

log = logging.getLogger(__name__)

DEFAULT_BUTTON = "Bundled default (SmolLM2-135M-Instruct)"
CODE_QUESTION = (
    "“{name}” ships its own Python code, which would run on this computer with your "
    "permissions.\n\nRun it anyway? Only say yes if you trust where the model came from."
)
PICKLE_QUESTION = (
    "“{name}” stores its weights as pickle files, which can hide code. QuantTune would read "
    "them with torch.load(weights_only=True), which unpickles tensors only.\n\n"
    "Allow loading its pickle files?"
)

REFUSED_FIX = {
    "allow_pickle": "Not loaded. Convert the model to safetensors, or load it again and answer "
    "“Allow pickle” if you trust where it came from.",
    "trust_remote_code": "Not loaded. Read the model's .py files; if you trust them, load it again "
    "and answer “Run its code”.",
}


def _scan_job(params: NoParams, ctx) -> list:
    ctx.stage("Looking for models in the Hugging Face cache")
    return sources.list_available()


class LoadPane(QScrollArea):
    """The Load step. Talks outward only through the Session (no signals of its own)."""

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.runner = session.runner
        self._load_handle: JobHandle | None = None
        self._load_params: Any = None
        self._scan_handle: JobHandle | None = None
        self._scanned = False
        self.setWidgetResizable(True)
        # Drops land on the viewport, which hands them to this scroll area's handlers.
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.job_bar = JobBar()
        self.error_panel = ErrorPanel()
        self.sources = ModelSourceList()
        self.card = ModelCardView()
        self.ask_box = AskBox(self.runner)
        self.learn = LearnPanel("load")
        self.setWidget(self._build())
        self._connect()
        self._sync_all()

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> QWidget:
        page = QWidget()
        grid = QGridLayout(page)
        grid.setContentsMargins(20, 16, 20, 16)
        grid.setHorizontalSpacing(16)
        title = QLabel("Load a model")
        title.setObjectName("screenTitle")
        intro = QLabel(
            "Pick the language model to work on and where it runs. Everything stays on this computer."
        )
        intro.setWordWrap(True)
        grid.addWidget(title, 0, 0, 1, 2)
        grid.addWidget(intro, 1, 0, 1, 2)
        left = QVBoxLayout()
        left.addWidget(self._source_box())
        left.addWidget(self._device_box())
        left.addWidget(self.job_bar)
        left.addWidget(self.error_panel)
        left.addStretch(1)
        right = QVBoxLayout()
        right.addWidget(self._boxed("Model card", self.card))
        right.addWidget(self._boxed("Ask the model", self.ask_box), 1)
        grid.addLayout(left, 2, 0)
        grid.addLayout(right, 2, 1)
        grid.addWidget(self.learn, 3, 0, 1, 2)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)
        grid.setRowStretch(2, 1)
        return page

    @staticmethod
    def _boxed(title: str, widget: QWidget) -> QGroupBox:
        box = QGroupBox(title)
        QVBoxLayout(box).addWidget(widget)
        return box

    def _source_box(self) -> QGroupBox:
        box = QGroupBox("Choose a model")
        self.default_button = QPushButton(DEFAULT_BUTTON)
        self.default_button.setObjectName("primary")
        self.default_button.setToolTip("135 million parameters, bundled with QuantTune: loads in seconds")
        self.folder_button = QPushButton("Open model folder…")
        self.gguf_button = QPushButton("Open GGUF file…")
        files = QHBoxLayout()
        files.addWidget(self.folder_button)
        files.addWidget(self.gguf_button)
        hint = QLabel("…or drop a model folder or a .gguf file onto this page.")
        hint.setObjectName("hint")
        layout = QVBoxLayout(box)
        layout.addWidget(self.default_button)
        layout.addLayout(files)
        layout.addWidget(self.sources, 1)
        layout.addWidget(hint)
        return box

    def _device_box(self) -> QGroupBox:
        box = QGroupBox("Device")
        self.device_combo = QComboBox()
        self.device_note = QLabel()
        self.device_note.setObjectName("hint")
        self.device_note.setWordWrap(True)
        self.reload_button = QPushButton("Reload on this device")
        layout = QVBoxLayout(box)
        layout.addWidget(self.device_combo)
        layout.addWidget(self.device_note)
        layout.addWidget(self.reload_button)
        return box

    def _connect(self) -> None:
        self.default_button.clicked.connect(self.load_default)
        self.folder_button.clicked.connect(self.ask_folder)
        self.gguf_button.clicked.connect(self.ask_gguf)
        self.sources.modelChosen.connect(self.load)
        self.sources.refreshRequested.connect(self.scan)
        self.device_combo.activated.connect(self._on_device_picked)
        self.reload_button.clicked.connect(self.reload)
        self.ask_box.answerStarted.connect(self._sync_buttons)
        self.ask_box.answerFinished.connect(self._sync_buttons)
        s = self.session
        s.modelLoading.connect(self._on_load_started)
        s.modelChanged.connect(self._on_model_changed)
        s.devicesChanged.connect(self._fill_devices)
        s.deviceChanged.connect(self._on_device_changed)
        s.projectChanged.connect(self._sync_all)

    @Slot()
    def _sync_all(self, *_: Any) -> None:
        self._fill_devices(self.session.devices)
        self.sources.set_recent(self.session.settings.recent_models)
        self._on_model_changed(self.session.model)
        loading = self.session.loading
        if loading is not None and loading[0] is not self._load_handle:
            self._on_load_started(*loading)

    # -- choosing a model ---------------------------------------------------------------
    @Slot()
    def load_default(self) -> JobHandle:
        return self.load(DEFAULT_REF)

    @Slot(object)
    def load(
        self, ref: ModelRef, *, allow_pickle: bool = False, trust_remote_code: bool = False
    ) -> JobHandle:
        self.error_panel.dismiss()
        return self.session.load_model(ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    def load_path(self, path: Path) -> JobHandle | None:
        """Load what ``path`` points at (folder, .gguf, weights file); errors show inline."""
        try:
            ref = sources.resolve(str(path))
        except QuantTuneError as exc:
            self.error_panel.show_error(exc)
            return None
        return self.load(ref)

    @Slot()
    def ask_folder(self) -> None:
        folder = dialogs.choose_folder(self, "Open model folder")
        if folder is not None:
            self.load_path(folder)

    @Slot()
    def ask_gguf(self) -> None:
        path = dialogs.choose_file(self, "Open GGUF file", "GGUF models (*.gguf);;All files (*)")
        if path is not None:
            self.load_path(path)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()
            self.load_path(Path(urls[0].toLocalFile()))

    # -- following a load -----------------------------------------------------------------
    @Slot(object, object)
    def _on_load_started(self, handle: JobHandle, ref: ModelRef) -> None:
        self._load_handle = handle
        self._load_params = self.session.load_params
        self.error_panel.dismiss()
        self.job_bar.bind(handle)
        self.card.set_waiting(f"Loading {ref.name}… (progress on the left)")
        handle.failed.connect(self._on_load_failed)
        handle.finished.connect(self._on_load_finished)
        self._sync_buttons()

    @Slot()
    def _on_load_finished(self) -> None:
        if self.session.loading is None:
            self.card.set_waiting("")
        self._sync_buttons()

    @Slot(object, str)
    def _on_load_failed(self, exc: BaseException, tb: str) -> None:
        if self.sender() is not self._load_handle:
            return
        params, self._load_handle = self._load_params, None
        # Consent already given and it still failed: show why, do not ask again.
        if (
            isinstance(exc, UnsafeModel)
            and exc.needs
            and params is not None
            and not getattr(params, exc.needs)
        ):
            if self._ask_consent_and_retry(exc, params):
                return
            # the user has just refused the consent: say what follows from that answer
            self.error_panel.show_message(exc.message, REFUSED_FIX.get(exc.needs, exc.fix), tb)
            return
        self.error_panel.show_error(exc, tb)

    def _ask_consent_and_retry(self, exc: UnsafeModel, params: Any) -> bool:
        """Ask for the consent the model needs (default: no); True if a new load started."""
        needs = exc.needs
        question = PICKLE_QUESTION if needs == "allow_pickle" else CODE_QUESTION
        title = "Allow pickle weights?" if needs == "allow_pickle" else "Run the model's own code?"
        yes = "Allow pickle" if needs == "allow_pickle" else "Run its code"
        if not dialogs.confirm(
            self, title, question.format(name=params.model.name), yes=yes, no="Don't load"
        ):
            return False
        flags = {
            "allow_pickle": params.allow_pickle,
            "trust_remote_code": params.trust_remote_code,
            needs: True,
        }
        self.load(params.model, **flags)
        return True

    @Slot(object)
    def _on_model_changed(self, loaded: Any) -> None:
        card = loaded.card if loaded is not None else None
        self.card.set_card(card)
        self.learn.set_numbers(card.to_dict() if card is not None else {})
        self.ask_box.set_model(loaded)
        self.sources.set_recent(self.session.settings.recent_models)
        self._update_device_note()
        self._sync_buttons()

    @Slot()
    def _sync_buttons(self, *_: Any) -> None:
        busy = self.session.loading is not None or self.ask_box.busy
        for button in (self.default_button, self.folder_button, self.gguf_button, self.reload_button):
            button.setEnabled(not busy)
        self.sources.setEnabled(not busy)
        self.ask_box.ask_button.setEnabled(self.session.model is not None and not busy)

    # -- devices --------------------------------------------------------------------------
    @Slot(list)
    def _fill_devices(self, devices: list) -> None:
        self.device_combo.clear()
        if not devices:
            self.device_combo.addItem("Finding devices…")
            self.device_combo.setEnabled(False)
        else:
            for device in devices:
                self.device_combo.addItem(format_device(device), device.id)
            self.device_combo.setEnabled(True)
            self._on_device_changed(self.session.device)
        self._update_device_note()

    @Slot(str)
    def _on_device_changed(self, device_id: str) -> None:
        index = self.device_combo.findData(self.session.resolved_device())
        if index >= 0:
            self.device_combo.setCurrentIndex(index)
        self._update_device_note()

    @Slot(int)
    def _on_device_picked(self, index: int) -> None:
        device_id = self.device_combo.itemData(index)
        if device_id:
            self.session.set_device(device_id)

    def _update_device_note(self) -> None:
        loaded, chosen = self.session.model, self.session.resolved_device()
        moved = loaded is not None and chosen is not None and loaded.device != chosen
        if moved:
            self.device_note.setText(f"The model is on {loaded.device}. Reload it to run it on {chosen}.")
        elif self.session.devices:
            gpu = any(d.kind != "cpu" for d in self.session.devices)
            self.device_note.setText(
                "" if gpu else "No GPU found: jobs run on the CPU (slower, but everything works)."
            )
        self.device_note.setVisible(bool(self.device_note.text()))
        self.reload_button.setVisible(moved)

    @Slot()
    def reload(self) -> None:
        if self.session.model is not None:
            ref = self.session.model.ref
            self.load(ref, allow_pickle=bool(self._load_params and self._load_params.allow_pickle))

    # -- the cache scan ---------------------------------------------------------------------
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._scanned:
            self._scanned = True
            self.scan()

    @Slot()
    def scan(self) -> JobHandle | None:
        if self._scan_handle is not None:
            return self._scan_handle
        self.sources.set_scanning()
        handle = self.runner.start(
            _scan_job, NoParams(), name="Looking for models", owner=self, background=True
        )
        handle.succeeded.connect(self.sources.set_available)
        handle.failed.connect(self._on_scan_failed)
        handle.finished.connect(self._on_scan_finished)
        self._scan_handle = handle
        return handle

    @Slot(object, str)
    def _on_scan_failed(self, exc: BaseException, tb: str) -> None:
        log.warning("Model scan failed: %s\n%s", exc, tb)
        self.sources.set_scan_failed(str(exc))

    @Slot()
    def _on_scan_finished(self) -> None:
        self._scan_handle = None


if __name__ == "__main__":  # preview: python -m desktop.panes.load_pane
    import sys

    from desktop.preview import preview

    sys.exit(preview(LoadPane, (1100, 800), Session.detect_devices))
