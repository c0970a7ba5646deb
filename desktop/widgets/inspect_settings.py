"""The Inspect step's settings, laid out as two sentences: what to measure at, and the rule."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QWidget,
)

from core.project import InspectSettings

BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128)


def _spin(lo: float, hi: float, step: float, decimals: int, suffix: str = "") -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setSingleStep(step)
    spin.setDecimals(decimals)
    spin.setSuffix(suffix)
    spin.setKeyboardTracking(False)  # one change per finished edit, not per keystroke
    return spin


def _row(*parts: QWidget | str | None) -> QHBoxLayout:
    """Labels and fields in one line; None puts a gap between two clauses."""
    row = QHBoxLayout()
    row.setSpacing(6)
    for part in parts:
        if part is None:
            row.addSpacing(18)
        else:
            row.addWidget(QLabel(part) if isinstance(part, str) else part)
    row.addStretch(1)
    return row


class InspectSettingsBar(QGroupBox):
    """Signals: ``measureChanged()`` (bit width or group size: needs a new run),
    ``kChanged(float)`` (outlier threshold: display only), ``criteriaChanged()`` (the rule's
    thresholds or the asymmetric margin: re-judged without reading the model again)."""

    measureChanged = Signal()
    kChanged = Signal(float)
    criteriaChanged = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Settings", parent)
        self.bits_combo = QComboBox()
        for bits in BITS:
            self.bits_combo.addItem(f"{bits}-bit", bits)
        self.group_combo = QComboBox()
        for size in GROUP_SIZES:
            self.group_combo.addItem(str(size), size)
        self.k_spin = _spin(2.0, 10.0, 0.5, 1, " · std")
        self.skew_spin = _spin(0.0, 10.0, 0.05, 2)
        self.ratio_spin = _spin(0.0, 10.0, 0.01, 2)
        self.margin_spin = _spin(0.0, 20.0, 0.5, 1, " dB")
        self.run_button = QPushButton("Inspect")
        self.run_button.setObjectName("primary")
        self.run_button.setToolTip("Read every tensor, compute its statistics and measure each scheme")
        self.hint = QLabel()
        self.hint.setObjectName("hint")
        self.hint.hide()
        self._set_tooltips()
        grid = QGridLayout(self)
        grid.setVerticalSpacing(4)
        grid.addLayout(
            _row("Measure the error at", self.bits_combo, "with groups of", self.group_combo, "weights",
                 None, "Outliers: beyond", self.k_spin),
            0, 0,
        )  # fmt: skip
        grid.addLayout(
            _row("Rule of thumb: symmetric when |skewness| ≤", self.skew_spin, "and |mean|/std ≤",
                 self.ratio_spin, None, "Asymmetric must score", self.margin_spin, "higher"),
            1, 0,
        )  # fmt: skip
        grid.addWidget(self.run_button, 0, 1, 2, 1)
        grid.addWidget(self.hint, 2, 0, 1, 2)
        grid.setColumnStretch(0, 1)
        self.bits_combo.currentIndexChanged.connect(self._on_measure)
        self.group_combo.currentIndexChanged.connect(self._on_measure)
        self.k_spin.valueChanged.connect(self.kChanged)
        for spin in (self.skew_spin, self.ratio_spin, self.margin_spin):
            spin.valueChanged.connect(self._on_criteria)
        self.set_values(InspectSettings())  # core's defaults until a project says otherwise

    def _set_tooltips(self) -> None:
        self.bits_combo.setToolTip("Bit width the error of each scheme is measured at")
        self.group_combo.setToolTip("Weights per group for the group-wise schemes")
        self.k_spin.setToolTip("A value further than k·std from the mean counts as an outlier")
        self.margin_spin.setToolTip(
            "A zero point costs a correction term in every dot product: an asymmetric scheme is "
            "chosen only when its score beats the symmetric one by this much"
        )

    # -- values ---------------------------------------------------------------------------
    def bits(self) -> int:
        return int(self.bits_combo.currentData())

    def group_size(self) -> int:
        return int(self.group_combo.currentData())

    def k(self) -> float:
        # Outlier shares are computed on a grid of 0.5 std (core.weights.stats.OUTLIER_KS).
        return round(self.k_spin.value() * 2) / 2

    def thresholds(self) -> tuple[float, float, float]:
        """(max |skewness|, max |mean|/std, asymmetric margin dB)."""
        return self.skew_spin.value(), self.ratio_spin.value(), self.margin_spin.value()

    def set_values(self, settings: Any) -> None:
        """Mirror a core.project.InspectSettings without emitting change signals."""
        widgets = (self.bits_combo, self.group_combo, self.k_spin, self.skew_spin, self.ratio_spin,
                   self.margin_spin)  # fmt: skip
        for widget in widgets:
            widget.blockSignals(True)
        try:
            self._select(self.bits_combo, settings.bits)
            self._select(self.group_combo, settings.group_size)
            self.k_spin.setValue(settings.outlier_k)
            self.skew_spin.setValue(settings.max_abs_skew)
            self.ratio_spin.setValue(settings.max_mean_over_std)
            self.margin_spin.setValue(settings.asym_margin_db)
        finally:
            for widget in widgets:
                widget.blockSignals(False)

    @staticmethod
    def _select(combo: QComboBox, value: int) -> None:
        index = combo.findData(value)
        if index >= 0:
            combo.setCurrentIndex(index)

    def set_hint(self, text: str) -> None:
        self.hint.setText(text)
        self.hint.setVisible(bool(text))

    # -- slots ----------------------------------------------------------------------------
    @Slot()
    def _on_measure(self, *_: Any) -> None:
        self.measureChanged.emit()

    @Slot()
    def _on_criteria(self, *_: Any) -> None:
        self.criteriaChanged.emit()
