"""LoRA training speed on the default model: QuantTune's Train job against a plain transformers
Trainer + peft script, on the same data with the same settings, in one run.

Both see the same examples in the same order: the Trainer gets the job's own tokenised rows (prompt
tokens masked), in the job's epoch order, with sequential sampling. Settings: LoRA rank 8 (alpha 16,
dropout 0.05, every linear layer), batch 4, maximum length 256, learning rate 2e-4 with linear
decay, AdamW, clipping at 1.0, seed 0, FP32 weights. Throughput counts real (non-padding) tokens
from the end of step 1 to the end of the last step: step 1 warms up kernels and allocations.
The job's variants: padded like the Trainer, packed (``TrainParams.pack``), and packed with bf16
autocast; the Trainer's: FP32, and bf16 (its own CPU autocast). The time estimate before Start
(core.finetune.estimate.time_estimate) is compared with each job variant's measured run.

    QUANTTUNE_HOME=/tmp/qthome python benchmarks/train_speed.py --steps 12 --repeat 3 --threads 1

One thread by default: on a machine whose cores other processes share, two OpenMP threads spin-wait
on each other and collapse (measured here: 8 tokens/s with two threads under load, 58 with one).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import tempfile
import time
import warnings
from pathlib import Path

DATASET = Path(__file__).parents[1] / "resources/datasets/instructions-units.jsonl"
SETTINGS = dict(batch_size=4, max_length=256, learning_rate=2e-4, seed=0, rank=8, alpha=16, dropout=0.05)
JOB_VARIANTS = {
    "job fp32": (False, "off"),
    "job fp32 packed": (True, "off"),
    "job bf16 packed": (True, "bf16"),
}
TRAINER_VARIANTS = {"trainer fp32": False, "trainer bf16": True}


def job_params(loaded, output: Path, steps: int, pack: bool, autocast: str):
    from core.finetune import train
    from core.finetune.methods import MethodSettings

    s = SETTINGS
    method = MethodSettings(rank=s["rank"], alpha=s["alpha"], dropout=s["dropout"])
    return train.TrainParams(loaded=loaded, dataset=DATASET, output=output, method=method,
                             max_length=s["max_length"], validation_ratio=0.0, test_ratio=0.0, seed=s["seed"],
                             batch_size=s["batch_size"], learning_rate=s["learning_rate"], max_steps=steps,
                             pack=pack, autocast=autocast)  # fmt: skip


def job_examples(params):
    """The job's training examples and their order over the run (the same functions the job uses)."""
    from core.data.formats import detect_shape, read_rows
    from core.finetune import rundata
    from core.finetune.batches import encode_table

    table = read_rows(params.dataset)
    shape = detect_shape(table.columns, table.head(20))
    split = rundata.data_split(params, table, shape, set())
    examples = encode_table(table.subset(split.train), shape, params.loaded.tokenizer, "instruction",
                            params.max_length).examples  # fmt: skip
    per_epoch = -(-len(examples) // params.batch_size)
    epochs = -(-params.max_steps // per_epoch)
    order = [i for e in range(epochs) for i in rundata.epoch_order(len(examples), params.seed, e)]
    return examples, order


def run_job(loaded, steps: int, pack: bool, autocast: str) -> dict:
    import torch

    from core.finetune import rundata, train
    from core.jobs import JobContext

    ends, losses = {}, {}

    def sink(event):
        if event.kind == "progress" and event.data.get("total"):
            ends[event.data["done"]] = time.perf_counter()
        elif event.kind == "metric" and event.data["name"] == "loss":
            losses[event.data["step"]] = event.data["value"]

    with tempfile.TemporaryDirectory() as tmp:
        params = job_params(loaded, Path(tmp) / "run", steps, pack, autocast)
        torch.manual_seed(0)  # the LoRA initialisation, as in the Trainer script
        report = train.run(params, JobContext(sink))
        fingerprint = rundata.data_fingerprint(job_examples(params)[0])
    assert report.steps == steps
    return {"ends": ends, "losses": [losses[k] for k in sorted(losses)], "fingerprint": fingerprint}


class _Clock:
    """A TrainerCallback (built lazily: transformers is imported on first use) timing each step."""

    @staticmethod
    def make():
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.ends, self.losses = {}, {}

            def on_step_end(self, args, state, control, **kwargs):
                self.ends[state.global_step] = time.perf_counter()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.losses[state.global_step] = logs["loss"]

        return Clock()


def run_trainer(loaded, steps: int, bf16: bool) -> dict:
    """The plain script: peft's LoRA on a copy, transformers' Trainer, the job's rows in its order."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainingArguments

    from core.finetune.methods import LINEAR_TARGETS

    with tempfile.TemporaryDirectory() as tmp:
        examples, order = job_examples(job_params(loaded, Path(tmp), steps, False, "off"))
        rows = [{"input_ids": examples[i].input_ids, "labels": examples[i].labels} for i in order]
        s = SETTINGS
        torch.manual_seed(0)
        config = LoraConfig(r=s["rank"], lora_alpha=s["alpha"], lora_dropout=s["dropout"],
                            target_modules=list(LINEAR_TARGETS), task_type="CAUSAL_LM")  # fmt: skip
        model = get_peft_model(copy.deepcopy(loaded.model), config)
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=s["batch_size"], max_steps=steps,
                                 learning_rate=s["learning_rate"], lr_scheduler_type="linear", warmup_steps=0,
                                 weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", seed=s["seed"],
                                 train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
                                 eval_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
                                 dataloader_num_workers=0, bf16=bf16)  # fmt: skip
        tokenizer = copy.copy(loaded.tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        clock = _Clock.make()
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        trainer = Trainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                          data_collator=collator, callbacks=[clock])  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # its log lines would interleave with the table
        with warnings.catch_warnings():  # transformers' own deprecation inside Trainer
            warnings.simplefilter("ignore", FutureWarning)
            trainer.train()
    return {"ends": clock.ends, "losses": [clock.losses[k] for k in sorted(clock.losses)]}


def throughput(result: dict, tokens: list[int]) -> float:
    """Real tokens per second from the end of step 1 to the end of the last step."""
    last = max(result["ends"])
    return sum(tokens[1:last]) / (result["ends"][last] - result["ends"][1])


def step_tokens(loaded, steps: int) -> list[int]:
    with tempfile.TemporaryDirectory() as tmp:
        examples, order = job_examples(job_params(loaded, Path(tmp), steps, False, "off"))
    b = SETTINGS["batch_size"]
    return [sum(len(examples[i].input_ids) for i in order[k * b : (k + 1) * b]) for k in range(steps)]


def estimate_now(loaded, steps: int, name: str) -> tuple[float, float, float]:
    """The time estimate before Start, made afresh (a new probe): (seconds, tokens/s, what it took)."""
    from core.finetune import estimate

    estimate._SPEEDS.clear()  # a probe now, in the conditions of the run that follows
    pack, autocast = JOB_VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        e = estimate.time_estimate(job_params(loaded, Path(tmp) / "run", steps, pack, autocast))
    return e.train_seconds, e.tokens_per_second, time.perf_counter() - started


def print_losses(losses: dict[str, list[float]]) -> None:
    names = list(losses)
    print("\n| step | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for k in range(max(len(v) for v in losses.values())):
        cells = [f"{losses[n][k]:.4f}" if k < len(losses[n]) else "" for n in names]
        print(f"| {k + 1} | " + " | ".join(cells) + " |")
    base = losses[names[0]]
    for n in names[1:]:
        diff = max(abs(a - b) for a, b in zip(base, losses[n], strict=False))
        print(f"largest difference {names[0]} vs {n}: {diff:.4f}")
    for n in names:
        v = losses[n]
        third = max(1, len(v) // 3)
        first, last = statistics.mean(v[:third]), statistics.mean(v[-third:])
        print(f"{n}: mean loss over the first third {first:.3f}, over the last third {last:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant; medians are reported")
    parser.add_argument("--variants", default=",".join([*JOB_VARIANTS, *TRAINER_VARIANTS]))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from core.jobs import JobContext
    from core.models import loading, sources

    variants = args.variants.split(",")
    loaded = loading.run(loading.LoadParams(sources.DEFAULT_REF, device="cpu"), JobContext())
    tokens = step_tokens(loaded, args.steps)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.steps} steps of batch 4, "
          f"{sum(tokens)} real tokens, {statistics.mean(tokens) / 4:.1f} per example")  # fmt: skip
    speeds: dict[str, list[float]] = {v: [] for v in variants}
    predicted: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants if v in JOB_VARIANTS}
    losses, seconds, fingerprints = {}, {v: [] for v in variants}, set()
    for r in range(args.repeat):  # interleaved, so that a busy spell of the shared cores hits all variants
        for name in variants:
            if name in JOB_VARIANTS:
                predicted[name].append(estimate_now(loaded, args.steps, name))
                result = run_job(loaded, args.steps, *JOB_VARIANTS[name])
                fingerprints.add(result["fingerprint"])
            else:
                result = run_trainer(loaded, args.steps, TRAINER_VARIANTS[name])
            speeds[name].append(throughput(result, tokens))
            seconds[name].append(result["ends"][args.steps] - result["ends"][1])
            losses.setdefault(name, result["losses"])
            print(f"  run {r + 1} {name}: {speeds[name][-1]:.1f} tokens/s", flush=True)
            gc.collect()
    report(speeds, seconds, predicted, tokens, args.steps)
    print_losses(losses)
    print(f"the job trained on {len(fingerprints)} distinct example set(s): the Trainer got the same rows")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def report(speeds, seconds, predicted, tokens, steps) -> None:
    print("\n| variant | tokens/s (median) | runs | vs trainer fp32 | vs trainer bf16 |")
    print("|---|---|---|---|---|")
    median = {n: statistics.median(v) for n, v in speeds.items()}
    for name, value in median.items():
        runs = ", ".join(f"{v:.0f}" for v in speeds[name])
        ratios = [f"{value / median[t]:.2f}×" if t in median else "" for t in TRAINER_VARIANTS]
        print(f"| {name} | {value:.1f} | {runs} | " + " | ".join(ratios) + " |")
    if predicted:
        print("\n| variant | estimated s | measured s | estimated / measured (each run) | tokens/s estimated "
              "| making the estimate took |")  # fmt: skip
        print("|---|---|---|---|---|---|")
    share = sum(tokens[1:]) / sum(tokens)  # an estimate covers every step, the measure steps 2..N
    for name, found in predicted.items():
        estimated = [e[0] * share for e in found]
        ratios = ", ".join(f"{e / m:.2f}" for e, m in zip(estimated, seconds[name], strict=True))
        rate, took = statistics.median(e[1] for e in found), statistics.median(e[2] for e in found)
        median = statistics.median(estimated), statistics.median(seconds[name])
        print(f"| {name} | {median[0]:.1f} | {median[1]:.1f} | {ratios} | {rate:.0f} | {took:.1f} s |")


if __name__ == "__main__":
    main()
