"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

G. Xiao, J. Lin, M. Seznec, H. Wu, J. Demouth, S. Han, "SmoothQuant: Accurate and Efficient
Post-Training Quantization for Large Language Models", ICML 2023 (arXiv:2211.10438); the scale
and its clamping follow the authors' reference code (github.com/mit-han-lab/smoothquant,
``smooth_ln_fcs``).

A few input channels of an LLM's linear layers carry values 10–100× larger than the rest, so a
per-tensor activation grid spends its levels on them. Per input channel j,
s_j = max|X_j|^α / max|W_j|^(1−α), and the layer computes (X / s)(W · s)ᵀ = X Wᵀ: the same
function in FP32, with flatter activations and slightly spikier weights. X / s costs nothing at
run time: 1/s is folded into whatever produced X.

``smoothing_groups`` finds those producers in a Llama-style block: the RMSNorm (or LayerNorm)
before q/k/v_proj and before gate/up_proj, up_proj's output rows for down_proj (down's input is
act(gate)·up, linear in up's output), and v_proj's output rows for o_proj when every attention
head has its own value head (with grouped-query attention one value channel feeds several o_proj
inputs, so o_proj is left alone). AWQ (core.quant.awq) folds its scales into the same places.

After ``smooth`` the layers' input statistics are stale (each input channel is divided by s):
collect them again (core.quant.activations.collect_input_stats) before choosing static ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import QuantTuneError
from core.quant.activations import InputStats
from core.quant.calibration import decoder_blocks

SCALE_FLOOR = 1e-5  # the reference code's clamp: keeps s (and 1/s) finite


@dataclass(frozen=True)
class SmoothGroup:
    """Linear layers that read one tensor, and the module whose output that tensor is."""

    source_name: str  # a norm, or a linear whose output rows feed the layers (up_proj, v_proj)
    source: nn.Module
    names: tuple[str, ...]
    layers: tuple[nn.Linear, ...]

    def stats_of(self, stats: dict[str, InputStats]) -> InputStats | None:
        """The shared input's statistics (from whichever reader was calibrated)."""
        return next((stats[name] for name in self.names if name in stats), None)


def _unsupported(model: nn.Module, why: str) -> QuantTuneError:
    return QuantTuneError(
        f"SmoothQuant supports Llama-style blocks; this {type(model).__name__} has none ({why}).",
        "Use plain W8A8 (or weight-only quantization) for this model.",
    )


def smoothing_groups(model: nn.Module) -> list[SmoothGroup]:
    """Every group of a Llama-style model whose shared input can be rescaled exactly, block order."""
    names = {module: name for name, module in model.named_modules()}
    groups = []
    try:
        blocks = decoder_blocks(model)
    except QuantTuneError:
        raise _unsupported(model, "no decoder blocks found") from None
    for block in blocks:
        groups += _block_groups(model, block, names)
    return groups


def _block_groups(model: nn.Module, block: nn.Module, names: dict) -> list[SmoothGroup]:
    try:
        attn, mlp = block.self_attn, block.mlp
        norm1, norm2 = block.input_layernorm, block.post_attention_layernorm
        q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    except AttributeError as exc:
        raise _unsupported(model, f"missing {exc.name!r} in {type(block).__name__}") from None
    if not all(isinstance(m, nn.Linear) for m in (q, k, v, o, gate, up, down)):
        raise _unsupported(model, "its projections are not plain linear layers")
    for norm in (norm1, norm2):
        _check_scalable(model, norm, q.in_features)

    def group(source, *layers) -> SmoothGroup:
        return SmoothGroup(names[source], source, tuple(names[m] for m in layers), layers)

    groups = [group(norm1, q, k, v)]
    if v.out_features == o.in_features:  # no grouped-query attention: value channel j → o input j
        groups.append(group(v, o))
    return [*groups, group(norm2, gate, up), group(up, down)]


@torch.no_grad()
def _check_scalable(model: nn.Module, norm: nn.Module, width: int) -> None:
    """Fail unless norm(x) scales with its weight (and bias): then weight / s divides the output by
    s exactly. Not so for Gemma's RMSNorm, which multiplies by (1 + weight)."""
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != (width,):
        raise _unsupported(model, f"{type(norm).__name__} has no per-channel weight")
    probe = torch.randn(2, width, generator=torch.Generator().manual_seed(0)).to(weight)
    before = norm(probe)
    params = [p for p in (weight, bias) if isinstance(p, torch.Tensor)]
    for p in params:
        p.mul_(2.0)
    try:
        after = norm(probe)
    finally:
        for p in params:
            p.div_(2.0)  # exact: multiplying by 2 and back loses no bits
    if not torch.allclose(after, 2.0 * before, rtol=1e-4, atol=1e-6):
        raise _unsupported(model, f"{type(norm).__name__} does not scale with its weight")


@torch.no_grad()
def fold_scales(group: SmoothGroup, scales: torch.Tensor) -> None:
    """X' = X / s in the group's source, W' = W · s in its layers: the same function in FP32."""
    source = group.source
    rows = scales.to(source.weight.device, torch.float32)
    if isinstance(source, nn.Linear):  # its output rows are the group's input channels
        source.weight.copy_((source.weight.float() / rows.unsqueeze(1)).to(source.weight.dtype))
    else:
        source.weight.copy_((source.weight.float() / rows).to(source.weight.dtype))
    if getattr(source, "bias", None) is not None:
        source.bias.copy_((source.bias.float() / rows).to(source.bias.dtype))
    for linear in group.layers:
        cols = scales.to(linear.weight.device, torch.float32)
        linear.weight.copy_((linear.weight.float() * cols).to(linear.weight.dtype))


def smoothing_scales(act_absmax: torch.Tensor, layers: tuple[nn.Linear, ...], alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^α / max|W_j|^(1−α), W_j taken over every layer reading the input."""
    weight_max = torch.stack([m.weight.detach().abs().float().amax(dim=0).cpu() for m in layers]).amax(dim=0)
    act_max = act_absmax.float().cpu()
    scales = act_max.clamp_min(SCALE_FLOOR).pow(alpha) / weight_max.clamp_min(SCALE_FLOOR).pow(1 - alpha)
    scales = scales.clamp(SCALE_FLOOR, 1 / SCALE_FLOOR)
    # A channel that was zero on all the calibration data says nothing: leave it as it is.
    return torch.where(act_max > 0, scales, torch.ones_like(scales))


def smooth(model: nn.Module, stats: dict[str, InputStats], alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """Smooth every group with calibrated inputs, in place; the scales by source module name.

    The statistics are stale afterwards: collect them again before choosing activation ranges.
    """
    if not 0.0 <= alpha <= 1.0:
        raise QuantTuneError(f"The SmoothQuant α must lie between 0 and 1 (got {alpha}).", "Use 0.5.")
    chosen = {}
    for group in smoothing_groups(model):
        entry = group.stats_of(stats)
        if entry is None:
            continue  # not calibrated: none of its layers is to be quantized
        scales = smoothing_scales(entry.absmax, group.layers, alpha)
        fold_scales(group, scales)
        chosen[group.source_name] = scales
    return chosen
