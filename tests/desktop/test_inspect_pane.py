"""The Inspect pane on tiny real models: the table, sorting, the selected tensor's plots and
evidence, re-judging without re-reading, export, cancel, bad tensors, and the project."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
from PySide6.QtCore import QPoint, Qt

from core import project as projects
from core.models import sources
from desktop.panes.inspect_pane import InspectPane, source_of
from desktop.widgets.scheme_evidence import AGREE, DISAGREE
from desktop.widgets.tensor_table import COL, ERROR_BG, NAME_ROLE

LOAD_TIMEOUT_MS = 120_000  # the first load in a test run imports transformers
JOB_TIMEOUT_MS = 30_000


@pytest.fixture
def pane(open_pane):
    return open_pane(InspectPane, (1200, 900))


@pytest.fixture(scope="session")
def nan_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with one weight holding a NaN and another an Inf."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("models") / "nan-llama")
    weights = load_file(folder / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = math.nan
    weights["model.layers.1.self_attn.k_proj.weight"][3, 1] = math.inf
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors", {"format": "pt"})
    assert torch.isnan(load_file(folder / "model.safetensors")["model.layers.0.mlp.down_proj.weight"]).any()
    return folder


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    from tests.tiny_models import build_tiny_model, build_tiny_tokenizer, write_tiny_gguf

    tokenizer = build_tiny_tokenizer()
    path = tmp_path_factory.mktemp("models") / "tiny.gguf"
    return write_tiny_gguf(build_tiny_model(tokenizer), tokenizer, path)


def tensor_names(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(folder / "model.safetensors", framework="pt") as fh:
        return list(fh.keys())


def load_and_inspect(qtbot, pane, folder):
    """Load ``folder``; the visible pane inspects it on its own. Returns the report."""
    with qtbot.waitSignal(pane.reportReady, timeout=LOAD_TIMEOUT_MS) as got:
        pane.session.load_model(sources.resolve(str(folder)))
    return got.args[0]


def select_and_wait(qtbot, pane, name: str) -> None:
    with qtbot.waitSignal(pane.detailShown, check_params_cb=lambda n: n == name, timeout=JOB_TIMEOUT_MS):
        assert pane.table.select(name)


def column_texts(pane, title: str) -> list[str]:
    proxy = pane.table.proxy
    return [proxy.index(r, COL[title]).data() for r in range(proxy.rowCount())]


def test_without_a_model_the_pane_says_so_and_leads_to_the_load_step(qtbot, pane):
    assert pane.pages.currentIndex() == 0 and pane.empty_label.text().startswith("Load a model first")
    with qtbot.waitSignal(pane.stepRequested) as asked:
        pane.go_load_button.click()
    assert asked.args == ["load"]
    assert pane.heatmap is None and pane.detail_view.hist is None  # no pyqtgraph until needed


def test_inspect_fills_the_table_sorts_and_draws_the_selected_tensor(qtbot, pane, tiny_model_dir):
    from core.weights.detail import tensor_detail

    report = load_and_inspect(qtbot, pane, tiny_model_dir)
    names = tensor_names(tiny_model_dir)
    assert pane.pages.currentIndex() == 1
    assert pane.table.model.rowCount() == len(names) == len(report.tensors)
    assert {pane.table.name_at(r) for r in range(len(names))} == set(names)
    assert report.summary() in pane.summary.text()

    pane.table.sort_by("Excess kurtosis", Qt.SortOrder.DescendingOrder)
    top = pane.table.name_at(0)
    assert pane.table.proxy.index(0, COL["Excess kurtosis"]).data(NAME_ROLE) == top
    kurtosis = {t.stats.name: t.stats.kurtosis for t in report.tensors}
    assert kurtosis[top] == max(k for k in kurtosis.values() if not math.isnan(k))
    # NaN (the constant norm weights have no kurtosis) sorts last both ways
    nan_rows = [r for r in range(len(names)) if math.isnan(kurtosis[pane.table.name_at(r)])]
    assert nan_rows and nan_rows == list(range(len(names) - len(nan_rows), len(names)))
    pane.table.sort_by("Excess kurtosis", Qt.SortOrder.AscendingOrder)
    assert math.isnan(kurtosis[pane.table.name_at(len(names) - 1)])

    select_and_wait(qtbot, pane, top)
    bins, bits = pane.detail_view.bins_spin.value(), pane.settings_bar.bits()
    expected = tensor_detail(source_of(pane.session.model), top, bins, bits)
    hist = pane.detail_view.hist
    x, y = hist.bars.getOriginalDataset()
    assert list(x) == pytest.approx(expected.edges) and list(y) == expected.counts
    assert [line.value() for line in hist.sym_lines] == pytest.approx(
        [expected.symmetric.lo, expected.symmetric.hi]
    )
    assert [line.value() for line in hist.asym_lines] == pytest.approx(
        [expected.asymmetric.lo, expected.asymmetric.hi]
    )
    assert all(line.isVisible() for line in (*hist.sym_lines, *hist.asym_lines, hist.mean_line))
    assert hist.mean_line.value() == pytest.approx(expected.stats.mean)
    k, std = pane.settings_bar.k(), expected.stats.std
    assert hist.std_lines[1].value() == pytest.approx(expected.stats.mean + k * std)
    legend = [label.text for _, label in hist.legend.items]
    assert {"symmetric range", "asymmetric range", "mean", "± k·std"} <= set(legend)
    assert list(pane.detail_view.channels.values) == pytest.approx(expected.channel_absmax)

    rec = next(t.recommendation for t in report.tensors if t.stats.name == top)
    evidence = pane.detail_view.evidence
    assert len(evidence.scheme_labels()) == 6
    assert evidence.scheme_labels()[evidence.best_row] == rec.best.label.removeprefix("INT4 ")
    assert evidence.table.item(evidence.best_row, 0).font().bold()
    assert rec.rule_reason in evidence.rule.text()
    assert evidence.agreement.text() == (AGREE if rec.agree else DISAGREE)
    assert top in pane.learn.html() and "INT4" in pane.learn.html()

    with qtbot.waitSignal(pane.detailShown, timeout=JOB_TIMEOUT_MS):
        pane.detail_view.bins_spin.setValue(40)
    assert len(hist.bars.getOriginalDataset()[1]) == 40
    pane.detail_view.log_check.setChecked(True)
    assert hist.plot.getPlotItem().ctrl.logYCheck.isChecked()


def test_outlier_k_and_rule_thresholds_rejudge_without_reading_again(qtbot, pane, tiny_model_dir):
    report = load_and_inspect(qtbot, pane, tiny_model_dir)
    qtbot.waitUntil(lambda: not pane.runner.active(), timeout=JOB_TIMEOUT_MS)
    before = column_texts(pane, "Outliers")
    with qtbot.assertNotEmitted(pane.runner.jobsChanged):
        pane.settings_bar.k_spin.setValue(2.0)
    assert pane.table.model.headerData(COL["Outliers"], Qt.Orientation.Horizontal) == "> 2·std"
    assert column_texts(pane, "Outliers") != before

    assert any(t.recommendation.rule_symmetric for t in report.tensors)
    with qtbot.assertNotEmitted(pane.runner.jobsChanged), qtbot.waitSignal(pane.reportReady) as got:
        pane.settings_bar.skew_spin.setValue(0.0)  # nothing is that symmetric
    rejudged = got.args[0]
    assert all(t.recommendation.rule_symmetric is not True for t in rejudged.tensors)
    assert "symmetric" not in column_texts(pane, "Rule")
    assert [t.stats for t in rejudged.tensors] == [t.stats for t in report.tensors]

    with qtbot.assertNotEmitted(pane.runner.jobsChanged):
        pane.settings_bar.group_combo.setCurrentIndex(0)  # 32: needs a new measurement
    assert pane.settings_bar.hint.isVisibleTo(pane) and "Inspect" in pane.settings_bar.hint.text()
    with qtbot.waitSignal(pane.reportReady, timeout=JOB_TIMEOUT_MS) as got:
        pane.settings_bar.run_button.click()
    assert got.args[0].group_size == 32 and not pane.settings_bar.hint.isVisibleTo(pane)


def test_bit_width_redraws_the_clipping_ranges(qtbot, pane, tiny_model_dir):
    from core.weights.detail import clip_ranges

    load_and_inspect(qtbot, pane, tiny_model_dir)
    name = "model.layers.1.mlp.up_proj.weight"
    select_and_wait(qtbot, pane, name)
    with qtbot.waitSignal(pane.detailShown, timeout=JOB_TIMEOUT_MS):
        pane.settings_bar.bits_combo.setCurrentIndex(pane.settings_bar.bits_combo.findData(2))
    stats = pane.detail_view.detail.stats
    sym, asym = clip_ranges(stats.min, stats.max, 2)
    assert [line.value() for line in pane.detail_view.hist.sym_lines] == pytest.approx([sym.lo, sym.hi])
    assert [line.value() for line in pane.detail_view.hist.asym_lines] == pytest.approx([asym.lo, asym.hi])


def test_filters_and_heatmap_click_select_a_tensor(qtbot, pane, tiny_model_dir):
    report = load_and_inspect(qtbot, pane, tiny_model_dir)
    table = pane.table
    table.filter_edit.setText("mlp.down")
    assert table.proxy.rowCount() == 2 and table.count_label.text() == f"2 of {len(report.tensors)} tensors"
    table.filter_edit.clear()
    table.module_combo.setCurrentIndex(table.module_combo.findData("attn.q"))
    assert {table.name_at(r) for r in range(table.proxy.rowCount())} == {
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    }

    heat = pane.heatmap
    pane.tabs.setCurrentIndex(1)
    heat.set_stat("Best SQNR (dB)")
    assert heat.rows == ["model", "0", "1"] and heat.cols[:4] == ["attn.q", "attn.k", "attn.v", "attn.o"]
    row, col = heat.rows.index("1"), heat.cols.index("mlp.down")
    target = heat.name_at(row, col)
    assert target == "model.layers.1.mlp.down_proj.weight"
    view = heat.plot
    point = view.mapFromScene(heat.cell_center(row, col))
    with qtbot.waitSignal(pane.detailShown, timeout=JOB_TIMEOUT_MS):
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(point.x(), point.y()))
    assert table.current_name() == target and pane.tabs.currentIndex() == 0
    assert table.module_combo.currentIndex() == 0  # the filter that hid it was cleared


def test_export_table_and_plots(qtbot, pane, tiny_model_dir, tmp_path, scripted_dialogs):
    report = load_and_inspect(qtbot, pane, tiny_model_dir)
    qtbot.waitSignal(pane.detailShown, timeout=JOB_TIMEOUT_MS).wait()  # the first row, auto-selected
    scripted_dialogs.answer("choose_save_file", tmp_path / "table", tmp_path / "plots.png", tmp_path / "heat")
    pane.export_csv_button.click()
    rows = list(csv.DictReader((tmp_path / "table.csv").read_text().splitlines()))
    assert [r["name"] for r in rows] == [t.stats.name for t in report.tensors]
    assert "excess kurtosis" in rows[0] and "outliers beyond 3 std" in rows[0]
    pane.export_plots_button.click()
    assert (tmp_path / "plots.png").read_bytes()[:4] == b"\x89PNG"
    pane.tabs.setCurrentIndex(1)
    pane.export_plots_button.click()
    assert (tmp_path / "heat.png").stat().st_size > 1000


def test_cancel_stops_the_run_and_a_new_run_works(qtbot, pane, session, tiny_model_dir):
    with qtbot.waitSignal(pane.reportReady, timeout=LOAD_TIMEOUT_MS):
        session.load_model(sources.resolve(str(tiny_model_dir)))
    qtbot.waitUntil(lambda: not pane.runner.active(), timeout=JOB_TIMEOUT_MS)
    pane._set_report(None, None)
    handle = pane.run_inspect()
    with qtbot.waitSignal(handle.finished, timeout=JOB_TIMEOUT_MS):
        pane.job_bar.cancel_button.click()
    assert handle.cancel_requested and pane.report is None
    assert "cancelled" in pane.summary.text() and pane.settings_bar.run_button.isEnabled()
    assert pane.job_bar.isHidden() and pane.error_panel.isHidden()
    with qtbot.waitSignal(pane.reportReady, timeout=JOB_TIMEOUT_MS):
        pane.settings_bar.run_button.click()


def test_nan_and_inf_tensors_are_flagged_not_fatal(qtbot, pane, nan_model_dir):
    report = load_and_inspect(qtbot, pane, nan_model_dir)
    by_name = {t.stats.name: t for t in report.tensors}
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.k_proj.weight"):
        t = by_name[name]
        assert t.stats.nonfinite == 1
        assert t.recommendation.best is None  # judged by the rule on the finite values, not measured
        row = pane.table.proxy.mapFromSource(pane.table.model.index(pane.table.model.row_of(name), 0)).row()
        flags = pane.table.proxy.index(row, COL["Flags"])
        assert "NaN/Inf" in flags.data()
        assert flags.data(Qt.ItemDataRole.BackgroundRole).color() == ERROR_BG
        assert flags.data(Qt.ItemDataRole.DecorationRole) is not None
    select_and_wait(qtbot, pane, "model.layers.0.mlp.down_proj.weight")
    assert (
        "Not measured" in pane.detail_view.evidence.verdict.text()
        and not pane.detail_view.evidence.table.isVisibleTo(pane)
    )
    assert (
        sum(pane.detail_view.detail.counts) == pane.detail_view.detail.stats.params - 1
    )  # the finite values
    pane.tabs.setCurrentIndex(1)
    for stat in ("Excess kurtosis", "Best SQNR (dB)", "Channel spread"):
        pane.heatmap.set_stat(stat)  # NaN cells stay grey, never an error
    assert pane.error_panel.isHidden()


def test_recommendations_are_saved_into_the_project(qtbot, pane, session, tiny_model_dir):
    project = session.new_project("Inspected")
    statuses = []
    pane.statusChanged.connect(lambda state, text: statuses.append(state))
    report = load_and_inspect(qtbot, pane, tiny_model_dir)
    qtbot.waitUntil(lambda: statuses[-1] == "done", timeout=JOB_TIMEOUT_MS)
    assert session.flush()
    saved = json.loads((project.folder / projects.PROJECT_FILE).read_text())
    inspect = saved["inspect"]
    assert saved["step_status"]["inspect"] == "done" and "running" in statuses
    assert inspect["summary"] == report.summary() and inspect["bits"] == 4 and inspect["group_size"] == 64
    measured = [t for t in report.tensors if t.recommendation.best is not None]
    assert len(inspect["recommended"]) == len(measured) > 0
    some = measured[0]
    assert inspect["recommended"][some.stats.name] == {
        "symmetric": some.recommendation.best.symmetric,
        "granularity": some.recommendation.best.granularity,
    }
    with qtbot.waitSignal(session.saveStateChanged, check_params_cb=lambda s: s == "saved", timeout=3000):
        pane.settings_bar.margin_spin.setValue(0.0)
        pane.settings_bar.k_spin.setValue(4.5)
    again = projects.load_project(project.folder).inspect
    assert again.asym_margin_db == 0.0 and again.outlier_k == 4.5
    assert again.summary == pane.report.summary()


def test_a_model_without_safetensors_is_explained_in_the_pane(qtbot, pane, session, pickle_model_dir):
    with qtbot.waitSignal(session.modelChanged, timeout=LOAD_TIMEOUT_MS):
        session.load_model(sources.resolve(str(pickle_model_dir)), allow_pickle=True)
    qtbot.waitUntil(lambda: not pane.runner.active(), timeout=JOB_TIMEOUT_MS)
    assert "no .safetensors" in pane.error_panel.message.text()
    assert pane.report is None and pane.settings_bar.run_button.isEnabled()


def test_a_gguf_model_is_read_from_its_file(qtbot, pane, tiny_gguf):
    report = load_and_inspect(qtbot, pane, tiny_gguf)
    assert report.source == str(tiny_gguf)
    assert {"attn.q", "mlp.down", "embedding", "head"} <= {t.stats.module for t in report.tensors}
    select_and_wait(qtbot, pane, "blk.0.ffn_down.weight")
    assert pane.detail_view.detail.stats.shape == (32, 64)


def test_another_model_makes_the_saved_recommendations_stale(
    qtbot, pane, session, tiny_model_dir, nan_model_dir
):
    session.new_project("Two models")
    project = session.project
    load_and_inspect(qtbot, pane, tiny_model_dir)
    qtbot.waitUntil(lambda: not pane.runner.active(), timeout=JOB_TIMEOUT_MS)
    assert project.step_status["inspect"] == "done"
    statuses = []
    pane.statusChanged.connect(lambda state, text: statuses.append(state))
    pane.hide()  # off screen: no automatic run
    with qtbot.waitSignal(session.modelChanged, timeout=LOAD_TIMEOUT_MS):
        session.load_model(sources.resolve(str(nan_model_dir)))
    assert project.step_status["inspect"] == "stale" and statuses[-1] == "stale"
    assert pane.report is None and pane.table.model.rowCount() == 0
    with qtbot.waitSignal(pane.reportReady, timeout=JOB_TIMEOUT_MS) as got:
        pane.show()  # inspects the new model on its own
    assert got.args[0].source == str(nan_model_dir)
    assert project.step_status["inspect"] == "done"
