"""Start-up: the window shows before torch is imported; uncaught errors reach a dialog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from core.errors import StorageError
from core.models.sources import DEFAULT_REF
from desktop import excepthook
from desktop.main_window import MainWindow

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "huggingface_hub", "pyqtgraph")


def run_python(script: str, tmp_path: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QUANTTUNE_HOME=str(tmp_path / "home"))
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_importing_the_desktop_does_not_import_torch(tmp_path):
    script = (
        "import sys, json, desktop.app, desktop.main_window, desktop.panes.load_pane, desktop.launcher\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = run_python(script, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_main_shows_the_window_before_torch_and_exits_cleanly(tmp_path):
    """main() with a job still running at quit: the job is cancelled and waited for."""
    script = """
import json, sys
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
import desktop.app
app = QApplication(sys.argv)
seen = {}
def at_show():
    windows = [w for w in app.topLevelWidgets() if w.isVisible()]
    seen["shown"] = [w.windowTitle() for w in windows]
    seen["heavy_at_show"] = [m for m in HEAVY if m in sys.modules]
QTimer.singleShot(0, at_show)      # queued before main() queues the background work
QTimer.singleShot(300, app.quit)   # device detection is importing torch by then
code = desktop.app.main(["quanttune"])
seen["code"] = code
seen["org"] = app.organizationName()
print(json.dumps(seen))
""".replace("HEAVY", repr(HEAVY))
    out = run_python(script, tmp_path)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["shown"] == ["QuantTune"]
    assert seen["heavy_at_show"] == []
    assert seen["code"] == 0 and seen["org"] == "QuantTune"


def test_background_work_finds_devices_and_starts_the_default_model(qtbot):
    window = MainWindow()
    window.show()
    window.start_background_work(autoload=True)
    handle, ref = window.session.loading
    assert ref == DEFAULT_REF
    assert window.panes["load"].job_bar.handle is handle  # the Load pane follows the load
    assert window.sidebar.status_text("load").startswith("Loading")
    handle.cancel()
    assert window.runner.wait_all(60_000)
    assert window.session.model is None and window.session.devices
    window.close()


def test_no_autoload_means_no_model_job(qtbot):
    window = MainWindow()
    window.show()
    window.start_background_work(autoload=False)
    assert window.session.loading is None
    assert window.runner.wait_all(60_000)
    window.close()


def test_uncaught_errors_are_logged_and_shown(qtbot, scripted_dialogs, caplog):
    scripted_dialogs.answer("show_error", None, None)
    reporter = excepthook.install(None)
    try:
        try:
            raise StorageError("The disk is full.", "Free some space.")
        except StorageError as exc:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        qtbot.waitUntil(lambda: len(scripted_dialogs.asked) == 1, timeout=2000)
        kind, title, text = scripted_dialogs.asked[0]
        assert kind == "show_error" and "The disk is full." in text and "Free some space." in text
        assert "The disk is full." in caplog.text

        worker = threading.Thread(target=lambda: 1 / 0)
        worker.start()
        worker.join()
        qtbot.waitUntil(lambda: len(scripted_dialogs.asked) == 2, timeout=2000)
        assert "ZeroDivisionError" in scripted_dialogs.asked[1][2]
        assert reporter is not None
    finally:
        excepthook.uninstall()


def test_the_launcher_reaches_the_cli_without_qt(tmp_path):
    """`quanttune <step>` runs headless: the launcher imports Qt only to open the window."""
    script = (
        "import sys, contextlib, io, desktop.launcher\n"
        "sys.argv = ['quanttune', '--help']\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    desktop.launcher.main()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'shiboken6')))\n"
    )
    out = run_python(script, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
