"""The global exception hook: an error no pane caught still reaches the user and the log.

Exceptions raised in slots and event handlers end up in ``sys.excepthook`` (PySide calls it);
exceptions in plain Python threads end up in ``threading.excepthook``. Both are logged with
their traceback and shown in a dialog, always from the GUI thread (a signal carries them
there), after the failing handler has returned.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtWidgets import QWidget

from desktop import dialogs
from desktop.widgets.error_panel import describe

log = logging.getLogger("quanttune")


class ExceptionReporter(QObject):
    """Lives in the GUI thread; ``report`` may be called from any thread."""

    reported = Signal(str, str, str)  # message, fix, traceback

    def __init__(self, window: QWidget | None = None) -> None:
        super().__init__()
        self.window = window
        self._showing = False
        # Queued even from the GUI thread: the dialog opens after the failing slot returns.
        self.reported.connect(self._show, Qt.ConnectionType.QueuedConnection)

    def report(self, exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            return
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        log.error("Unhandled error:\n%s", text)
        message, fix = describe(exc)
        self.reported.emit(message, fix, text)

    @Slot(str, str, str)
    def _show(self, message: str, fix: str, details: str) -> None:
        if self._showing:
            return  # one dialog at a time: a storm of errors must not stack dialogs
        self._showing = True
        try:
            body = f"{message}\n\n{fix}" if fix else message
            dialogs.show_error(self.window, "Something went wrong", body, details)
        finally:
            self._showing = False


_reporter: ExceptionReporter | None = None


def install(window: QWidget | None = None) -> ExceptionReporter:
    """Route uncaught exceptions (GUI and plain threads) to the log and a dialog."""
    global _reporter
    _reporter = ExceptionReporter(window)
    sys.excepthook = _reporter.report

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if _reporter is not None and args.exc_value is not None:
            _reporter.report(args.exc_type, args.exc_value, args.exc_traceback)

    threading.excepthook = thread_hook
    return _reporter


def uninstall() -> None:
    global _reporter
    sys.excepthook = sys.__excepthook__
    threading.excepthook = threading.__excepthook__
    _reporter = None
