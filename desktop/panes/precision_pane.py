"""Step 3, "Precision & symmetry": what the quantized model will be — precision, symmetric or
asymmetric, granularity, which layers, per-layer exceptions — and its size before anything runs.

Data flow: the pane edits the session's QuantizeSettings (the open project's, else a scratch
copy) and shows core.quant.plan.estimate_size for the loaded model on every edit. Defaults
come from the Inspect step's recommendation. Nothing here runs a job: the Calibrate step does.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.formatting import format_bytes
from desktop.session import Session
from desktop.widgets.layer_precisions import LayerPrecisionTable, precision_name
from desktop.widgets.learn_panel import LearnPanel
from desktop.widgets.precision_extras import BudgetBox, MultistageBox
from desktop.widgets.precision_texts import (
    GRANULARITIES,
    GROUP_SIZES,
    INTEGER,
    PRECISIONS,
    float_formula,
    formula_html,
    granularity_text,
    recommendation_text,
)

NO_MODEL = "Load a model first: the sizes and layers shown here are the loaded model's."


class PrecisionPane(QWidget):
    """Signals: ``statusChanged(state, text)`` for the sidebar; ``stepRequested(key)``;
    ``estimateChanged(SizeEstimate)`` after every recomputed size."""

    statusChanged = Signal(str, str)
    stepRequested = Signal(str)
    estimateChanged = Signal(object)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.estimate: Any = None
        self._layers_for: Any = None  # the model whose layers the table lists
        self._filling = False
        self._build()
        self._connect()
        self._on_project_changed(session.project)
        self._on_model_changed(session.model)

    # -- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.empty_label = QLabel(NO_MODEL, wordWrap=True)
        self.go_load_button = QPushButton("Go to Load model")
        self.empty = QWidget()
        empty_layout = QVBoxLayout(self.empty)
        empty_layout.addWidget(self.empty_label)
        empty_layout.addWidget(self.go_load_button, 0, Qt.AlignmentFlag.AlignLeft)
        self.content = self._build_content()
        title = QLabel("Precision & symmetry", objectName="screenTitle")
        intro = QLabel(
            "Choose what the quantized model will be. Nothing runs yet: the Calibrate step quantizes "
            "with these settings.",
            wordWrap=True,
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addWidget(self.empty)
        layout.addWidget(self.content, 1)

    def _build_content(self) -> QWidget:
        form = QWidget()
        column = QVBoxLayout(form)
        column.setContentsMargins(0, 0, 0, 0)
        self.budget_box = BudgetBox()
        self.multistage_box = MultistageBox(self.session.runner, self._multistage_params)
        boxes = (self._precision_box(), self._scheme_box(), self._granularity_box(), self._scope_box(),
                 self.budget_box, self.multistage_box)  # fmt: skip
        for box in boxes:
            column.addWidget(box)
        column.addStretch(1)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(form)
        self.layers = LayerPrecisionTable()
        layers_box = QGroupBox("Per-layer precision")
        QVBoxLayout(layers_box).addWidget(self.layers)
        self.learn = LearnPanel("precision", expanded=False)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(layers_box, 1)
        right_layout.addWidget(self.learn)
        splitter = QSplitter(Qt.Orientation.Horizontal, childrenCollapsible=False)
        splitter.addWidget(scroll)
        splitter.addWidget(right)
        splitter.setSizes([560, 560])
        self.size_label = QLabel(objectName="summary", wordWrap=True)
        self.next_button = QPushButton("Next: Calibrate and quantize →", objectName="primary")
        bottom = QHBoxLayout()
        bottom.addWidget(self.size_label, 1)
        bottom.addWidget(self.next_button)
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter, 1)
        layout.addLayout(bottom)
        return page

    def _precision_box(self) -> QGroupBox:
        box = QGroupBox("Precision")
        self.precision_combo = QComboBox()
        for key, text, _ in PRECISIONS:
            self.precision_combo.addItem(text, key)
        self.precision_note = QLabel(wordWrap=True, objectName="hint")
        grid = QGridLayout(box)
        grid.addWidget(self.precision_combo, 0, 0)
        grid.addWidget(self.precision_note, 0, 1)
        grid.setColumnStretch(1, 1)
        return box

    def _scheme_box(self) -> QGroupBox:
        box = QGroupBox("Symmetry")
        self.symmetric_radio = QRadioButton("Symmetric (Z = 0)")
        self.asymmetric_radio = QRadioButton("Asymmetric (zero point Z)")
        self.scheme_group = QButtonGroup(self)
        self.scheme_group.addButton(self.symmetric_radio)
        self.scheme_group.addButton(self.asymmetric_radio)
        self.recommend_label = QLabel(wordWrap=True, objectName="hint")
        self.formula_label = QLabel(wordWrap=True)
        self.formula_label.setTextFormat(Qt.TextFormat.RichText)
        self.formula_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(self.symmetric_radio)
        row.addWidget(self.asymmetric_radio)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addWidget(self.recommend_label)
        layout.addWidget(self.formula_label)
        return box

    def _granularity_box(self) -> QGroupBox:
        box = QGroupBox("Granularity")
        self.granularity_combo = QComboBox()
        for key, text, tip in GRANULARITIES:
            self.granularity_combo.addItem(text, key)
            self.granularity_combo.setItemData(
                self.granularity_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole
            )
        self.group_combo = QComboBox()
        for size in GROUP_SIZES:
            self.group_combo.addItem(f"groups of {size}", size)
        self.granularity_note = QLabel(wordWrap=True, objectName="hint")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(self.granularity_combo)
        row.addWidget(self.group_combo)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addWidget(self.granularity_note)
        return box

    def _scope_box(self) -> QGroupBox:
        box = QGroupBox("What is quantized")
        self.weights_only_radio = QRadioButton()
        self.activations_radio = QRadioButton(
            "Weights and activations (W8A8, static ranges from calibration)"
        )
        self.scope_group = QButtonGroup(self)
        self.scope_group.addButton(self.weights_only_radio)
        self.scope_group.addButton(self.activations_radio)
        self.smooth_check = QCheckBox("SmoothQuant first: move activation outliers into the weights")
        self.smooth_check.setToolTip(
            "Divides each input channel by s and multiplies the weights by s (Xiao et al. 2022): the "
            "same function, with activations that are easier to quantize"
        )
        self.head_check = QCheckBox("The LM head too (the last layer, often the most sensitive)")
        self.embeddings_check = QCheckBox(
            "The token embeddings too (rounded per row; a tied LM head follows them)"
        )
        note = QLabel(
            "Every linear layer is quantized; norms (and the embeddings, unless ticked) stay in FP32.",
            wordWrap=True,
            objectName="hint",
        )
        layout = QVBoxLayout(box)
        for widget in (
            self.weights_only_radio,
            self.activations_radio,
            self.smooth_check,
            self.head_check,
            self.embeddings_check,
            note,
        ):
            layout.addWidget(widget)
        return box

    def _connect(self) -> None:
        self.go_load_button.clicked.connect(partial(self.stepRequested.emit, "load"))
        self.next_button.clicked.connect(partial(self.stepRequested.emit, "calibrate"))
        self.precision_combo.currentIndexChanged.connect(self._on_edit)
        self.granularity_combo.currentIndexChanged.connect(self._on_edit)
        self.group_combo.currentIndexChanged.connect(self._on_edit)
        self.scheme_group.buttonToggled.connect(self._on_toggled)
        self.scope_group.buttonToggled.connect(self._on_toggled)
        self.head_check.toggled.connect(self._on_edit)
        self.smooth_check.toggled.connect(self._on_edit)
        self.embeddings_check.toggled.connect(self._on_edit)
        self.budget_box.budgetChanged.connect(self._on_edit)
        self.layers.overridesChanged.connect(self._on_overrides)
        s = self.session
        s.projectChanged.connect(self._on_project_changed)
        s.modelChanged.connect(self._on_model_changed)
        s.modelLoading.connect(self._show_page)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._fill()  # the Inspect step may have changed the recommendation meanwhile

    # -- session ------------------------------------------------------------------------
    @property
    def settings(self) -> Any:
        return self.session.quantize_settings

    @property
    def recommended(self) -> dict:
        project = self.session.project
        return project.inspect.recommended if project is not None else {}

    @Slot(object)
    def _on_project_changed(self, _project: Any) -> None:
        self._fill()

    @Slot(object)
    def _on_model_changed(self, loaded: Any) -> None:
        self._show_page()
        if loaded is not None and loaded is not self._layers_for:
            from core.quant.plan import quantizable_layers

            self._layers_for = loaded
            self.layers.set_layers(quantizable_layers(loaded.model, include_head=True))
        self._fill()

    @Slot()
    def _show_page(self, *_: Any) -> None:
        loading = self.session.loading
        has_model = self.session.model is not None
        if not has_model and loading is not None:
            self.empty_label.setText(f"Loading {loading[1].name}…")
        else:
            self.empty_label.setText(NO_MODEL)
        self.empty.setVisible(not has_model)
        self.content.setVisible(has_model)

    # -- settings <-> widgets -----------------------------------------------------------
    def _fill(self) -> None:
        """Show the settings (widgets mirror them; signals from this filling are ignored)."""
        from core.quant.plan import symmetric_of

        s = self.settings
        self._filling = True
        try:
            self.precision_combo.setCurrentIndex(max(0, self.precision_combo.findData(s.precision)))
            symmetric = symmetric_of(s, self.recommended)
            (self.symmetric_radio if symmetric else self.asymmetric_radio).setChecked(True)
            self.granularity_combo.setCurrentIndex(max(0, self.granularity_combo.findData(s.granularity)))
            self.group_combo.setCurrentIndex(max(0, self.group_combo.findData(s.group_size)))
            (self.activations_radio if s.activations else self.weights_only_radio).setChecked(True)
            self.head_check.setChecked(s.include_head)
            self.smooth_check.setChecked(s.smoothquant)
            self.embeddings_check.setChecked(s.include_embeddings)
            self.layers.set_values(s.precision, s.overrides)
        finally:
            self._filling = False
        self._update_view()

    @Slot(object, bool)
    def _on_toggled(self, _button: Any, checked: bool) -> None:
        if checked:
            self._on_edit()

    @Slot()
    def _on_edit(self, *_: Any) -> None:
        if self._filling:
            return
        s = self.settings
        s.precision = self.precision_combo.currentData()
        recommended_sym = symmetric_default(self.recommended)
        chosen = self.symmetric_radio.isChecked()
        # Following the recommendation stays "automatic", so a later Inspect run still applies.
        s.symmetric = None if (s.symmetric is None and chosen == recommended_sym) else chosen
        s.granularity = self.granularity_combo.currentData()
        s.group_size = self.group_combo.currentData()
        s.activations = self.activations_radio.isChecked() and s.precision == "int8"
        s.include_head = self.head_check.isChecked()
        s.smoothquant = self.smooth_check.isChecked() and s.activations
        s.include_embeddings = self.embeddings_check.isChecked() and s.precision in INTEGER
        s.budget_mb = self.budget_box.budget_mb() if s.precision in INTEGER else 0.0
        if s.precision in ("nf4", "fp4"):
            s.method = "bitsandbytes"
        elif s.method == "bitsandbytes" and s.precision != "int8":
            s.method = "gptq"
        self.layers.set_values(s.precision, s.overrides)
        self.session.mark_dirty()
        self._update_view()

    @Slot(dict)
    def _on_overrides(self, overrides: dict) -> None:
        self.settings.overrides = overrides
        self.session.mark_dirty()
        self._update_view()

    # -- what the settings mean ---------------------------------------------------------
    def _update_view(self) -> None:
        s = self.settings
        integer = s.precision in INTEGER
        note = next(text for key, _, text in PRECISIONS if key == s.precision)
        self.precision_note.setText(note)
        for widget in (self.symmetric_radio, self.asymmetric_radio, self.granularity_combo):
            widget.setEnabled(integer)
        self.group_combo.setVisible(s.granularity == "group")
        self.group_combo.setEnabled(integer)
        bits = int(s.precision[3:]) if integer else 8
        symmetric = self.symmetric_radio.isChecked()
        self.formula_label.setText(formula_html(bits, symmetric) if integer else float_formula(s.precision))
        self.recommend_label.setText(recommendation_text(self.recommended))
        self.granularity_note.setText(granularity_text(self.settings, self.session.model))
        self.weights_only_radio.setText(f"Weights only (W{bits if integer else 16}A16)")
        self.activations_radio.setEnabled(s.precision == "int8")
        self.activations_radio.setToolTip("" if s.precision == "int8" else "W8A8 is for INT8 weights")
        self.smooth_check.setEnabled(s.activations)
        self.budget_box.setEnabled(integer)
        self.embeddings_check.setEnabled(integer)
        self.layers.setEnabled(integer)
        self.layers.set_hidden([] if s.include_head else self._head_names())
        self._update_size()
        self._emit_status()

    def _update_size(self) -> None:
        loaded = self.session.model
        if loaded is None:
            self.size_label.setText("")
            return
        from core.quant.plan import estimate_size

        e = estimate_size(loaded.model, self.settings, self.recommended)
        self.estimate = e
        self.budget_box.set_values(self.settings.budget_mb, round(e.bytes_after * 1.05 / 1e6, 2))
        self.size_label.setText(
            f"<b>{format_bytes(e.bytes_after)}</b> after quantizing, "
            f"<b>{e.bits_per_weight:.2f} bits per weight</b> (scales and zero points included) — "
            f"{e.ratio:.1f}× smaller than FP32 ({format_bytes(e.bytes_before)}). Of that, "
            f"{format_bytes(e.unquantized_bytes)} are tensors left as they are (norms"
            f"{'' if self.settings.include_embeddings else ', embeddings'})."
        )
        if self.settings.budget_mb > 0:
            self.size_label.setText(
                f"At most <b>{self.settings.budget_mb:.1f} MB</b>: bits per layer are chosen when quantizing "
                f"(uniformly, {format_bytes(e.bytes_after)}, {e.bits_per_weight:.2f} bits per weight)."
            )
        self.learn.set_numbers(self._learn_numbers(e))
        self.estimateChanged.emit(e)

    def _learn_numbers(self, e: Any) -> dict[str, Any]:
        s = self.settings
        return {
            "precision": precision_name(s.precision),
            "size_after": format_bytes(e.bytes_after),
            "size_before": format_bytes(e.bytes_before),
            "bits_per_weight": f"{e.bits_per_weight:.2f}",
        }

    def _emit_status(self) -> None:
        s = self.settings
        if self.session.model is None:
            self.statusChanged.emit("todo", "Load a model first")
            return
        text = precision_name(s.precision)
        if s.precision in INTEGER:
            text += f" {'sym' if self.symmetric_radio.isChecked() else 'asym'}"
            text += f" g{s.group_size}" if s.granularity == "group" else f" per {s.granularity}"
        self.statusChanged.emit("done", text)

    def _head_names(self) -> list[str]:
        loaded = self.session.model
        head = loaded.model.get_output_embeddings() if loaded is not None else None
        return [n for n, m in loaded.model.named_modules() if m is head] if head is not None else []

    def _multistage_params(self) -> Any:
        loaded = self.session.model
        if loaded is None:
            return None
        from core.quant.multistage import MultistageParams

        s = self.settings
        return MultistageParams(loaded, (16, 8), self.symmetric_radio.isChecked(), s.granularity,
                                s.group_size, s.include_head)  # fmt: skip


def symmetric_default(recommended: dict) -> bool:
    from core.quant.plan import recommended_symmetric

    return bool(recommended_symmetric(recommended))


if __name__ == "__main__":  # preview: python -m desktop.panes.precision_pane
    import sys

    from desktop.preview import load_default, preview

    sys.exit(preview(PrecisionPane, (1200, 800), load_default))
