"""GPTQ: round a layer's weights one column at a time and push each rounding error onto the columns
not yet rounded, weighted by how the layer's inputs correlate, so that the layer's *output* on the
calibration data changes as little as possible.

Algorithm: E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", ICLR 2023 (arXiv:2210.17323); the steps and
names follow the authors' reference code (github.com/IST-DASLab/gptq, ``GPTQ.fasterquant``).

For a weight W [rows, cols] and the Hessian of its layer-wise loss H = 2/N · Σ XᵀX over the N
calibration inputs X [tokens, cols]:

1. Ranges: the (S, Z) of every block are fixed from the original weight before the pass ("static
   groups"), so the result is a plain :class:`QuantizedWeight` that dequantizes exactly like RTN's.
2. Dead columns (H_ii = 0: an input that was zero on every calibration token) get H_ii = 1, which
   isolates them: they are rounded to nearest and neither give nor take error.
3. Act-order: columns go in order of decreasing H_ii, so the inputs that matter most are rounded
   first, while many columns remain to absorb their error.
4. Dampening λ = percdamp · mean(diag H) on the diagonal, then U = the upper Cholesky factor of H⁻¹.
5. For each column i: q = round(w_i), e = (w_i − q) / U_ii, w_j −= e · U_ij for every later column j,
   applied lazily: to the rest of the matrix once per block of ``block_size`` columns, and within a
   block to each column just before it is rounded.

Written here rather than taken from a library: the packages that implement GPTQ (gptqmodel,
llm-compressor, auto-gptq) target CUDA kernels and their own checkpoint formats, while QuantTune
needs the bare algorithm on CPU, producing its own QuantizedWeight.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from core.errors import QuantTuneError
from core.quant.affine import Scheme, qrange
from core.quant.qtensor import QuantizedWeight, as_rows, block_ranges, quantize_with_ranges

DAMP_RETRIES = 4  # percdamp, ×10, ×100, ×1000: beyond that the Hessian carries no information


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: Scheme,
    *,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = True,
    name: str = "the layer",
    ranges: tuple[torch.Tensor, torch.Tensor] | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> QuantizedWeight:
    """Quantize ``weight`` [rows, cols] with GPTQ, given H [cols, cols] of the layer's inputs.

    Returns codes, scales and zero points in the original column order; ``name`` only labels errors.
    ``ranges``: per-block (lo, hi) chosen by an observer (core.quant.weight_ranges); default min-max.
    ``check_cancelled`` (e.g. JobContext.check_cancelled) runs before every block of columns: a wide
    layer takes seconds on a busy CPU.
    """
    rows = as_rows(weight.detach()).float()
    hessian = _checked_hessian(hessian, rows.shape[1], name)
    # Step 1: static (S, Z) from the original weight; the RTN codes are discarded.
    lo, hi = ranges if ranges is not None else block_ranges(rows, scheme)
    ranges = quantize_with_ranges(rows, lo, hi, scheme)

    hessian = _isolate_dead_columns(hessian)
    order = _column_order(hessian, act_order)
    inv_chol = _inverse_cholesky(hessian.index_select(0, order).index_select(1, order), percdamp, name)
    # Work on [cols, rows] matrices, columns in processing order: a column of W is then a
    # contiguous row, which the per-column loop reads thousands of times per layer.
    group_of = (torch.arange(rows.shape[1], device=rows.device) // ranges.group_len).index_select(0, order)
    codes_t = _quantize_columns(
        rows.t().contiguous().index_select(0, order),
        inv_chol,
        ranges.scale.t().contiguous().index_select(0, group_of),
        ranges.zero.t().float().contiguous().index_select(0, group_of),
        qrange(scheme.bits, scheme.symmetric),
        block_size,
        check_cancelled or (lambda: None),
    )
    codes = codes_t.index_select(0, torch.argsort(order)).t()
    return QuantizedWeight(codes.to(ranges.codes.dtype).contiguous(), ranges.scale, ranges.zero, scheme)


def _checked_hessian(hessian: torch.Tensor, cols: int, name: str) -> torch.Tensor:
    if hessian.shape != (cols, cols):
        raise ValueError(f"The Hessian of {name} is {tuple(hessian.shape)}; expected ({cols}, {cols}).")
    if not torch.isfinite(hessian).all():
        raise QuantTuneError(
            f"The input statistics (Hessian) of {name} contain NaN or infinite values.",
            "Check the calibration text and the model's activations, or quantize with RTN.",
        )
    return hessian.detach().float().clone()


def _isolate_dead_columns(hessian: torch.Tensor) -> torch.Tensor:
    # H_ii = 0 means row and column i are zero too (H is a Gram matrix): H_ii = 1 makes H
    # invertible without coupling column i to any other, so it is rounded to nearest. The
    # reference code also zeroes such weights; we keep them, since held-out text may use them.
    dead = hessian.diagonal() == 0
    hessian.diagonal()[dead] = 1.0
    return hessian


def _column_order(hessian: torch.Tensor, act_order: bool) -> torch.Tensor:
    if act_order:
        return torch.argsort(hessian.diagonal(), descending=True, stable=True)
    return torch.arange(hessian.shape[0], device=hessian.device)


def _inverse_cholesky(hessian: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """U, upper triangular with UᵀU = (H + λI)⁻¹; λ grows ×10 while H + λI is not positive definite."""
    mean_diag = hessian.diagonal().mean()
    damp = percdamp
    for _ in range(DAMP_RETRIES):
        damped = hessian.clone()
        damped.diagonal().add_(damp * mean_diag)
        upper = _upper_cholesky_of_inverse(damped)
        if upper is not None:
            return upper
        damp *= 10
    raise QuantTuneError(
        f"GPTQ could not factor the Hessian of {name}, even with dampening {damp / 10:g}.",
        "Use more or different calibration text, or quantize this layer with RTN.",
    )


def _upper_cholesky_of_inverse(hessian: torch.Tensor) -> torch.Tensor | None:
    """U = R⁻¹ where H = R·Rᵀ with R upper (the Cholesky factor of H with rows and columns
    reversed); then H⁻¹ = R⁻ᵀR⁻¹ = UᵀU. None when H is not positive definite.

    The reference code inverts H and factors again (cholesky_inverse, then cholesky); one
    factorization and one triangular solve give the same U, and LAPACK's cholesky_inverse
    stalls for up to a second on a busy 2-core machine.
    """
    lower, info = torch.linalg.cholesky_ex(hessian.flip(0, 1))
    if info != 0:
        return None
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    upper = torch.linalg.solve_triangular(lower.flip(0, 1), eye, upper=True)
    return upper if torch.isfinite(upper).all() else None


def _quantize_columns(
    weight_t: torch.Tensor,
    inv_chol: torch.Tensor,
    scale_t: torch.Tensor,
    zero_t: torch.Tensor,
    qbounds: tuple[int, int],
    block_size: int,
    check_cancelled: Callable[[], None],
) -> torch.Tensor:
    """The GPTQ pass over the columns (here: rows of ``weight_t``, which it overwrites)."""
    qmin, qmax = qbounds
    codes_t = torch.empty_like(weight_t)
    # Row j of U divided by U_jj: then a column's error is plainly w − q, with no division per column.
    coupling = inv_chol / inv_chol.diagonal().unsqueeze(1)
    # Row views made once: this loop runs for every column of the model, and on small rows
    # indexing a tensor costs as much as the arithmetic.
    weights, scales, zeros, codes = (t.unbind(0) for t in (weight_t, scale_t, zero_t, codes_t))
    for start in range(0, weight_t.shape[0], block_size):
        check_cancelled()
        end = min(start + block_size, weight_t.shape[0])
        errors = torch.empty_like(weight_t[start:end])
        # The block of U transposed: the coefficients that column i needs form a contiguous row.
        block = coupling[start:end, start:end].t().contiguous()
        for k, (err, coeffs) in enumerate(zip(errors.unbind(0), block.unbind(0), strict=True)):
            i = start + k
            # Column i takes the errors of this block's earlier columns only now (one
            # matrix-vector product): cheaper than updating the whole block after every column.
            w = torch.addmv(weights[i], errors[:k].t(), coeffs[:k], alpha=-1)
            q = torch.div(w, scales[i], out=codes[i]).round_().add_(zeros[i]).clamp_(qmin, qmax)
            torch.sub(w, torch.sub(q, zeros[i], out=err).mul_(scales[i]), out=err)
        # The columns after this block take its errors at once (one matrix product).
        weight_t[end:].addmm_(coupling[start:end, end:].t(), errors, alpha=-1)
    return codes_t


def layer_output_error(weight: torch.Tensor, dequantized: torch.Tensor, inputs: torch.Tensor) -> float:
    """Mean squared difference between X·Wᵀ and X·W'ᵀ over the inputs X [..., cols]."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    diff = as_rows(weight.detach()).float() - as_rows(dequantized.detach()).float()
    return float((x @ diff.t()).square().mean())
