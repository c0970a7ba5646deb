"""The Calibrate pane on a tiny real model: quantize (RTN and GPTQ), the report, S and Z with the
worked formula, runs side by side, bad calibration files, cancel, and a run reloaded after a
restart answering exactly as before."""

from __future__ import annotations

import pytest
import torch
from PySide6.QtCore import Qt

from core import project as projects
from core.models import sources
from desktop.panes.calibrate_pane import CalibratePane
from desktop.session import Session

LOAD_TIMEOUT_MS = 120_000
JOB_TIMEOUT_MS = 120_000
FAST = {"calibration_samples": 2, "calibration_seq_len": 32}


@pytest.fixture
def pane(open_pane):
    return open_pane(CalibratePane, (1280, 900))


def load(qtbot, session, folder):
    with qtbot.waitSignal(session.modelChanged, timeout=LOAD_TIMEOUT_MS):
        session.load_model(sources.resolve(str(folder)))


def configure(session, **values):
    settings = session.quantize_settings
    for key, value in {"group_size": 32, "observer": "mse", **FAST, **values}.items():
        setattr(settings, key, value)


def quantize(qtbot, pane):
    with qtbot.waitSignal(pane.runShown, timeout=JOB_TIMEOUT_MS) as shown:
        handle = pane.quantize()
        assert handle is not None
    qtbot.waitUntil(lambda: not pane.busy, timeout=JOB_TIMEOUT_MS)
    return shown.args[0]


def test_without_a_model_quantize_is_disabled(pane):
    assert not pane.settings_bar.run_button.isEnabled()
    assert pane.go_load_button.isVisible() and "Load a model first" in pane.plan_label.text()


def test_gptq_then_rtn_side_by_side_and_reload_after_restart(qtbot, pane, tiny_model_dir, runner):
    session = pane.session
    session.new_project("calibrated")
    load(qtbot, session, tiny_model_dir)
    configure(session, precision="int4", symmetric=False, method="gptq")
    pane.refresh()
    assert "INT4 asymmetric, groups of 32" in pane.plan_label.text()
    gptq = quantize(qtbot, pane)
    assert gptq["settings"]["method"] == "gptq" and len(gptq["layers"]) == 14
    assert "→" in pane.report_view.summary.text() and pane.report_view.table.rowCount() == 14
    # S and Z of a chosen tensor, with the worked formula
    name = "model.layers.0.mlp.down_proj"
    with qtbot.waitSignal(pane.scales_view.blockShown, timeout=JOB_TIMEOUT_MS):
        pane.scales_view.show_block(name, 0, 0)
    example = pane.scales_view.current_example
    assert example is not None and example.name == name and "S = (max − min)" in example.formulas[0]
    configure(session, method="rtn")
    pane.refresh()
    rtn = quantize(qtbot, pane)
    runs = session.project.runs
    assert [r["settings"]["method"] for r in runs] == ["gptq", "rtn"]
    assert pane.runs_table.table.rowCount() == 2
    assert gptq["perplexity_after"] != rtn["perplexity_after"]
    assert session.save_now()
    # "restart": a new session opens the project from disk and reloads the GPTQ run
    reopened = Session(runner)
    second = CalibratePane(reopened)
    qtbot.addWidget(second)
    reopened.open_project(session.project.folder)
    qtbot.waitUntil(lambda: reopened.model is not None, timeout=LOAD_TIMEOUT_MS)
    assert second.runs_table.table.rowCount() == 2
    with qtbot.waitSignal(second.runLoaded, timeout=JOB_TIMEOUT_MS) as got:
        second.load_run(runs[0]["id"])
    reloaded = got.args[0]
    assert reloaded.identical is True
    assert "identical, bit for bit" in second.status_label.text()
    assert second.shown_report["perplexity_after"] == pytest.approx(gptq["perplexity_after"])
    with qtbot.waitSignal(second.scales_view.blockShown, timeout=JOB_TIMEOUT_MS):
        second.scales_view.show_block(name, 0, 0)
    assert torch.equal(second.scales_view.current_example.values, example.values)  # x from the base
    reopened.runner.cancel_all()
    reopened.runner.wait_all(10_000)


def test_delete_a_run(qtbot, pane, tiny_model_dir, scripted_dialogs):
    session = pane.session
    session.new_project("deleting")
    load(qtbot, session, tiny_model_dir)
    configure(session, precision="int8", method="rtn")
    pane.refresh()
    quantize(qtbot, pane)
    run = session.project.runs[0]
    folder = session.project.folder / run["folder"]
    assert folder.is_dir()
    pane.runs_table.select(run["id"])
    scripted_dialogs.answer("confirm", True)
    pane.runs_table.delete_button.click()
    assert session.project.runs == [] and not folder.exists()
    assert pane.shown_report is None and pane.runs_table.table.rowCount() == 0
    session.save_now()
    assert projects.load_project(session.project.folder).runs == []


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"\x00\x01\x02binary", "binary"), (b"too short", "tokens")],
)
def test_bad_calibration_files_get_clear_messages(qtbot, pane, tiny_model_dir, tmp_path, content, message):
    session = pane.session
    load(qtbot, session, tiny_model_dir)
    path = tmp_path / "calib.txt"
    path.write_bytes(content)
    configure(session, precision="int4", method="gptq", calibration_file=str(path), calibration_seq_len=64)
    pane.refresh()
    handle = pane.quantize()
    if handle is not None:  # the file reads as text: the job refuses it
        with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
            pass
    assert pane.error_panel.isVisible() and message in pane.error_panel.message.text()
    assert pane.shown_report is None


def test_cancel_saves_nothing(qtbot, pane, tiny_model_dir):
    session = pane.session
    session.new_project("cancelled")
    load(qtbot, session, tiny_model_dir)
    configure(session, precision="int4", method="gptq")
    pane.refresh()
    handle = pane.quantize()
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        handle.cancel()
    assert session.project.runs == []
    quantized = session.project.folder / "artifacts" / "quantized"
    assert not quantized.exists() or not any(p for p in quantized.iterdir() if not p.name.startswith("."))


def test_w8a8_shows_the_activation_ranges_and_their_s_and_z(qtbot, pane, tiny_model_dir):
    from core.quant.affine import scale_zero

    session = pane.session
    load(qtbot, session, tiny_model_dir)
    configure(session, precision="int8", granularity="channel", symmetric=True, activations=True,
              smoothquant=True, method="rtn")  # fmt: skip
    pane.refresh()
    assert pane.settings_bar.activation_combo.isVisible()
    report = quantize(qtbot, pane)
    view = pane.activation_view
    table = view.table
    assert table.rowCount() == 14 and not view.empty.isVisible()
    name = table.item(0, 0).text()
    lo, hi = report["activations"]["layers"][name]
    scale, zero = scale_zero(torch.tensor(lo), torch.tensor(hi), 8, False)
    assert float(table.item(0, 3).data(Qt.ItemDataRole.UserRole)) == pytest.approx(float(scale), rel=1e-5)
    assert table.item(0, 4).text() == str(int(zero))
    histogram = report["activations"]["histograms"][name]
    assert sum(histogram["counts"]) == histogram["values"] > 0
    last = table.item(table.rowCount() - 1, 0).text()
    with qtbot.waitSignal(view.inputShown, check_params_cb=lambda n: n == last):
        table.selectRow(table.rowCount() - 1)
    assert "Z = round(−lo / S)" in view.text.text() and last in view.text.text()


def test_save_a_copy_of_a_run(qtbot, pane, tiny_model_dir, scripted_dialogs, tmp_path):
    session = pane.session
    session.new_project("copied")
    load(qtbot, session, tiny_model_dir)
    configure(session, precision="int8", method="rtn")
    pane.refresh()
    quantize(qtbot, pane)
    run = session.project.runs[0]
    pane.runs_table.select(run["id"])
    scripted_dialogs.answer("choose_save_file", tmp_path / "my-int8")
    with qtbot.waitSignal(pane.runner.jobsChanged, timeout=JOB_TIMEOUT_MS):
        pane.runs_table.export_button.click()
    qtbot.waitUntil(lambda: "Saved a copy" in pane.status_label.text(), timeout=JOB_TIMEOUT_MS)
    assert (tmp_path / "my-int8" / "quantization.json").is_file()
    scripted_dialogs.answer("choose_save_file", tmp_path / "my-int8")  # exists now: refused, nothing run
    assert pane.export_run(run["id"]) is None and "already exists" in pane.error_panel.message.text()


def test_fp16_in_a_project_is_recorded_and_a_run_follows_its_project(qtbot, pane, tiny_model_dir):
    session = pane.session
    session.new_project("first")
    first = session.project
    load(qtbot, session, tiny_model_dir)
    configure(session, precision="fp16", method="rtn")
    pane.refresh()
    with qtbot.waitSignal(pane.runner.jobsChanged, timeout=JOB_TIMEOUT_MS):
        handle = pane.quantize()
    session.new_project("second")  # opened while the first project's run is still going
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        pass
    assert [r["settings"]["precision"] for r in projects.load_project(first.folder).runs] == ["fp16"]
    assert session.project.runs == []
    assert not pane.error_panel.isVisible()
