"""Start the desktop app: ``main(argv) -> exit code``.

The window shows first; torch and transformers are imported only afterwards, by the jobs that
need them (device detection, the default model's load), in worker threads.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from desktop import excepthook, startup_probe
from desktop.gui_gc import GuiThreadCollector
from desktop.main_window import MainWindow

log = logging.getLogger(__name__)

STYLE_SHEET = Path(__file__).resolve().parents[1] / "resources" / "style.qss"
FINAL_WAIT_MS = 30_000


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def apply_style(app: QApplication) -> None:
    """The optional style sheet; the app is fully usable with Qt's own look if it is missing."""
    try:
        app.setStyleSheet(STYLE_SHEET.read_text(encoding="utf-8"))
    except OSError:
        log.info("No style sheet at %s; using the platform style", STYLE_SHEET)


def create_app(argv: list[str]) -> QApplication:
    app = QApplication.instance() or QApplication(argv)
    app.setOrganizationName("QuantTune")
    app.setApplicationName("QuantTune")
    app.setApplicationDisplayName("QuantTune")
    apply_style(app)
    return app


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    argv = list(sys.argv if argv is None else argv) or ["quanttune"]
    app = create_app(argv)
    collector = GuiThreadCollector(parent=app)  # before any job thread starts
    window = MainWindow()
    excepthook.install(window)
    startup_probe.install_if_requested(window)
    window.show()
    autoload = os.environ.get("QUANTTUNE_NO_AUTOLOAD", "") not in ("1", "true", "yes")
    # After the first paint: the window is up before any job imports torch.
    QTimer.singleShot(0, lambda: window.start_background_work(autoload=autoload))
    code = app.exec()
    code = _finish(window, code)
    collector.stop()
    return code


def _finish(window: MainWindow, code: int) -> int:
    """Make sure no job thread outlives the app: Qt aborts on a QThread destroyed running."""
    window.runner.cancel_all()
    if not window.runner.wait_all(FINAL_WAIT_MS):
        # A job is stuck inside C code (e.g. a huge load). Ending the process now is the only
        # way out that does not abort with a crash report; the project was saved on close.
        log.error("Jobs still running at exit; ending the process")
        logging.shutdown()
        os._exit(code)
    window.session.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
