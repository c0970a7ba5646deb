"""QuantTune's desktop face (PySide6): main window, one module per wizard pane, the job runner.

Nothing here imports torch or transformers at module level: the window must appear first.
This package file imports nothing, so ``desktop.launcher`` can run the CLI without Qt.
"""
