"""App-wide settings kept between sessions: recent projects and recent models."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core import atomic, paths

MAX_RECENT = 10


@dataclass
class AppSettings:
    recent_projects: list[str] = field(default_factory=list)  # project folders
    recent_models: list[dict[str, str]] = field(default_factory=list)  # ModelRef dicts
    last_device: str = "auto"

    def add_recent_project(self, folder: Path) -> None:
        entry = str(folder)
        self.recent_projects = [entry] + [p for p in self.recent_projects if p != entry]
        del self.recent_projects[MAX_RECENT:]

    def add_recent_model(self, ref: dict[str, str]) -> None:
        self.recent_models = [ref] + [r for r in self.recent_models if r != ref]
        del self.recent_models[MAX_RECENT:]

    def existing_recent_projects(self) -> list[Path]:
        return [Path(p) for p in self.recent_projects if (Path(p) / "project.json").is_file()]


def load_settings() -> AppSettings:
    """Read settings; a missing or damaged file gives defaults (it only holds conveniences)."""
    try:
        data: Any = json.loads(paths.settings_file().read_text(encoding="utf-8"))
        known = {k: v for k, v in data.items() if k in AppSettings.__dataclass_fields__}
        return AppSettings(**known)
    except (OSError, ValueError, TypeError, AttributeError):
        return AppSettings()


def save_settings(settings: AppSettings) -> None:
    atomic.write_json(paths.settings_file(), asdict(settings))
