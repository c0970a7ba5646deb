"""Training memory on the default model, in two tables.

1. The memory estimate before Start against what training really takes: for each case a fresh
   process loads the model, applies the method, and runs a few AdamW steps on random tokens; the
   peak growth of anonymous memory (RssAnon, sampled) over the loaded model is compared with the
   estimate's gradients + optimizer + activations (the weights are already loaded).
2. QLoRA against fp32 LoRA at the same settings (the defaults: rank 8, alpha 16, dropout 0.05, every
   linear layer): each case builds its model the way the Train step does (LoRA trains a float copy
   of the loaded model; QLoRA quantizes the loaded model into a new 4-bit one and makes no copy),
   then takes 2 AdamW steps. Measured: the peak RssAnon growth over the loaded model while the model
   is built and while it trains (the loaded model stays in memory, as in the app), and the process's
   peak resident set (VmHWM) at the end.

    QUANTTUNE_HOME=/tmp/qthome python benchmarks/train_memory.py [estimate|qlora [CASE:BATCH:LENGTH ...]]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

CASES = [("lora", 4, 128), ("lora", 4, 512), ("full", 4, 128), ("full", 2, 512)]
# "+gc": with gradient checkpointing, as peft's prepare_model_for_kbit_training would switch on
QLORA_CASES = [("lora", 4, 128), ("qlora", 4, 128), ("lora+gc", 4, 128), ("qlora+gc", 4, 128),
               ("lora", 1, 128), ("qlora", 1, 128)]  # fmt: skip
STEPS = 2  # the peak comes in the first backward pass; the second shows it does not grow
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
QLORA_CHILD = r"""
import copy, gc, json, sys, time
import torch
from core.finetune import methods
from core.jobs import JobContext
from core.models import loading, sources
from core.weights.memory_probe import PeakSampler, rss_anon_bytes
case, batch, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
method, checkpointing = case.split("+")[0], case.endswith("+gc")
loaded = loading.run(loading.LoadParams(sources.DEFAULT_REF, device="cpu"), JobContext())
gc.collect()
baseline = rss_anon_bytes()
with PeakSampler() as setup:  # as core.finetune.train.prepare builds the model it trains
    own = methods.METHODS[method].builds_own_model
    source = loaded.model if own else copy.deepcopy(loaded.model)
    model = methods.apply(source, methods.MethodSettings(method=method))
    del source
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    gc.collect()
held = rss_anon_bytes() - baseline
torch.manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (batch, length))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
with PeakSampler() as training:
    started = time.perf_counter()
    for _ in range(int(sys.argv[4])):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - started) / int(sys.argv[4])
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"setup": setup.peak - baseline, "held": held, "train": training.peak - baseline,
                  "hwm": hwm, "seconds": seconds, "loss": loss.item()}))
"""


def child(script: str, *args: object) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def estimate_table() -> None:
    print("| method | batch × length | estimated (GB) | measured (GB) | ratio |")
    print("|---|---|---|---|---|")
    for method, batch, length in CASES:
        result = child(CHILD, method, batch, length)
        m, e = result["measured"] / 1e9, result["estimated"] / 1e9
        print(f"| {method} | {batch} × {length} | {e:.2f} | {m:.2f} | {e / m:.2f} |", flush=True)


def qlora_table(cases: list[tuple[str, int, int]]) -> None:
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| case | batch × length | build peak (MB) | held after build (MB) | train peak (MB) | "
          "peak of both (MB) | VmHWM (MB) | s/step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    peaks: dict[tuple[str, int, int], int] = {}
    for case, batch, length in cases:
        r = child(QLORA_CHILD, case, batch, length, STEPS)
        peaks[(case, batch, length)] = peak = max(r["setup"], r["train"])
        print(f"| {case} | {batch} × {length} | {r['setup'] / 1e6:.0f} | {r['held'] / 1e6:.0f} | "
              f"{r['train'] / 1e6:.0f} | {peak / 1e6:.0f} | {r['hwm'] / 1e6:.0f} | {r['seconds']:.1f} |",
              flush=True)  # fmt: skip
    for (case, batch, length), peak in peaks.items():
        for other in ("lora", "lora+gc"):
            base = peaks.get((other, batch, length))
            if case.startswith("qlora") and base:
                print(f"{case} / {other} at {batch} × {length}: {peak / base:.0%} of the peak memory")


def main() -> None:
    which = sys.argv[1] if len(sys.argv) > 1 else "both"
    if which in ("estimate", "both"):
        estimate_table()
    if which in ("qlora", "both"):
        # optional cases as CASE:BATCH:LENGTH, e.g. qlora+gc:4:512
        picked = [(c, int(b), int(n)) for c, b, n in (a.split(":") for a in sys.argv[2:])]
        qlora_table(picked or QLORA_CASES)


if __name__ == "__main__":
    main()
