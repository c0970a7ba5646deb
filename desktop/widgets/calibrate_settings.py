"""The Calibrate step's settings: the method, the range observer, the calibration data and the
evaluation text, laid out as short sentences, with the Quantize button."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from desktop import dialogs

# (key, menu text, tooltip); the job decides which apply to which precision
METHODS = (
    ("rtn", "Round to nearest (RTN)", "Each weight to its nearest level: fast, no calibration data needed"),
    ("gptq", "GPTQ", "Quantizes column by column and corrects the rest of the row for the error made, "
     "using the calibration data's statistics (Frantar et al. 2022)"),
    ("awq", "AWQ", "Scales up the weight channels that meet large activations before rounding, so they "
     "lose less (Lin et al. 2023); then rounds to nearest"),
    ("bitsandbytes", "bitsandbytes", "The bitsandbytes library's LLM.int8(), NF4 or FP4 layers: real "
     "memory savings when the model runs"),
)  # fmt: skip
OBSERVERS = (
    ("minmax", "Min-max", "The block's extremes: nothing is clipped, one outlier stretches the grid"),
    ("percentile", "Percentile", "Clip the rarest values: the range covers the central percentile"),
    (
        "mse",
        "MSE-optimal",
        "The clipping range with the least squared weight error, searched on a grid. "
        "It can clip the rare large weights that matter most: on the default model RTN at INT4 group-64 "
        "scored perplexity 35.7 with it against 32.2 with min-max; GPTQ corrects for it (28.2 against 27.9)",
    ),
)
ACTIVATION_OBSERVERS = (
    ("minmax", "Min-max", "The extremes seen over all calibration tokens"),
    ("moving_average", "Moving-average min-max", "Each batch's extremes folded into a running average"),
    ("percentile", "Percentile", "Clip the rarest activations (99.99 %)"),
    ("mse", "MSE-optimal", "The clipping range with the least squared error on the histogram"),
    ("entropy", "Entropy (KL)", "The range whose 256-level histogram stays closest to the original"),
)
BUNDLED_CALIBRATION = "Bundled sample text (licence texts: GPL-2, MPL-2.0, GFDL-1.3)"
BUNDLED_EVAL = "Bundled held-out text (GPL-3; calibration never sees it)"
TEXT_FILTER = "Text files (*.txt *.jsonl *.md);;All files (*)"


def _combo(items: tuple[tuple[str, str, str], ...]) -> QComboBox:
    combo = QComboBox()
    for key, text, tip in items:
        combo.addItem(text, key)
        combo.setItemData(combo.count() - 1, tip, 3)  # Qt.ToolTipRole
    return combo


def _row(*parts: QWidget | str) -> QHBoxLayout:
    row = QHBoxLayout()
    row.setSpacing(6)
    for part in parts:
        row.addWidget(QLabel(part) if isinstance(part, str) else part)
    row.addStretch(1)
    return row


class CalibrateSettingsBar(QGroupBox):
    """Signal ``changed()`` after any edit (the settings object is already updated)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Calibration", parent)
        self.settings: Any = None  # core.project.QuantizeSettings being edited
        self.method_combo = _combo(METHODS)
        self.observer_combo = _combo(OBSERVERS)
        self.activation_label = QLabel("Activation ranges")
        self.activation_combo = _combo(ACTIVATION_OBSERVERS)
        self.percentile_spin = QDoubleSpinBox(decimals=3, minimum=90.0, maximum=99.999, singleStep=0.01)
        self.percentile_spin.setSuffix(" %")
        self.calibration_label = QLabel(wordWrap=True)
        self.calibration_button = QPushButton("Choose file…")
        self.calibration_bundled = QPushButton("Use bundled")
        self.samples_spin = QSpinBox(minimum=1, maximum=512)
        self.seq_len_spin = QSpinBox(minimum=16, maximum=4096, singleStep=64)
        self.eval_label = QLabel(wordWrap=True)
        self.eval_button = QPushButton("Choose file…")
        self.eval_bundled = QPushButton("Use bundled")
        self.measure_check = QCheckBox("Measure perplexity before and after")
        self.measure_check.setChecked(True)
        self.run_button = QPushButton("Quantize", objectName="primary")
        self._layout()
        self._connect()

    def _layout(self) -> None:
        grid = QGridLayout(self)
        grid.setVerticalSpacing(4)
        first = _row("Method", self.method_combo, "Range observer", self.observer_combo, self.percentile_spin,
                     self.activation_label, self.activation_combo)  # fmt: skip
        grid.addLayout(first, 0, 0)
        grid.addLayout(_row("Calibration data:", self.calibration_label, self.calibration_button,
                            self.calibration_bundled), 1, 0)  # fmt: skip
        grid.addLayout(_row("Use", self.samples_spin, "samples of", self.seq_len_spin, "tokens"), 2, 0)
        grid.addLayout(_row("Evaluate on:", self.eval_label, self.eval_button, self.eval_bundled,
                            self.measure_check), 3, 0)  # fmt: skip
        grid.addWidget(self.run_button, 0, 1, 4, 1)
        grid.setColumnStretch(0, 1)

    def _connect(self) -> None:
        for combo in (self.method_combo, self.observer_combo, self.activation_combo):
            combo.currentIndexChanged.connect(self._on_edit)
        for spin in (self.percentile_spin, self.samples_spin, self.seq_len_spin):
            spin.valueChanged.connect(self._on_edit)
        self.calibration_button.clicked.connect(lambda: self._choose("calibration_file", "calibration"))
        self.eval_button.clicked.connect(lambda: self._choose("eval_file", "evaluation"))
        self.calibration_bundled.clicked.connect(lambda: self._set_file("calibration_file", ""))
        self.eval_bundled.clicked.connect(lambda: self._set_file("eval_file", ""))

    # -- values ---------------------------------------------------------------------------
    def set_settings(self, settings: Any, methods: tuple[str, ...]) -> None:
        """Mirror ``settings`` (edited in place from now on); ``methods``: those that apply."""
        self.settings = settings
        widgets = (self.method_combo, self.observer_combo, self.percentile_spin, self.samples_spin,
                   self.seq_len_spin, self.activation_combo)  # fmt: skip
        for widget in widgets:
            widget.blockSignals(True)
        try:
            model = self.method_combo.model()
            for row in range(self.method_combo.count()):
                model.item(row).setEnabled(self.method_combo.itemData(row) in methods)
            self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(settings.method)))
            self.observer_combo.setCurrentIndex(max(0, self.observer_combo.findData(settings.observer)))
            self.percentile_spin.setValue(settings.percentile)
            self.activation_combo.setCurrentIndex(
                max(0, self.activation_combo.findData(settings.activation_observer))
            )
            self.samples_spin.setValue(settings.calibration_samples)
            self.seq_len_spin.setValue(settings.calibration_seq_len)
        finally:
            for widget in widgets:
                widget.blockSignals(False)
        self._update_view()

    def _update_view(self) -> None:
        s = self.settings
        calibrated = s.method in ("gptq", "awq") or s.activations or s.budget_mb > 0
        for widget in (
            self.samples_spin,
            self.seq_len_spin,
            self.calibration_button,
            self.calibration_bundled,
        ):
            widget.setEnabled(calibrated)
        self.activation_label.setVisible(s.activations)
        self.activation_combo.setVisible(s.activations)
        uses_observer = s.method in ("rtn", "gptq", "awq")
        self.observer_combo.setEnabled(uses_observer)
        self.percentile_spin.setVisible(uses_observer and s.observer == "percentile")
        self.calibration_label.setText(_file_text(s.calibration_file, BUNDLED_CALIBRATION)
                                       if calibrated else "not needed by this method")  # fmt: skip
        self.calibration_bundled.setVisible(bool(s.calibration_file))
        self.eval_label.setText(_file_text(s.eval_file, BUNDLED_EVAL))
        self.eval_bundled.setVisible(bool(s.eval_file))

    def measure_perplexity(self) -> bool:
        return self.measure_check.isChecked()

    # -- edits ----------------------------------------------------------------------------
    @Slot()
    def _on_edit(self, *_: Any) -> None:
        s = self.settings
        if s is None:
            return
        s.method = self.method_combo.currentData()
        s.observer = self.observer_combo.currentData()
        s.activation_observer = self.activation_combo.currentData()
        s.percentile = self.percentile_spin.value()
        s.calibration_samples = self.samples_spin.value()
        s.calibration_seq_len = self.seq_len_spin.value()
        self._update_view()
        self.changed.emit()

    def _choose(self, attr: str, what: str) -> None:
        current = getattr(self.settings, attr) or str(Path.home())
        path = dialogs.choose_file(self, f"Choose the {what} text", TEXT_FILTER, current)
        if path is not None:
            self._set_file(attr, str(path))

    def _set_file(self, attr: str, path: str) -> None:
        setattr(self.settings, attr, path)
        self._update_view()
        self.changed.emit()


def _file_text(path: str, bundled: str) -> str:
    return f"<b>{Path(path).name}</b>" if path else bundled
