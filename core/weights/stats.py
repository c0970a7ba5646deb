"""Distribution statistics of one weight tensor, in float64, streamed in chunks.

Skewness and excess kurtosis are the population (biased) moment ratios, as scipy.stats.skew and
scipy.stats.kurtosis compute them by default: skew = m3 / m2^1.5, kurtosis = m4 / m2^2 − 3, with
m_k the k-th central moment.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

import torch

CHUNK = 1 << 18  # elements per chunk: 1 MB of float32, so temporaries stay in cache
OUTLIER_KS = tuple(x / 2 for x in range(4, 21))  # k = 2.0, 2.5, …, 10.0 (std multiples)

_MODULES = [
    (r"q_proj|attn_q\b|\.wq\.", "attn.q"),
    (r"k_proj|attn_k\b|\.wk\.", "attn.k"),
    (r"v_proj|attn_v\b|\.wv\.", "attn.v"),
    (r"o_proj|attn_output|\.wo\.|out_proj", "attn.o"),
    (r"gate_proj|ffn_gate|\.w1\.", "mlp.gate"),
    (r"up_proj|ffn_up|\.w3\.", "mlp.up"),
    (r"down_proj|ffn_down|\.w2\.", "mlp.down"),
    (r"embed_tokens|token_embd|wte|word_embeddings", "embedding"),
    (r"lm_head|^output\.weight", "head"),
    (r"norm|ln_", "norm"),
]


def classify(name: str) -> tuple[int | None, str]:
    """(layer index or None, module type) from a tensor name in HF or GGUF style."""
    found = re.search(r"(?:layers|blk|h|block)\.(\d+)\.", name)
    layer = int(found.group(1)) if found else None
    module = next((label for pattern, label in _MODULES if re.search(pattern, name)), "other")
    if name.endswith("bias"):
        module += " bias"
    return layer, module


@dataclass
class TensorStats:
    name: str
    layer: int | None
    module: str
    shape: tuple[int, ...]
    dtype: str
    params: int
    mean: float = math.nan
    std: float = math.nan
    min: float = math.nan
    max: float = math.nan
    absmax: float = math.nan
    skew: float = math.nan
    kurtosis: float = math.nan  # excess (a Gaussian has 0)
    zero_share: float = math.nan
    nonfinite: int = 0
    channel_spread: float | None = None  # max over median of per-output-channel abs-max
    outliers: dict[float, float] = field(default_factory=dict)  # k -> share beyond k·std
    flags: list[str] = field(default_factory=list)

    @property
    def quantizable(self) -> bool:
        return not any(f.startswith(("integer", "boolean", "all zero", "empty")) for f in self.flags)

    def outlier_share(self, k: float) -> float:
        """Share beyond k·std, for the nearest k computed (grid of 0.5)."""
        if not self.outliers:
            return math.nan
        nearest = min(self.outliers, key=lambda x: abs(x - k))
        return self.outliers[nearest]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["outliers"] = {str(k): v for k, v in self.outliers.items()}
        return data


def _chunks(x: torch.Tensor):
    # float32 chunks that stay in cache. torch sums a float32 chunk pairwise (error ~1e-7
    # relative) and the chunk sums add up in Python floats (float64): accurate to ~1e-6 without
    # the cost of a float64 copy.
    source = x if x.dtype in (torch.float32, torch.float64) else x.float()
    yield from source.split(CHUNK)


def tensor_stats(name: str, tensor: torch.Tensor) -> TensorStats:
    layer, module = classify(name)
    stats = TensorStats(
        name, layer, module, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""), tensor.numel()
    )
    if tensor.numel() == 0:
        stats.flags.append("empty tensor")
        return stats
    if not (tensor.is_floating_point() or tensor.is_complex()):
        kind = "boolean" if tensor.dtype == torch.bool else "integer"
        stats.flags.append(f"{kind} buffer: not a weight to quantize")
        values = tensor.reshape(-1).to(torch.float64)
        stats.min, stats.max = float(values.min()), float(values.max())
        return stats
    flat = tensor.detach().reshape(-1)
    _moments(flat, stats)
    if not all(map(math.isfinite, (stats.mean, stats.min, stats.max, stats.std))):
        # NaN or Inf propagates into the sums: only then pay for a pass that finds them.
        finite = torch.isfinite(flat)
        stats.nonfinite = int(flat.numel() - finite.sum())
        stats.flags.append(f"{stats.nonfinite} NaN/Inf values (left out of the statistics)")
        flat = flat[finite]
        if flat.numel() == 0:
            stats.mean = stats.std = stats.min = stats.max = stats.absmax = math.nan
            return stats
        _moments(flat, stats)
    if tensor.dim() >= 2 and stats.nonfinite == 0:
        stats.channel_spread = _channel_spread(tensor)
    if tensor.numel() == 1:
        stats.flags.append("single value")
    if stats.absmax == 0.0:
        stats.flags.append("all zero")
    if module == "embedding" or module == "head":
        stats.flags.append(module)
    return stats


def _moments(flat: torch.Tensor, stats: TensorStats) -> None:
    n = flat.numel()
    total, zeros = 0.0, 0
    lo, hi = math.inf, -math.inf
    for chunk in _chunks(flat):
        total += float(chunk.sum())
        zeros += int(torch.count_nonzero(chunk == 0))
        c_lo, c_hi = chunk.aminmax()
        lo, hi = min(lo, float(c_lo)), max(hi, float(c_hi))
    mean = total / n
    m2 = m3 = m4 = 0.0
    for chunk in _chunks(flat):
        # float64 here: excess kurtosis and skewness are differences of nearly equal terms
        # for near-Gaussian weights, and float32 products would cost them four digits.
        d = chunk.double() - mean
        d2 = d * d
        m2 += float(d2.sum())
        m3 += float((d2 * d).sum())
        m4 += float(d2.square_().sum())
    m2, m3, m4 = m2 / n, m3 / n, m4 / n
    stats.mean, stats.min, stats.max = mean, lo, hi
    stats.absmax = max(abs(lo), abs(hi))
    stats.std = math.sqrt(m2)
    stats.zero_share = zeros / n
    if m2 > 0:
        stats.skew = m3 / m2**1.5
        stats.kurtosis = m4 / m2**2 - 3.0
        stats.outliers = _outlier_shares(flat, mean, stats.std)


def _outlier_shares(flat: torch.Tensor, mean: float, std: float) -> dict[float, float]:
    # One histogram of |x - mean| in bins of half a std; "beyond k" sums the bins above k.
    step, top = OUTLIER_KS[1] - OUTLIER_KS[0], OUTLIER_KS[-1]
    bins = round(top / step)
    counts = torch.zeros(bins, dtype=torch.float64)
    first = OUTLIER_KS[0] * std
    in_tails = 0
    for chunk in _chunks(flat):
        dev = (chunk - mean).abs_()
        tail = dev[dev > first]  # a few percent of the values: histogram only those
        in_tails += tail.numel()
        counts += torch.histc(tail, bins=bins, min=0.0, max=top * std).double()
    n = flat.numel()
    beyond_top = in_tails - float(counts.sum())  # histc leaves out what lies past its range
    tail = counts.flip(0).cumsum(0).flip(0) + beyond_top  # tail[i]: count beyond i·step·std
    return {k: float(tail[round(k / step)]) / n if k < top else beyond_top / n for k in OUTLIER_KS}


def _channel_spread(tensor: torch.Tensor) -> float | None:
    per_channel = tensor.detach().reshape(tensor.shape[0], -1).abs().amax(dim=1).float()
    median = float(per_channel.median())
    return float(per_channel.max()) / median if median > 0 else None


def channel_absmax(tensor: torch.Tensor) -> torch.Tensor:
    """Per-output-channel abs-max (rows), for the pane's plot."""
    if tensor.dim() < 2:
        return tensor.detach().abs().float().reshape(-1)
    return tensor.detach().reshape(tensor.shape[0], -1).abs().amax(dim=1).float()
