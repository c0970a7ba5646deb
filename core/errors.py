"""Exceptions that carry a message for the user: what went wrong and what to do about it.

Core raises these and never shows dialogs; the pane that started a job (or the CLI) shows
``message`` and ``fix``, with the traceback behind a toggle.
"""

from __future__ import annotations


class QuantTuneError(Exception):
    """An error the user can act on."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} {self.fix}".strip()


class Cancelled(QuantTuneError):
    """The user cancelled the job; not a failure."""

    def __init__(self, message: str = "Cancelled.") -> None:
        super().__init__(message)


class InvalidSettings(QuantTuneError):
    """A job's params failed validation; ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "The settings have problems: " + "; ".join(self.problems),
            "Correct them and start again.",
        )


class ModelError(QuantTuneError):
    """A model could not be found, read or trusted."""


class ModelNotFound(ModelError):
    pass


class NotAModel(ModelError):
    pass


class CorruptModel(ModelError):
    pass


class UnsafeModel(ModelError):
    """Loading would run code from the model folder or unpickle a file.

    ``needs`` names the consent that would allow it: "allow_pickle" or "trust_remote_code"
    (None when no consent can make it safe).
    """

    def __init__(self, message: str, fix: str = "", needs: str | None = None) -> None:
        super().__init__(message, fix)
        self.needs = needs


class UnsupportedModel(ModelError):
    pass


class ProjectError(QuantTuneError):
    """A project could not be read, written or found."""


class StorageError(QuantTuneError):
    """The disk refused a write (full, read-only, permissions)."""
