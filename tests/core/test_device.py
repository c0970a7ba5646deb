"""Device detection on the machine the tests run on (a CPU is always there)."""

import pytest

from core.device import DeviceInfo, default_device_id, detect_devices, resolve_device
from core.errors import QuantTuneError


def test_cpu_is_detected_first_with_name_and_memory():
    devices = detect_devices()
    cpu = devices[0]
    assert cpu.id == "cpu" and cpu.kind == "cpu"
    assert cpu.name.strip()
    assert cpu.total_memory_bytes is None or cpu.total_memory_bytes > 256 * 2**20
    assert cpu.to_dict() == {
        "id": "cpu",
        "name": cpu.name,
        "total_memory_bytes": cpu.total_memory_bytes,
        "kind": "cpu",
    }


def test_default_prefers_the_first_gpu():
    cpu = DeviceInfo("cpu", "CPU", None, "cpu")
    gpus = [DeviceInfo("cuda:0", "A", 8 << 30, "cuda"), DeviceInfo("cuda:1", "B", 8 << 30, "cuda")]
    assert default_device_id([cpu]) == "cpu"
    assert default_device_id([cpu, *gpus]) == "cuda:0"


def test_resolve_auto_and_explicit_cpu():
    assert resolve_device("auto") == default_device_id(detect_devices())
    assert resolve_device(" CPU ") == "cpu"


def test_resolve_unknown_device_names_it_and_lists_the_choices():
    with pytest.raises(QuantTuneError) as info:
        resolve_device("cuda:7")
    assert "cuda:7" in info.value.message
    assert "cpu" in info.value.fix and "auto" in info.value.fix
