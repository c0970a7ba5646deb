"""What the window is working on: the open project, the loaded model, the chosen device.

State lives in core objects (core.project.Project, core.settings.AppSettings, the
LoadedModel); the Session holds them, tells the widgets when they change, and saves the
project a moment after each edit (``mark_dirty``), so nothing is lost and a burst of edits
costs one write.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from core import project as projects
from core import settings as app_settings
from core.errors import ModelError, ProjectError, QuantTuneError, StorageError
from core.models.sources import DEFAULT_REF, ModelRef
from desktop.jobs import JobHandle, JobRunner, NoParams

log = logging.getLogger(__name__)

SAVE_DELAY_MS = 500


def _detect_devices_job(params: NoParams, ctx) -> list:
    from core.device import detect_devices

    return detect_devices()


def _load_job(params, ctx):
    from core.models import loading

    return loading.run(params, ctx)


class Session(QObject):
    """Signals:

    - ``projectChanged(Project | None)``: another project was opened, or it was closed/renamed.
    - ``modelLoading(JobHandle, ModelRef)``: a load started; panes bind their progress to it.
    - ``modelChanged(LoadedModel | None)``: a load succeeded (or the model was dropped).
    - ``devicesChanged(list[DeviceInfo])`` and ``deviceChanged(str)``: the device list / choice.
    - ``saveStateChanged(str)``: "saved", "pending", "failed" or "none" (no project).
    - ``problem(QuantTuneError)``: a project or storage failure no pane started (autosave).
    """

    projectChanged = Signal(object)
    modelLoading = Signal(object, object)
    modelChanged = Signal(object)
    devicesChanged = Signal(list)
    deviceChanged = Signal(str)
    saveStateChanged = Signal(str)
    problem = Signal(object)

    def __init__(self, runner: JobRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.settings = app_settings.load_settings()
        self.project: projects.Project | None = None
        self._scratch_quantize = projects.QuantizeSettings()  # used while no project is open
        self._scratch_finetune = projects.FinetuneSettings()
        self.model: Any = None  # core.models.loading.LoadedModel
        self.devices: list = []
        self.save_state = "none"
        self._load_handle: JobHandle | None = None
        self._load_params: Any = None  # core.models.loading.LoadParams of that load
        self._trusted_code: set[ModelRef] = set()  # models whose own code the user allowed
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(SAVE_DELAY_MS)
        self._save_timer.timeout.connect(self.save_now)

    # -- projects ---------------------------------------------------------------------------
    def new_project(self, name: str) -> projects.Project:
        """Create a project, open it, and give it the model already loaded (if any)."""
        project = projects.create_project(name)
        self.open_project(project.folder)
        return project

    def open_project(self, folder: Path) -> projects.Project:
        """Open the project in ``folder``; raises ProjectError (damaged, missing) unchanged."""
        project = projects.load_project(Path(folder))
        self.flush()
        self.project = project
        self.settings.add_recent_project(project.folder)
        self._save_settings()
        self._set_save_state("saved")
        self.projectChanged.emit(project)
        self.deviceChanged.emit(self.device)
        self.apply_project_model()
        return project

    @property
    def quantize_settings(self) -> projects.QuantizeSettings:
        """The Precision and Calibrate steps' settings: the project's, else this session's."""
        return self.project.quantize if self.project is not None else self._scratch_quantize

    @property
    def finetune_settings(self) -> projects.FinetuneSettings:
        """The Fine-tuning method and Train steps' settings: the project's, else this session's."""
        return self.project.finetune if self.project is not None else self._scratch_finetune

    def close_project(self) -> None:
        self.flush()
        self.project = None
        self._set_save_state("none")
        self.projectChanged.emit(None)

    def rename_project(self, new_name: str) -> None:
        projects.rename_project(self.project, new_name)
        self._set_save_state("saved")
        self.projectChanged.emit(self.project)

    def duplicate_project(self) -> projects.Project:
        """Copy the open project and continue in the copy."""
        self.flush()
        copy = projects.duplicate_project(self.project)
        self.open_project(copy.folder)
        return copy

    def delete_project(self) -> None:
        doomed = self.project
        self._save_timer.stop()
        self.project = None
        self._set_save_state("none")
        self.projectChanged.emit(None)
        projects.delete_project(doomed)

    def save_as(self, name: str) -> projects.Project:
        """Save the open project's settings as a new project (e.g. its folder was deleted)."""
        old = self.project
        new = projects.create_project(name)
        new.load, new.step_status, new.notes = old.load, old.step_status, old.notes
        new.inspect, new.quantize = old.inspect, old.quantize
        if old.artifacts.is_dir():  # the runs' models come along; without them the records would dangle
            shutil.copytree(old.artifacts, new.artifacts, dirs_exist_ok=True)
            new.runs = old.runs
        projects.save_project(new)
        self._save_timer.stop()
        self.project = None
        self.open_project(new.folder)
        return new

    # -- autosave ---------------------------------------------------------------------------
    def mark_dirty(self) -> None:
        """Call after every edit of the project; it is saved SAVE_DELAY_MS later."""
        if self.project is None:
            return
        self._set_save_state("pending")
        self._save_timer.start()

    @Slot()
    def save_now(self) -> bool:
        """Write the project now if it has unsaved edits; False (and ``problem``) on failure."""
        self._save_timer.stop()
        if self.project is None or self.save_state not in ("pending", "failed"):
            return True
        try:
            projects.save_project(self.project)
        except (ProjectError, StorageError) as exc:
            log.warning("Autosave failed: %s", exc)
            self._set_save_state("failed")
            self.problem.emit(exc)
            return False
        self._set_save_state("saved")
        return True

    def flush(self) -> bool:
        """Save pending edits at once (before closing, switching project, quitting)."""
        return self.save_now()

    def _set_save_state(self, state: str) -> None:
        if state != self.save_state:
            self.save_state = state
            self.saveStateChanged.emit(state)

    def _save_settings(self) -> None:
        try:
            app_settings.save_settings(self.settings)
        except StorageError as exc:
            log.warning("Settings not saved: %s", exc)
            self.problem.emit(exc)

    # -- devices ----------------------------------------------------------------------------
    @property
    def device(self) -> str:
        """The chosen device id, or "auto" (best available)."""
        return self.project.load.device if self.project is not None else self.settings.last_device

    def set_device(self, device_id: str) -> None:
        if device_id == self.device:
            return
        if self.project is not None:
            self.project.load.device = device_id
            self.mark_dirty()
        self.settings.last_device = device_id
        self._save_settings()
        self.deviceChanged.emit(device_id)

    def resolved_device(self) -> str | None:
        """The concrete id "auto" stands for, once the devices are known."""
        if self.device != "auto":
            return self.device
        if not self.devices:
            return None
        from core.device import default_device_id

        return default_device_id(self.devices)

    def device_info(self, device_id: str | None = None):
        device_id = device_id or self.resolved_device()
        return next((d for d in self.devices if d.id == device_id), None)

    def detect_devices(self) -> JobHandle:
        """Find the devices in the background (torch is imported there, not here)."""
        handle = self.runner.start(
            _detect_devices_job, NoParams(), name="Finding devices", owner=self, background=True
        )
        handle.succeeded.connect(self._on_devices)
        handle.failed.connect(self._on_devices_failed)
        return handle

    @Slot(object)
    def _on_devices(self, devices: list) -> None:
        self.devices = list(devices)
        self.devicesChanged.emit(self.devices)

    @Slot(object, str)
    def _on_devices_failed(self, exc: BaseException, tb: str) -> None:
        log.error("Device detection failed: %s\n%s", exc, tb)
        if isinstance(exc, QuantTuneError):
            self.problem.emit(exc)
        else:
            self.problem.emit(
                QuantTuneError(f"Could not list the compute devices ({exc}).", "Using the CPU.")
            )

    # -- models -----------------------------------------------------------------------------
    @property
    def loading(self) -> tuple[JobHandle, ModelRef] | None:
        """(handle, ref) of the load in progress, if any."""
        if self._load_handle is None:
            return None
        return self._load_handle, self._load_params.model

    @property
    def load_params(self) -> Any:
        """The core.models.loading.LoadParams of the load in progress, if any."""
        return self._load_params

    def is_trusted(self, ref: ModelRef) -> bool:
        return ref in self._trusted_code

    def load_model(
        self, ref: ModelRef, *, allow_pickle: bool = False, trust_remote_code: bool = False
    ) -> JobHandle:
        """Load ``ref`` on the chosen device in the background, replacing a load in progress.

        ``trust_remote_code`` is remembered for ``ref`` until the app closes (the user
        confirmed it for this model); pickle consent is saved with the project's model.
        """
        from core.models.loading import LoadParams

        if self._load_handle is not None:
            self._load_handle.cancel()
        if trust_remote_code:
            self._trusted_code.add(ref)
        params = LoadParams(
            model=ref,
            device=self.device,
            allow_pickle=allow_pickle,
            trust_remote_code=ref in self._trusted_code,
        )
        handle = self.runner.start(_load_job, params, name=f"Loading {ref.name}", owner=self)
        self._load_handle, self._load_params = handle, params
        handle.succeeded.connect(self._on_model_loaded)
        handle.finished.connect(self._on_load_finished)
        self.modelLoading.emit(handle, ref)
        return handle

    def load_default_model(self) -> JobHandle:
        return self.load_model(DEFAULT_REF)

    def apply_project_model(self) -> JobHandle | None:
        """Make the loaded model match the open project's (loading it if needed)."""
        if self.project is None:
            return None
        saved = self.project.load.model
        if not saved:
            self._record_model_in_project()
            return None
        try:
            ref = ModelRef.from_dict(saved)
        except ModelError as exc:
            self.problem.emit(exc)
            return None
        if self.model is not None and self.model.ref == ref:
            return None
        if self._load_handle is not None and self._load_params.model == ref:
            return self._load_handle
        return self.load_model(ref, allow_pickle=self.project.load.allow_pickle)

    @Slot(object)
    def _on_model_loaded(self, loaded: Any) -> None:
        if self._load_handle is None or self.sender() is not self._load_handle:
            return  # a load that was replaced by a newer one
        allow_pickle = self._load_params.allow_pickle
        self.model = loaded
        self.settings.add_recent_model(loaded.ref.to_dict())
        self._save_settings()
        self._record_model_in_project(allow_pickle)
        self.modelChanged.emit(loaded)

    @Slot()
    def _on_load_finished(self) -> None:
        if self._load_handle is not None and self.sender() is self._load_handle:
            self._load_handle = self._load_params = None

    def _record_model_in_project(self, allow_pickle: bool | None = None) -> None:
        if self.project is None or self.model is None:
            return
        load = self.project.load
        ref = self.model.ref.to_dict()
        changed = load.model != ref or self.project.step_status.get("load") != "done"
        load.model = ref
        if allow_pickle is not None and load.allow_pickle != allow_pickle:
            load.allow_pickle, changed = allow_pickle, True
        self.project.step_status["load"] = "done"
        if changed:
            self.mark_dirty()
