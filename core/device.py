"""Which compute devices this computer offers, and which one a job should use.

torch is imported only inside the functions: the GUI imports this module on its own thread,
before the worker has paid for torch.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import QuantTuneError


@dataclass(frozen=True)
class DeviceInfo:
    """One device: ``id`` is what torch understands ("cpu", "cuda:0", "mps")."""

    id: str
    name: str
    total_memory_bytes: int | None
    kind: str  # "cpu", "cuda" or "mps"

    def to_dict(self) -> dict:
        return asdict(self)


def detect_devices() -> list[DeviceInfo]:
    """The CPU first, then every CUDA device, then Apple's MPS if present."""
    devices = [_cpu_device()]
    import torch

    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(DeviceInfo(f"cuda:{index}", props.name, int(props.total_memory), "cuda"))
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append(DeviceInfo("mps", "Apple GPU (Metal)", _mps_memory(torch), "mps"))
    return devices


def default_device_id(devices: list[DeviceInfo]) -> str:
    """The first GPU if there is one: even a small GPU beats 2 CPU cores for these jobs."""
    for device in devices:
        if device.kind != "cpu":
            return device.id
    return "cpu"


def resolve_device(choice: str) -> str:
    """Turn the user's choice ("auto", "cpu", "cuda", "cuda:1", "mps") into an available id."""
    wanted = (choice or "auto").strip().lower()
    devices = detect_devices()
    if wanted == "auto":
        return default_device_id(devices)
    if wanted == "cuda":
        wanted = "cuda:0"
    ids = [device.id for device in devices]
    if wanted in ids:
        return wanted
    raise QuantTuneError(
        f"The device '{choice}' is not available on this computer.",
        f"Choose one of: auto, {', '.join(ids)}.",
    )


def _cpu_device() -> DeviceInfo:
    return DeviceInfo("cpu", _cpu_name(), _physical_memory(), "cpu")


def _cpu_name() -> str:
    # platform.processor() is empty on most Linux systems, hence /proc/cpuinfo first.
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _physical_memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    try:  # os.sysconf does not exist on Windows
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None


def _mps_memory(torch) -> int | None:
    # MPS shares system memory; Metal's recommended working-set size is the useful limit.
    try:
        return int(torch.mps.recommended_max_memory())
    except (AttributeError, RuntimeError):
        return _physical_memory()
