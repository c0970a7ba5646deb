"""Inspect streams a checkpoint: peak anonymous memory stays near the largest tensor.

Writes a synthetic safetensors checkpoint of SIZE_GB (default 3) made of many tensors, then
inspects it in a fresh process and prints the peak growth of RssAnon (memory-mapped file pages
don't count there) next to the largest tensor and the checkpoint's size.

    python benchmarks/inspect_memory.py [SIZE_GB] [TENSOR_MB]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch  # imported before the baseline: the libraries are the fixed overhead
from core.jobs import JobContext
from core.weights import inspect
from core.weights.memory_probe import PeakSampler
with PeakSampler() as sampler:
    t = time.monotonic()
    report = inspect.run(inspect.InspectParams(sys.argv[1], measure=True), JobContext())
    seconds = time.monotonic() - t
print(json.dumps({"growth": sampler.growth, "baseline": sampler.baseline, "seconds": seconds,
                  "params": report.parameters}))
"""


def write_checkpoint(folder: Path, size_gb: float, tensor_mb: int) -> tuple[int, int]:
    import torch
    from safetensors.torch import save_file

    per_file = 8  # tensors per shard: each shard is written on its own to bound this process
    rows = 1024
    cols = tensor_mb * 1024 * 1024 // 4 // rows
    count = max(1, int(size_gb * 1024 / tensor_mb))
    gen = torch.Generator().manual_seed(0)
    for shard in range(0, count, per_file):
        tensors = {
            f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, cols, generator=gen) * 0.02
            for i in range(shard, min(count, shard + per_file))
        }
        save_file(tensors, str(folder / f"model-{shard // per_file:05d}.safetensors"))
    return count * rows * cols * 4, rows * cols * 4


def main() -> None:
    import json

    size_gb = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    tensor_mb = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        total, largest = write_checkpoint(folder, size_gb, tensor_mb)
        subprocess.run(
            ["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], check=False, stderr=subprocess.DEVNULL
        )
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
    mb = 1024 * 1024
    growth, rate = result["growth"], result["params"] / result["seconds"] / 1e6
    print(f"checkpoint: {total / mb:,.0f} MB in {total // largest} tensors, largest {largest / mb:,.0f} MB")
    print(
        f"peak RssAnon growth while inspecting: {growth / mb:,.0f} MB = {growth / largest:.2f} x largest "
        f"tensor = {100 * growth / total:.1f}% of the checkpoint"
    )
    print(f"baseline RssAnon (python + torch): {result['baseline'] / mb:,.0f} MB")
    wall = time.monotonic() - started
    print(f"inspect time: {result['seconds']:.1f} s ({rate:.0f} M params/s), wall {wall:.1f} s")


if __name__ == "__main__":
    main()
