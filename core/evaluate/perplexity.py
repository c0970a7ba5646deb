"""Perplexity of a causal LM on a text, in fixed non-overlapping windows.

ppl = exp( Σ NLL / Σ predicted tokens ), every window scored independently (each starts without
context, so the figure depends on the window length: compare runs at the same window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from core.errors import InvalidSettings, QuantTuneError


def bundled_text(name: str) -> str:
    """A text shipped in resources/texts: "heldout" or "calibration"."""
    return resources.files("resources").joinpath("texts", f"{name}.txt").read_text("utf-8")


def read_text_file(path: Path) -> str:
    """Plain text, or JSONL whose rows hold a "text" field; a clear error for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise QuantTuneError(f"Could not read {path}: {exc.strerror}.", "Pick a readable text file.") from exc
    if b"\x00" in data[:4096]:
        raise QuantTuneError(
            f"{path.name} looks like a binary file, not text.", "Pick a .txt or .jsonl file."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise QuantTuneError(
            f"{path.name} is not UTF-8 text.", "Save it as UTF-8 and pick it again."
        ) from exc
    if path.suffix == ".jsonl":
        text = _jsonl_text(text, path)
    if not text.strip():
        raise QuantTuneError(f"{path.name} is empty.", "Pick a file with some text in it.")
    return text


def _jsonl_text(text: str, path: Path) -> str:
    import json

    parts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise QuantTuneError(f"{path.name} line {number} is not valid JSON.", "Fix that line.") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise QuantTuneError(
                f'{path.name} line {number} has no "text" field.', 'Give every row a "text" string.'
            )
        parts.append(row["text"])
    return "\n\n".join(parts)


@dataclass(frozen=True)
class PerplexityParams:
    model: Any = field(compare=False, repr=False)  # a transformers causal LM
    tokenizer: Any = field(compare=False, repr=False)
    text: str = field(repr=False, default="")
    window: int = 512
    max_tokens: int = 4096
    # Evaluate's speed: several windows per forward pass and bf16 autocast where native (the
    # figure moves by about 0.02 at 25); the Quantize step keeps one FP32 window at a time.
    windows_per_pass: int = 1
    autocast: str = "off"  # "off", "bf16" or "auto" (core.evaluate.generation.precision)

    def validate(self) -> list[str]:
        problems = []
        if not self.text.strip():
            problems.append("the evaluation text is empty")
        if self.window < 2:
            problems.append("the window must hold at least 2 tokens")
        if self.max_tokens < self.window:
            problems.append("the token budget is smaller than one window")
        return problems


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # tokens predicted (each window predicts window − 1)
    windows: int
    window: int


def windows_of(tokenizer, text: str, window: int, max_tokens: int):
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0][:max_tokens]
    count = ids.numel() // window
    if count == 0:
        raise InvalidSettings([f"the text has {ids.numel()} tokens, fewer than one window of {window}"])
    return torch.stack([ids[i * window : (i + 1) * window] for i in range(count)])


def run(params: PerplexityParams, ctx) -> PerplexityResult:
    import torch

    from core.evaluate.generation import precision

    windows = windows_of(params.tokenizer, params.text, params.window, params.max_tokens)
    device = next(params.model.parameters()).device
    step = max(1, params.windows_per_pass)
    total_nll, total_tokens = 0.0, 0
    ctx.stage("Measuring perplexity")
    with torch.inference_mode(), precision(params.model, params.autocast):
        for start in range(0, len(windows), step):
            ctx.check_cancelled()
            ids = windows[start : start + step].to(device)
            loss = params.model(input_ids=ids, labels=ids).loss  # mean NLL over every predicted token
            if not torch.isfinite(loss):
                raise QuantTuneError(
                    "The model's loss is NaN or infinite on the evaluation text.",
                    "The weights are probably broken (e.g. by too aggressive quantization); try more bits.",
                )
            predicted = ids.shape[0] * (ids.shape[1] - 1)
            total_nll += float(loss) * predicted
            total_tokens += predicted
            ctx.progress(min(start + step, len(windows)), len(windows), "Measuring perplexity")
    return PerplexityResult(math.exp(total_nll / total_tokens), total_tokens, len(windows), params.window)
