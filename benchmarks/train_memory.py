"""The memory estimate before Start against what training really takes, on the default model.

For each case a fresh process loads the model, applies the method, and runs a few AdamW steps on
random tokens; the peak growth of anonymous memory (RssAnon, sampled) over the loaded model is
compared with the estimate's gradients + optimizer + activations (the weights are already loaded).

    QUANTTUNE_HOME=/tmp/qthome python benchmarks/train_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys

CASES = [("lora", 4, 128), ("lora", 4, 512), ("full", 4, 128), ("full", 2, 512)]
CHILD = r"""
import json, sys
import torch
from core.finetune import estimate as est, methods
from core.jobs import JobContext
from core.models import loading, sources
from core.weights.memory_probe import PeakSampler
method, batch, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
loaded = loading.run(loading.LoadParams(sources.DEFAULT_REF, device="cpu"), JobContext())
model = methods.apply(loaded.model, methods.MethodSettings(method=method)).train()
shape = est.ModelShape.of(model)
e = est.estimate(shape, batch, length)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
ids = torch.randint(0, shape.vocab, (batch, length))
with PeakSampler() as sampler:
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
print(json.dumps({"measured": sampler.growth, "estimated": e.peak - e.weights}))
"""


def main() -> None:
    print("| method | batch × length | estimated (GB) | measured (GB) | ratio |")
    print("|---|---|---|---|---|")
    for method, batch, length in CASES:
        out = subprocess.run([sys.executable, "-c", CHILD, method, str(batch), str(length)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        m, e = result["measured"] / 1e9, result["estimated"] / 1e9
        print(f"| {method} | {batch} × {length} | {e:.2f} | {m:.2f} | {e / m:.2f} |", flush=True)


if __name__ == "__main__":
    main()
