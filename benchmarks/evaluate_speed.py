"""How fast Evaluate scores and generates on the default model (target: perplexity at 1,000 tokens/s
or more on 2 CPU cores).

Prints, each as the median of RUNS runs:
- text perplexity over the bundled held-out text (core.evaluate.perplexity.run: 512-token windows,
  4,096 tokens; one window per forward pass as the Quantize step measures, and four as the Evaluate
  step does), in predicted tokens per second;
- answer perplexity (core.evaluate.generation.answer_perplexity) over the test rows of the bundled
  instructions dataset (the Train step's default-style split: seed 0, 20 % test), in tokens read per
  second (prompt and answer) and answer tokens scored per second;
- batched greedy generation of the same 16 prompts at batch 1 and batch 8, in generated tokens per
  second, and the ratio.
Each figure in fp32 and, where the CPU multiplies bf16 natively, under bf16 autocast
(core.evaluate.generation.precision; perplexity.run is wrapped in it from outside).

    QUANTTUNE_HOME=/tmp/qthome python benchmarks/evaluate_speed.py [--runs 3] [--threads 0]

The machine's cores may be shared with other work: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

DATASET = Path(__file__).parents[1] / "resources/datasets/instructions-units.jsonl"


def median_of(fn, runs: int) -> tuple[float, object]:
    """Median seconds of ``runs`` calls (after one warm-up call) and the last result."""
    fn()
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def test_rows() -> tuple[list[list[dict]], list[str]]:
    from core.data.formats import detect_shape, read_rows
    from core.data.splits import split_rows
    from core.finetune.batches import prompt_and_answer

    table = read_rows(DATASET)
    shape = detect_shape(table.columns, table.head(20))
    split = split_rows(len(table), seed=0, validation_ratio=0.1, test_ratio=0.2)
    pairs = [prompt_and_answer(row, shape) for row in table.subset(split.test).rows()]
    return [turns for turns, _ in pairs], [answer for _, answer in pairs]


def measure(loaded, runs: int, precision) -> None:
    from core.evaluate import generation, perplexity
    from core.finetune.batches import encode_instruction
    from core.jobs import JobContext

    model, tokenizer = loaded.model, loaded.tokenizer
    prompts, answers = test_rows()
    text = perplexity.bundled_text("heldout")
    with precision():
        for per_pass in (1, 4):  # the Quantize step: 1 window per forward pass; the Evaluate step: 4
            params = perplexity.PerplexityParams(model, tokenizer, text, windows_per_pass=per_pass)
            seconds, result = median_of(lambda p=params: perplexity.run(p, JobContext()), runs)
            print(f"  text perplexity   {result.perplexity:8.2f}  {result.tokens / seconds:7.0f} tokens/s "
                  f"({result.windows} windows of {result.window}, {per_pass} per pass)")  # fmt: skip
        read = sum(len(encode_instruction(tokenizer, t, a)[0]) for t, a in zip(prompts, answers, strict=True))
        seconds, (ppl, scored) = median_of(
            lambda: generation.answer_perplexity(model, tokenizer, prompts, answers, 8, JobContext()), runs
        )
        print(f"  answer perplexity {ppl:8.2f}  {read / seconds:7.0f} tokens/s read, {scored / seconds:5.0f} "
              f"answer tokens/s ({len(prompts)} rows, {read} tokens, {scored} scored, batch 8)")  # fmt: skip
        speeds = {}
        for batch in (1, 8):
            seconds, out = median_of(
                lambda b=batch: generation.generate_batch(
                    model, tokenizer, prompts[:16], 32, b, JobContext()
                ),
                runs,
            )
            speeds[batch] = out.new_tokens / seconds
            print(f"  generation batch {batch}  {speeds[batch]:7.1f} tokens/s ({out.new_tokens} tokens, "
                  "16 prompts, up to 32 each)")  # fmt: skip
        print(f"  batch 8 / batch 1: {speeds[8] / speeds[1]:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch

    from core.evaluate import generation
    from core.finetune.compute import bf16_native
    from core.jobs import JobContext
    from core.models import loading, sources

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = loading.run(loading.LoadParams(sources.DEFAULT_REF, device="cpu"), JobContext())
    native = bf16_native(torch.device("cpu"))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; bf16 native: {native}; median of {args.runs}")  # fmt: skip
    variants = {"fp32": lambda: generation.precision(loaded.model, "off")}
    if native:
        variants["bf16 autocast"] = lambda: generation.precision(loaded.model, "bf16")
    for name, precision in variants.items():
        print(name)
        measure(loaded, args.runs, precision)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
