"""The Precision & symmetry pane on a tiny real model: defaults from Inspect, the formulas, the
size estimate on every edit, per-layer overrides, and the settings saved in the project."""

from __future__ import annotations

import pytest

from core import project as projects
from core.models import sources
from desktop.panes.precision_pane import PrecisionPane

LOAD_TIMEOUT_MS = 120_000


@pytest.fixture
def pane(open_pane):
    return open_pane(PrecisionPane, (1200, 800))


def load(qtbot, pane, folder):
    with qtbot.waitSignal(pane.session.modelChanged, timeout=LOAD_TIMEOUT_MS):
        pane.session.load_model(sources.resolve(str(folder)))


def test_without_a_model_it_points_to_load(qtbot, pane):
    assert pane.empty.isVisible() and not pane.content.isVisible()
    with qtbot.waitSignal(pane.stepRequested) as asked:
        pane.go_load_button.click()
    assert asked.args == ["load"]


def test_defaults_follow_inspect_and_edits_reach_the_project(qtbot, pane, tiny_model_dir):
    session = pane.session
    session.new_project("precise")
    project = session.project
    project.inspect.recommended = {
        "a": {"symmetric": True},
        "b": {"symmetric": True},
        "c": {"symmetric": False},
    }
    session.projectChanged.emit(project)
    load(qtbot, pane, tiny_model_dir)
    assert pane.content.isVisible()
    assert pane.symmetric_radio.isChecked()  # the recommendation, while the user chose nothing
    assert "Inspect recommended symmetric" in pane.recommend_label.text()
    assert "max|x| / 7" in pane.formula_label.text()
    pane.asymmetric_radio.setChecked(True)
    assert project.quantize.symmetric is False
    assert "(max − min) / 15" in pane.formula_label.text() and "round(−min / S)" in pane.formula_label.text()
    pane.precision_combo.setCurrentIndex(pane.precision_combo.findData("int8"))
    assert "/ 255" in pane.formula_label.text()
    assert pane.weights_only_radio.text() == "Weights only (W8A16)" and pane.activations_radio.isEnabled()
    session.save_now()
    saved = projects.load_project(project.folder).quantize
    assert (saved.precision, saved.symmetric, saved.granularity, saved.group_size) == (
        "int8",
        False,
        "group",
        64,
    )


def test_size_estimate_follows_every_edit(qtbot, pane, tiny_model_dir):
    load(qtbot, pane, tiny_model_dir)
    sizes = {}
    for precision in ("int8", "int4", "int2"):
        with qtbot.waitSignal(pane.estimateChanged) as got:
            pane.precision_combo.setCurrentIndex(pane.precision_combo.findData(precision))
        sizes[precision] = got.args[0].bytes_after
    assert sizes["int8"] > sizes["int4"] > sizes["int2"]
    assert "bits per weight" in pane.size_label.text()
    with qtbot.waitSignal(pane.estimateChanged) as got:
        pane.group_combo.setCurrentIndex(pane.group_combo.findData(32))
    assert got.args[0].bytes_after > sizes["int2"]  # more scales
    with qtbot.waitSignal(pane.estimateChanged) as got:
        pane.precision_combo.setCurrentIndex(pane.precision_combo.findData("bf16"))
    assert got.args[0].bits_per_weight == pytest.approx(16)
    assert not pane.symmetric_radio.isEnabled() and not pane.layers.isEnabled()


def test_per_layer_overrides(qtbot, pane, tiny_model_dir):
    load(qtbot, pane, tiny_model_dir)
    pane.precision_combo.setCurrentIndex(pane.precision_combo.findData("int4"))
    before = pane.estimate.bytes_after
    down = "model.layers.0.mlp.down_proj"
    pane.layers.select([down])
    with qtbot.waitSignal(pane.estimateChanged) as got:
        pane.layers.buttons["fp16"].click()
    assert pane.settings.overrides == {down: "fp16"}
    assert got.args[0].bytes_after > before
    row = next(r for r in range(pane.layers.table.rowCount()) if pane.layers.table.item(r, 0).text() == down)
    assert pane.layers.table.item(row, 2).text().startswith("FP16")
    pane.layers.filter_edit.setText("down_proj")
    visible = [r for r in range(pane.layers.table.rowCount()) if not pane.layers.table.isRowHidden(r)]
    assert len(visible) == 2
    pane.layers.select([down])
    pane.layers.reset_button.click()
    assert pane.settings.overrides == {} and pane.estimate.bytes_after == before


def test_nf4_fixes_the_scheme_and_picks_bitsandbytes(qtbot, pane, tiny_model_dir):
    load(qtbot, pane, tiny_model_dir)
    sizes = {}
    for precision in ("int8", "int2", "nf4"):
        pane.precision_combo.setCurrentIndex(pane.precision_combo.findData(precision))
        sizes[precision] = pane.estimate.bytes_after
    assert pane.settings.method == "bitsandbytes"
    assert not pane.granularity_combo.isEnabled() and "block of 64" in pane.formula_label.text()
    assert sizes["int8"] > sizes["nf4"] > sizes["int2"]
    pane.precision_combo.setCurrentIndex(pane.precision_combo.findData("int4"))
    assert pane.settings.method == "gptq"


def test_w8a8_smoothquant_and_the_size_budget_reach_the_settings(qtbot, pane, tiny_model_dir):
    load(qtbot, pane, tiny_model_dir)
    pane.precision_combo.setCurrentIndex(pane.precision_combo.findData("int8"))
    assert not pane.smooth_check.isEnabled()
    pane.activations_radio.setChecked(True)
    assert pane.smooth_check.isEnabled()
    pane.smooth_check.setChecked(True)
    assert pane.settings.activations and pane.settings.smoothquant
    suggested = pane.budget_box.spin.value()
    assert suggested == pytest.approx(pane.estimate.bytes_after * 1.05 / 1e6, abs=0.1)
    pane.budget_box.check.setChecked(True)
    assert pane.settings.budget_mb == pytest.approx(suggested)
    assert "At most" in pane.size_label.text()
    before = pane.estimate.bytes_after
    pane.embeddings_check.setChecked(True)
    assert pane.settings.include_embeddings and pane.estimate.bytes_after < before
    pane.precision_combo.setCurrentIndex(pane.precision_combo.findData("bf16"))
    assert pane.settings.budget_mb == 0.0 and not pane.settings.activations
    assert not pane.budget_box.isEnabled()


def test_the_multistage_path_is_measured_on_demand(qtbot, pane, tiny_model_dir):
    load(qtbot, pane, tiny_model_dir)
    with qtbot.waitSignal(pane.multistage_box.measured, timeout=60_000) as got:
        pane.multistage_box.run_button.click()
    report = got.args[0]
    assert report.stages == (16, 8) and len(report.layers) == 14
    text = pane.multistage_box.result.text()
    assert "FP32 → INT16" in text and "INT16 → INT8" in text and "directly" in text
    qtbot.waitUntil(lambda: pane.multistage_box.run_button.isEnabled())
