"""The Scales & zero points view on real quantized weights: the tree, lazy blocks, the worked
example against the stored codes, no base model, the filter, the CSV export and its errors."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch
from PySide6.QtCore import Qt

from core.errors import ModelNotFound
from core.quant import explain
from core.quant.affine import Scheme
from core.quant.qtensor import quantize_rtn
from desktop.widgets.error_panel import BUG_FIX
from desktop.widgets.scales_view import BLOCK_LIMIT, KEY_ROLE, NO_DATA, ScalesView
from desktop.widgets.worked_example_text import NO_WEIGHT, num, step_rows

Q_PROJ = "model.layers.0.self_attn.q_proj.weight"  # INT4 symmetric per-channel: 64 pairs
DOWN = "model.layers.0.mlp.down_proj.weight"  # INT4 asymmetric group-32: 128 rows × 3 groups
JOB_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def weights():
    g = torch.Generator().manual_seed(0)
    return {
        Q_PROJ: torch.randn(64, 96, generator=g) * 0.05,
        DOWN: torch.randn(128, 96, generator=g) * 0.03 + 0.01,
    }


@pytest.fixture(scope="module")
def quantized(weights):
    return {
        Q_PROJ: quantize_rtn(weights[Q_PROJ], Scheme(4, True, "channel")),
        DOWN: quantize_rtn(weights[DOWN], Scheme(4, False, "group", 32)),
    }


@pytest.fixture
def view(qtbot, runner):
    widget = ScalesView(runner)
    widget.resize(1100, 800)
    widget.show()
    yield widget
    runner.wait_all(10_000)
    widget.close()
    widget.deleteLater()


def fill(qtbot, view, quantized, weight_of):
    """set_data shows the first tensor's first block on its own."""
    with qtbot.waitSignal(view.blockShown, check_params_cb=lambda *a: a == (Q_PROJ, 0, 0)):
        view.set_data(quantized, weight_of, "RTN · INT4")


def top_texts(view) -> dict[str, list[str]]:
    tree = view.tree
    items = (tree.topLevelItem(i) for i in range(tree.topLevelItemCount()))
    return {item.text(0): [item.text(c) for c in range(tree.columnCount())] for item in items}


def test_the_tree_lists_every_tensor_with_its_pairs_and_scale_range(qtbot, view, quantized, weights):
    fill(qtbot, view, quantized, weights.__getitem__)
    rows = top_texts(view)
    assert list(rows) == [Q_PROJ, DOWN]
    assert rows[Q_PROJ][1:3] == ["INT4 symmetric per-channel", "64"]
    assert rows[DOWN][1:3] == ["INT4 asymmetric group-32", "384"]
    assert rows[Q_PROJ][4] == "0"  # symmetric: Z is always 0
    zeros = quantized[DOWN].zero
    assert rows[DOWN][4] == f"{int(zeros.min())}–{int(zeros.max())}"
    scales = quantized[DOWN].scale
    assert (
        rows[DOWN][3]
        == f"{num(float(scales.min()))} · {num(float(scales.median()))} · {num(float(scales.max()))}"
    )
    assert len(num(float(scales.min())).replace("0.", "").lstrip("0")) == 4  # 4 significant digits
    assert view.tree.currentItem().text(0) == Q_PROJ and view.current_example.name == Q_PROJ
    assert "RTN · INT4" in view.title_label.text()


def test_expanding_a_tensor_lists_its_blocks_lazily_and_caps_them(qtbot, view, quantized, weights):
    fill(qtbot, view, quantized, weights.__getitem__)
    down = view.tensor_item(DOWN)
    assert down.childCount() == 0  # nothing built until asked
    view.tree.expandItem(down)
    assert down.childCount() == BLOCK_LIMIT + 1
    block = down.child(4)  # row 1, group 1 (3 groups per row)
    assert block.data(0, KEY_ROLE) == (DOWN, 1, 1)
    assert block.text(0) == "row 1 · group 1 · cols 32–63"
    assert block.text(3) == num(float(quantized[DOWN].scale[1, 1]))
    assert block.text(4) == str(int(quantized[DOWN].zero[1, 1]))
    more = down.child(BLOCK_LIMIT)
    assert more.text(0).startswith(f"… {384 - BLOCK_LIMIT} more") and more.data(0, KEY_ROLE) is None
    assert not more.flags() & Qt.ItemFlag.ItemIsSelectable
    q_proj = view.tensor_item(Q_PROJ)
    view.tree.expandItem(q_proj)
    assert q_proj.childCount() == 64 and q_proj.child(63).text(0) == "row 63 · cols 0–95"


def test_selecting_a_block_shows_its_codes_and_dequantized_weights(qtbot, view, quantized, weights):
    fill(qtbot, view, quantized, weights.__getitem__)
    down = view.tensor_item(DOWN)
    view.tree.expandItem(down)
    numbers = []
    view.numbersChanged.connect(numbers.append)
    with qtbot.waitSignal(view.blockShown, check_params_cb=lambda *a: a == (DOWN, 5, 2)):
        view.tree.setCurrentItem(down.child(5 * 3 + 2))
    example = view.current_example
    assert (example.name, example.row, example.group, example.cols) == (DOWN, 5, 2, (64, 95))
    q, restored = quantized[DOWN], quantized[DOWN].dequantize()
    text = view.example.toPlainText()
    rows = {row[0]: row[1:] for row in step_rows(example)}
    assert list(rows) == ["x", "x / S", "round(x / S)", "+ Z", "q = clamp(·, 0, 15)", "x′ = S·(q − Z)",
                          "error x − x′", "clipped"]  # fmt: skip
    at = [(s.row, s.col) for s in example.samples]
    assert len(at) == 6 and all(r == 5 and 64 <= c <= 95 for r, c in at)
    assert rows["x"] == [num(float(weights[DOWN][r, c])) for r, c in at]
    assert rows["q = clamp(·, 0, 15)"] == [num(int(q.codes[r, c])) for r, c in at]
    assert rows["x′ = S·(q − Z)"] == [num(float(restored[r, c])) for r, c in at]
    for row in rows.items():  # the browser shows each step's row, cell after cell
        assert "\n".join([row[0], *row[1]]) in text
    assert example.formulas[0] in text and f"SQNR {num(example.sqnr_db)} dB" in text
    assert "0 of 32 clipped" in text
    assert numbers[-1] == explain.learn_numbers(example)
    plot = view.plot
    edges, counts = plot.bars.getOriginalDataset()
    assert list(counts) == list(example.hist_counts) and list(edges) == pytest.approx(example.hist_edges)
    assert [line.value() for line in plot.range_lines] == pytest.approx([example.lo, example.hi])
    assert [line.value() for line in plot.minmax_lines] == pytest.approx(
        [example.block_min, example.block_max]
    )
    assert len(plot.grid.data) == len(example.grid) == 16


def test_a_per_tensor_scheme_has_one_block_and_a_thinned_int8_grid(qtbot, view, scripted_dialogs, tmp_path):
    name = "lm_head.weight"
    weight = torch.randn(16, 40, generator=torch.Generator().manual_seed(1))
    quantized = {name: quantize_rtn(weight, Scheme(8, True, "tensor"))}
    with qtbot.waitSignal(view.blockShown, check_params_cb=lambda *a: a == (name, 0, 0)):
        view.set_data(quantized, {name: weight}.__getitem__)
    assert top_texts(view)[name][2:] == ["1", num(float(quantized[name].scale[0, 0])), "0"]
    item = view.tensor_item(name)
    view.tree.expandItem(item)
    assert item.childCount() == 1 and item.child(0).text(0) == "rows 0–15 · cols 0–39"
    example = view.current_example
    assert example.rows == (0, 15) and example.values.numel() == 640
    assert view.plot.grid_step == 4 and len(view.plot.grid.data) == 64  # of 255 grid points
    assert "one in 4 of 255" in view.plot.caption.text()
    scripted_dialogs.answer("choose_save_file", tmp_path / "head.csv")
    with qtbot.waitSignal(view.exportFinished, timeout=JOB_TIMEOUT_MS):
        view.export_button.click()
    lines = (tmp_path / "head.csv").read_text().splitlines()
    assert len(lines) == 1 + 16  # per-tensor: the one (S, Z) as stored, on every row
    assert "16 (S, Z) rows" in view.status_label.text()


def test_a_block_beyond_the_listed_ones_still_shows(qtbot, view, quantized, weights):
    fill(qtbot, view, quantized, weights.__getitem__)
    with qtbot.waitSignal(view.blockShown, check_params_cb=lambda *a: a == (DOWN, 127, 2)):
        view.show_block(DOWN, 127, 2)
    assert view.current_example.cols == (64, 95) and view.current_example.rows == (127, 127)
    assert view.tree.currentItem() is view.tensor_item(DOWN)  # the block is not listed: its tensor is


def test_without_the_base_model_the_view_shows_s_and_z_and_says_why(qtbot, view, quantized):
    numbers = []
    view.numbersChanged.connect(numbers.append)
    with qtbot.waitSignal(view.blockShown):
        view.set_data(quantized, None)
    with qtbot.waitSignal(view.blockShown, check_params_cb=lambda *a: a == (DOWN, 2, 1)):
        view.show_block(DOWN, 2, 1)
    assert view.current_example is None
    text = view.example.toPlainText()
    assert NO_WEIGHT in text and "load the base model" in text.lower()
    q = quantized[DOWN]
    assert f"S = {num(float(q.scale[2, 1]))}, Z = {int(q.zero[2, 1])}" in text
    assert "Load the base model" in numbers[-1]["hint"]
    assert not any(line.isVisible() for line in view.plot.minmax_lines)
    assert len(view.plot.grid.data) == 16  # the grid needs only S and Z
    assert top_texts(view)[DOWN][2] == "384"


def test_a_failing_weight_read_shows_the_error_panel(qtbot, view, quantized):
    def weight_of(name):
        raise ModelNotFound("The base model folder /gone is missing.", "Load the base model again.")

    view.set_data(quantized, weight_of)
    assert view.error_panel.isVisible() and "/gone is missing" in view.error_panel.message.text()
    assert view.error_panel.fix.text() == "Load the base model again." and view.current_example is None


def test_the_filter_hides_tensors_and_select_tensor_clears_it(qtbot, view, quantized, weights):
    fill(qtbot, view, quantized, weights.__getitem__)
    view.filter_edit.setText("DOWN_proj")
    assert view.tensor_item(Q_PROJ).isHidden() and not view.tensor_item(DOWN).isHidden()
    view.filter_edit.setText("no such tensor")
    assert all(view.tensor_item(n).isHidden() for n in (Q_PROJ, DOWN))
    with qtbot.waitSignal(view.blockShown, check_params_cb=lambda *a: a == (Q_PROJ, 0, 0)):
        assert view.select_tensor(Q_PROJ)  # it was current already: shown again
    assert view.filter_edit.text() == "" and not view.tensor_item(Q_PROJ).isHidden()
    assert view.select_tensor("nope") is False


def test_export_writes_one_csv_line_per_block(qtbot, view, quantized, weights, scripted_dialogs, tmp_path):
    fill(qtbot, view, quantized, weights.__getitem__)
    scripted_dialogs.answer("choose_save_file", tmp_path / "scales")
    with qtbot.waitSignal(view.exportFinished, timeout=JOB_TIMEOUT_MS) as done:
        view.export_button.click()
    path = tmp_path / "scales.csv"  # the suffix was added
    assert done.args == [True, str(path)]
    with path.open(newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 64 + 384 == sum(q.scale.numel() for q in quantized.values())
    last = lines[-1]
    assert (last["tensor"], last["row"], last["group"], last["zero"]) == (
        DOWN, "127", "2", str(int(quantized[DOWN].zero[127, 2]))
    )  # fmt: skip
    assert str(path) in view.status_label.text() and "448" in view.status_label.text()
    assert view.export_button.isEnabled() and not view.error_panel.isVisible()


def test_export_errors_show_in_the_panel(qtbot, view, quantized, weights, scripted_dialogs, tmp_path):
    fill(qtbot, view, quantized, weights.__getitem__)
    missing = tmp_path / "no such folder" / "scales.csv"
    scripted_dialogs.answer("choose_save_file", missing)
    with qtbot.waitSignal(view.exportFinished) as done:
        view.export_button.click()
    assert done.args[0] is False and view.error_panel.isVisible()
    assert "no such folder" in view.error_panel.message.text() and not missing.parent.exists()

    # The folder exists, the write itself fails: a folder of that name, then a name too long.
    (tmp_path / "taken.csv").mkdir()
    for path in (tmp_path / "taken.csv", tmp_path / ("s" * 300 + ".csv")):
        view.error_panel.dismiss()
        scripted_dialogs.answer("choose_save_file", path)
        with qtbot.waitSignal(view.exportFinished, timeout=JOB_TIMEOUT_MS) as done:
            view.export_button.click()
        assert done.args[0] is False and view.error_panel.isVisible()
        assert view.error_panel.message.text().startswith(f"Could not write {path}")
        assert view.error_panel.fix.text() != BUG_FIX and view.export_button.isEnabled()
    assert (tmp_path / "taken.csv").is_dir() and not list(tmp_path.glob("*.csv.*"))


def test_cancelling_the_save_dialog_writes_nothing(qtbot, view, quantized, weights, scripted_dialogs):
    fill(qtbot, view, quantized, weights.__getitem__)
    scripted_dialogs.answer("choose_save_file", None)
    assert view.export_csv() is None and not view.runner.active()


def test_set_data_none_clears_the_view(qtbot, view, quantized, weights):
    fill(qtbot, view, quantized, weights.__getitem__)
    with qtbot.waitSignal(view.numbersChanged, check_params_cb=lambda d: d == {"hint": NO_DATA}):
        view.set_data(None, None)
    assert view.tree.topLevelItemCount() == 0 and view.current_example is None
    assert NO_DATA in view.example.toPlainText() and not view.export_button.isEnabled()
    assert view.plot.bars.getOriginalDataset()[1].sum() == 0


def test_importing_the_view_imports_neither_torch_nor_pyqtgraph():
    code = (
        "import sys; import desktop.widgets.scales_view; "
        "print([m for m in ('torch', 'pyqtgraph', 'core.quant.explain') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
