"""What the GUI shows of quantization: scale summaries, blocks, the scales CSV and the worked
example, checked against the stored codes and the dequantized weights bit for bit."""

import csv
import html
import re

import numpy as np
import pytest
import torch

from core.quant import explain
from core.quant.affine import Scheme, n_blocks, qrange
from core.quant.qtensor import as_rows, block_ranges, quantize_rtn, quantize_with_ranges

SCHEMES = [
    Scheme(4, False, "group", 32), Scheme(3, True, "group", 64), Scheme(8, False, "tensor"),
    Scheme(4, True, "channel"), Scheme(2, False, "channel"), Scheme(8, True, "group", 128),
]  # fmt: skip


def weight(rows=12, width=100, seed=0, shift=0.01):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, width, generator=g) * 0.05 + shift  # 100: no group size divides it


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_worked_example_reproduces_stored_codes_and_dequantized_weights(scheme):
    w = weight()
    q = quantize_rtn(w, scheme)
    restored = q.dequantize()
    groups = q.scale.shape[1]
    for row, group in [(0, 0), (5, groups - 1), (11, groups // 2)]:
        ex = explain.worked_example(w, q, row, group, n_values=6)
        expected = min(6, ex.values.numel())  # group-32's last group holds 100 − 96 = 4 values
        assert len(ex.samples) == expected and len({(s.row, s.col) for s in ex.samples}) == expected
        for s in ex.samples:
            assert s.q == int(q.codes[s.row, s.col]) == s.stored_q
            assert s.x_hat == float(restored[s.row, s.col])  # exactly: the same float32 arithmetic
            assert s.x == float(w[s.row, s.col]) and s.error == s.x - s.x_hat
            assert not s.clipped  # min-max ranges clip nothing
        assert ex.from_minmax and ex.clipped == 0
        qmin, qmax = qrange(scheme.bits, scheme.symmetric)
        assert (ex.qmin, ex.qmax) == (qmin, qmax)
        assert ex.hi == pytest.approx(ex.scale * (qmax - ex.zero)) and ex.lo == pytest.approx(
            ex.scale * (qmin - ex.zero)
        )


def test_samples_are_the_extremes_zero_and_a_typical_value():
    w = weight()
    q = quantize_rtn(w, Scheme(4, True, "channel"))
    ex = explain.worked_example(w, q, 3, 0)
    row = w[3]
    labels = {s.label: s.x for s in ex.samples}
    assert labels["largest |x|"] == float(row[row.abs().argmax()])
    assert labels["nearest to zero"] == float(row[row.abs().argmin()])
    assert {float(row.min()), float(row.max())} == {labels["largest |x|"], labels["opposite extreme"]}
    assert ex.cols == (0, 99) and ex.rows == (3, 3) and ex.values.numel() == 100


def test_asymmetric_formulas_show_the_real_numbers():
    block = torch.tensor([[-1.0, 0.5, 2.0, 3.0]])
    q = quantize_rtn(block, Scheme(4, False, "channel"))
    ex = explain.worked_example(block, q, 0, 0)
    # S = 4/15, Z = round(1 / (4/15)) = round(3.75) = 4: the grid covers [−4·S, 11·S]
    assert ex.formulas[0] == "S = (max − min) / (2^4 − 1) = (3 − (−1)) / 15 = 0.266667"
    assert ex.formulas[1] == "Z = round(−min / S) = round(1 / 0.266667) = round(3.75) = 4"
    assert ex.zero == 4 and ex.lo == pytest.approx(-16 / 15) and ex.hi == pytest.approx(44 / 15)
    half = next(s for s in ex.samples if s.x == 0.5)
    assert (half.rounded, half.shifted, half.q) == (2, 6, 6)  # 0.5 / (4/15) = 1.875 → 2, + Z
    assert (
        "x = 0.5 → x/S = 1.875 → round = 2 → + Z = 6 → q = clamp(6, 0, 15) = 6 → x′ = S·(q − Z)" in half.text
    )
    assert half.x_hat == pytest.approx(2 * 4 / 15) and half.error == pytest.approx(0.5 - 8 / 15)


def test_symmetric_formula_and_range_widened_to_zero_note():
    block = torch.tensor([[0.5, 1.0, 2.0, 3.5]])  # all positive: asymmetric widens min to 0
    q = quantize_rtn(block, Scheme(8, False, "tensor"))
    ex = explain.worked_example(block, q, 0, 0)
    assert ex.zero == 0 and any("widened to include 0" in line for line in ex.formulas)
    qs = quantize_rtn(block, Scheme(4, True, "tensor"))
    sym = explain.worked_example(block, qs, 0, 0)
    assert sym.formulas[0] == "S = max|x| / (2^(4−1) − 1) = 3.5 / 7 = 0.5" and sym.formulas[1].startswith(
        "Z = 0"
    )


def test_narrowed_range_clips_the_extremes_and_says_so():
    w = weight()
    scheme = Scheme(4, False, "group", 32)
    rows = as_rows(w)
    lo, hi = block_ranges(rows, scheme)
    q = quantize_with_ranges(rows, lo * 0.5, hi * 0.5, scheme)  # as a percentile observer might
    ex = explain.worked_example(w, q, 2, 1)
    assert not ex.from_minmax and ex.clipped > 0
    assert any(line.startswith("Calibration chose this range") for line in ex.formulas)
    biggest = ex.samples[0]
    assert biggest.clipped and biggest.q in (ex.qmin, ex.qmax) and "clipped" in biggest.text
    assert biggest.q == biggest.stored_q and biggest.x_hat == float(q.dequantize()[biggest.row, biggest.col])


def test_histogram_counts_every_value_and_grid_steps_by_s():
    w = weight()
    q = quantize_rtn(w, Scheme(3, True, "group", 64))
    ex = explain.worked_example(w, q, 4, 0)
    assert ex.hist_counts.sum() == ex.values.numel() == 64
    assert len(ex.hist_edges) == len(ex.hist_counts) + 1 and 64 <= len(ex.hist_counts) <= 128
    assert ex.hist_edges[0] <= min(ex.lo, ex.block_min) and ex.hist_edges[-1] >= max(ex.hi, ex.block_max)
    assert len(ex.grid) == 7 and np.allclose(np.diff(ex.grid), ex.scale)  # INT3 symmetric: codes −3 … 3
    for s in ex.samples:
        assert np.isclose(ex.grid, s.x_hat, rtol=0, atol=1e-7).any()


def test_out_of_range_block_is_refused():
    q = quantize_rtn(weight(), Scheme(4, False, "group", 32))
    with pytest.raises(IndexError):
        explain.worked_example(weight(), q, 12, 0)
    with pytest.raises(IndexError):
        explain.worked_example(weight(), q, 0, 4)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_scale_rows_summarise_each_tensor(scheme):
    q = quantize_rtn(weight(), scheme)
    (row,) = explain.scale_rows({"layer": q})
    assert row.pairs == n_blocks((12, 100), scheme.granularity, scheme.group_size)
    assert row.scale_min <= row.scale_median <= row.scale_max
    assert row.scale_min == float(q.scale.min()) and row.scale_max == float(q.scale.max())
    assert (row.zero_min is None) == scheme.symmetric and row.bits == scheme.bits and row.shape == (12, 100)
    if not scheme.symmetric:
        assert (row.zero_min, row.zero_max) == (int(q.zero.min()), int(q.zero.max()))


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.label)
def test_blocks_cover_every_column_once(scheme):
    q = quantize_rtn(weight(), scheme)
    blocks = explain.blocks_of(q)
    assert len(blocks) == n_blocks((12, 100), scheme.granularity, scheme.group_size)
    for r in range(12) if scheme.granularity != "tensor" else [0]:
        spans = [(b.first_col, b.last_col) for b in blocks if b.row == r]
        assert spans[0][0] == 0 and spans[-1][1] == 99
        assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(
        b.scale == float(q.scale[b.row, b.group]) and b.zero == int(q.zero[b.row, b.group]) for b in blocks
    )
    assert len(explain.blocks_of(q, limit=5)) == min(5, len(blocks))
    if scheme.granularity == "tensor":
        assert (blocks[0].row, blocks[0].last_row) == (0, 11)


def test_scales_csv_holds_every_pair_exactly(tmp_path):
    w = weight()
    quantized = {"a.q_proj": quantize_rtn(w, Scheme(4, False, "group", 32)),
                 "a.k_proj": quantize_rtn(w, Scheme(8, True, "tensor"))}  # fmt: skip
    path = explain.write_scales_csv(quantized, tmp_path / "scales.csv")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["tensor", "row", "group", "first_col", "last_col", "scale", "zero"]
    group_rows = [r for r in rows if r["tensor"] == "a.q_proj"]
    assert len(group_rows) == 12 * 4 and len(rows) == 12 * 4 + 12  # per-tensor: one line per row
    q = quantized["a.q_proj"]
    for r in group_rows:
        row, group = int(r["row"]), int(r["group"])
        assert np.float32(r["scale"]) == q.scale[row, group].numpy()  # 9 digits read back exactly
        assert int(r["zero"]) == int(q.zero[row, group])
        assert int(r["first_col"]) == 32 * group and int(r["last_col"]) == min(32 * group + 31, 99)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scales.csv"]  # no temp file left


def test_learn_page_fills_every_placeholder():
    w = weight()
    q = quantize_rtn(w, Scheme(4, False, "group", 32))
    ex = explain.worked_example(w, q, 1, 2, name="model.layers.0.mlp.up_proj")
    page = explain.render_learn(ex)
    assert not re.search(r"\$[a-z_]+", page)
    typical = next(s for s in ex.samples if s.label.startswith("typical"))
    assert explain.learn_numbers(ex)["q"] == str(typical.q) and f"<b><i>q</i> = {typical.q}</b>" in page
    assert "model.layers.0.mlp.up_proj" in page and "columns 64–95" in page
    assert html.escape(ex.samples[0].text) in page and "…" not in page
    empty = explain.render_learn(None)
    assert not re.search(r"\$[a-z_]+", empty) and explain.SELECT_HINT in empty and "…" in empty


def test_gptq_codes_are_shown_beside_plain_rounding():
    from core.quant.gptq import gptq_quantize

    w = weight(rows=8, width=64)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(1))
    q = gptq_quantize(w, x.T @ x / 256, Scheme(3, False, "group", 32))
    moved = 0
    for row in range(8):
        ex = explain.worked_example(w, q, row, 1, n_values=8)
        for s in ex.samples:
            assert s.stored_q == int(q.codes[s.row, s.col])
            moved += s.stored_q != s.q
            assert ("the stored code is" in s.text) == (s.stored_q != s.q)
        restored = q.dequantize()[row, 32:64]
        assert ex.mse == pytest.approx(float((restored - w[row, 32:64]).double().square().mean()))
    assert moved > 0  # GPTQ moves some codes away from plain rounding
