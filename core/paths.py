"""Where QuantTune keeps things on disk (platformdirs, app name "QuantTune").

``QUANTTUNE_HOME`` overrides the base folder: tests and portable installs use it.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "QuantTune"


def _base(kind: str) -> Path:
    override = os.environ.get("QUANTTUNE_HOME")
    if override:
        return Path(override) / kind
    import platformdirs

    if kind == "data":
        return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def data_dir() -> Path:
    """User data: projects and the app's settings (recent lists)."""
    return _base("data")


def cache_dir() -> Path:
    """Rebuildable things, such as the default model converted to safetensors."""
    return _base("cache")


def projects_dir() -> Path:
    return data_dir() / "projects"


def settings_file() -> Path:
    return data_dir() / "settings.json"
