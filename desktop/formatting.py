"""Short human texts for numbers the window shows (times, devices, model references).

Model sizes and counts use core.learn's formatters so the Learn panel and the card agree.
"""

from __future__ import annotations

import math
from typing import Any

from core.learn import format_bytes, format_count

__all__ = ["format_bytes", "format_count", "format_eta", "format_seconds", "format_device", "format_ref"]

GIB = 1 << 30


def format_eta(seconds: float | None) -> str:
    """'about 12 s left'; empty when unknown. Rounded so the text does not flicker."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 1:
        return "almost done"
    if seconds < 60:
        return f"about {max(1, round(seconds))} s left"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 60)} min {round(seconds % 60)} s"


def format_device(device: Any) -> str:
    """'CPU — 24 GB' / 'NVIDIA H100 — 80 GB' from a core.device.DeviceInfo.

    Binary gigabytes, as GPU vendors and system monitors label memory (an '80 GB' card holds
    80 GiB).
    """
    name = "CPU" if device.kind == "cpu" else device.name
    if not device.total_memory_bytes:
        return name
    return f"{name} — {device.total_memory_bytes / GIB:.0f} GB"


def format_ref(ref: dict[str, str] | None) -> str:
    """A saved model reference (ModelRef as dict) as one line."""
    if not ref:
        return "no model"
    return ref.get("name") or ref.get("location") or ref.get("kind", "model")
