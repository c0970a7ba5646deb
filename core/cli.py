"""`quanttune <step>`: every step headless, calling the same core job as its pane.

With no arguments the launcher (desktop/launcher.py) opens the window instead; core itself
never imports the desktop.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core.cli_evaluate import add_evaluate_parser
from core.cli_train import add_train_parser
from core.errors import Cancelled, QuantTuneError
from core.jobs import JobContext, JobEvent, run_job

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130


def _stderr_sink(json_events: bool) -> Callable[[JobEvent], None]:
    """Progress goes to stderr so that stdout holds only the result (the card, the report)."""

    def sink(event: JobEvent) -> None:
        if json_events:
            print(json.dumps({"event": event.kind, **event.data}, default=str), file=sys.stderr)
        elif event.kind == "progress" and event.data.get("message"):
            done, total = event.data.get("done", 0), event.data.get("total", 0)
            share = f" {100 * done / total:3.0f}%" if total else ""
            print(f"\r{event.data['message']}{share}", end="", file=sys.stderr, flush=True)
        elif event.kind == "token":
            print(event.data["text"], end="", file=sys.stderr, flush=True)

    return sink


def _run(job: Callable[..., Any], params: Any, args: argparse.Namespace) -> Any:
    ctx = JobContext(_stderr_sink(getattr(args, "json_events", False)))
    try:
        return run_job(job, params, ctx)
    except KeyboardInterrupt:
        ctx.cancel()
        raise Cancelled() from None
    finally:
        print(file=sys.stderr)


def _print_result(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


# -- subcommands -----------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from core.models.sources import list_available

    found = list_available()
    lines = [f"{m.ref.kind:9} {m.ref.name}   {m.detail}" for m in found] or ["No models found."]
    _print_result([m.to_dict() for m in found], args.json, "\n".join(lines))
    return EXIT_OK


def _load(args: argparse.Namespace) -> Any:
    from core.models import loading, sources

    params = loading.LoadParams(
        model=sources.resolve(args.model),
        device=args.device,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    return _run(loading.run, params, args)


def cmd_load(args: argparse.Namespace) -> int:
    from core.learn import format_bytes, format_count

    card = _load(args).card
    text = "\n".join(
        [
            f"{card.name}  ({card.architecture})",
            f"parameters {format_count(card.parameters)}, layers {card.layers}, hidden {card.hidden_size},"
            f" vocabulary {card.vocab_size}, dtype {card.dtype}, on {card.device}",
            f"size on disk {format_bytes(card.size_on_disk_bytes)}",
            "memory: " + ", ".join(f"{k} {format_bytes(v)}" for k, v in card.memory_bytes.items()),
        ]
    )
    _print_result(card.to_dict(), args.json, text)
    return EXIT_OK


def cmd_ask(args: argparse.Namespace) -> int:
    from core import generate

    loaded = _load(args)
    params = generate.GenerateParams(
        loaded=loaded, prompt=args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature
    )
    answer = _run(generate.run, params, args)
    _print_result({"prompt": args.prompt, "answer": answer}, args.json, answer)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from core.models import loading, sources
    from core.weights import inspect
    from core.weights.recommend import Criteria

    ref = sources.resolve(args.model)
    setup = JobContext(_stderr_sink(args.json_events))
    params = inspect.InspectParams(
        source=str(loading.weights_path(ref, setup)),
        bits=args.bits,
        group_size=args.group_size,
        criteria=Criteria(args.max_abs_skew, args.max_mean_over_std, args.asym_margin_db),
        measure=not args.no_measure,
    )
    report = _run(inspect.run, params, args)
    if args.csv:
        report.write_csv(args.csv, args.k)
    lines = [
        f"{t.stats.name:48} skew {t.stats.skew:8.3f}  kurt {t.stats.kurtosis:9.3f}  {t.recommendation.label}"
        for t in report.tensors
    ]
    lines.append(f"\n{report.summary()}  ({report.parameters:,} parameters in {report.seconds:.1f} s)")
    _print_result(report.to_dict(), args.json, "\n".join(lines))
    return EXIT_OK


def cmd_quantize(args: argparse.Namespace) -> int:
    from core.evaluate.perplexity import read_text_file
    from core.quant import job

    loaded = _load(args)
    params = job.QuantizeParams(
        loaded=loaded,
        precision=args.precision,
        symmetric=args.scheme == "sym",
        granularity=args.granularity,
        group_size=args.group_size,
        method=args.method,
        observer=args.observer,
        percentile=args.percentile,
        include_head=args.include_head,
        include_embeddings=args.include_embeddings,
        keep_layers=tuple(args.keep or ()),
        calibration_text=read_text_file(args.calibration) if args.calibration else "",
        calibration_samples=args.samples,
        calibration_seq_len=args.seq_len,
        eval_text=read_text_file(args.eval_text) if args.eval_text else "",
        measure_perplexity=not args.no_perplexity,
        output=str(args.output) if args.output else "",
        budget_mb=args.budget_mb,
        activations=args.w8a8,
        activation_observer=args.activation_observer,
        smoothquant=args.smoothquant,
    )
    report = _run(job.run, params, args)
    _print_result(report.to_dict(), args.json, _quantize_summary(report))
    return EXIT_OK


def cmd_stages(args: argparse.Namespace) -> int:
    from core.quant import multistage

    try:
        stages = tuple(int(b) for b in args.stages.split(","))
    except ValueError:
        raise QuantTuneError(
            f"--stages {args.stages!r} is not a list of bit widths.", "Write them like 16,8 or 16,8,4."
        ) from None
    loaded = _load(args)
    params = multistage.MultistageParams(
        loaded, stages, args.scheme == "sym", args.granularity, args.group_size
    )
    report = _run(multistage.run, params, args)
    data = {"stages": list(report.stages), "scheme": report.scheme, "summary": asdict(report.summary),
            "layers": [asdict(row) for row in report.layers]}  # fmt: skip
    s = report.summary
    lines = [f"{' -> '.join(f'INT{b}' for b in stages)} ({report.scheme}), {len(report.layers)} layers"]
    previous = "FP32"
    for bits, db in zip(stages, s.stage_sqnr_db, strict=True):
        lines.append(f"  {previous} -> INT{bits}: SQNR {db:.2f} dB")
        previous = f"INT{bits}"
    lines.append(f"  in total {s.total_sqnr_db:.2f} dB; directly {s.direct_sqnr_db:.2f} dB")
    lines.append(f"  the detour costs {s.detour_cost_db:.4f} dB; {s.codes_changed:.2%} of codes change")
    _print_result(data, args.json, "\n".join(lines))
    return EXIT_OK


def _quantize_summary(report) -> str:
    from core.learn import format_bytes

    lines = [f"{report.settings['scheme']} by {report.settings['method'].upper()} in {report.seconds:.1f} s"]
    lines.append(f"size {format_bytes(report.size_before_bytes)} -> {format_bytes(report.size_after_bytes)} "
                 f"({report.bits_per_weight:.2f} bits per weight)")  # fmt: skip
    if report.perplexity_before is not None:
        lines.append(f"perplexity {report.perplexity_before:.2f} -> {report.perplexity_after:.2f}")
    worst = sorted(report.layers, key=lambda layer: layer.sqnr_db)[:3]
    lines += [f"  lowest SQNR: {layer.name} {layer.sqnr_db:.1f} dB" for layer in worst]
    if report.output:
        lines.append(f"saved to {report.output}")
    return "\n".join(lines)


# -- parser ----------------------------------------------------------------------------------
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        help="'default' (bundled SmolLM2-135M-Instruct), a model folder, a .gguf file, "
        "or a repo id already in the local Hugging Face cache",
    )
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow .bin/.pt weights (read with torch.load(weights_only=True)); refused by default",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python code shipped in the model folder; refused by default, only for models you trust",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--json-events", action="store_true", help="print progress events as JSON lines on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quanttune",
        description="Quantize and fine-tune language models on your own machine. "
        "With no command, opens the QuantTune window.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("models", help="list the models that can be loaded (bundled, local HF cache)")
    _common(p)
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("load", help="load a model and print its card")
    _add_model_args(p)
    _common(p)
    p.set_defaults(func=cmd_load)
    p = sub.add_parser("ask", help="load a model and generate an answer to a prompt")
    _add_model_args(p)
    p.add_argument("prompt", help="the question or instruction")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (deterministic)")
    _common(p)
    p.set_defaults(func=cmd_ask)
    _add_inspect_parser(sub)
    _add_quantize_parser(sub)
    _add_stages_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    return parser


def _add_stages_parser(sub) -> None:
    p = sub.add_parser(
        "stages",
        help="the multi-stage path FP32 -> INT16 -> INT8: the error each stage adds, against one step",
        description="Quantizes every linear layer's weight through the stages (nothing is saved) and "
        "reports each stage's SQNR, the total, and going to the last precision directly.",
    )
    _add_model_args(p)
    p.add_argument("--stages", default="16,8", help="decreasing bit widths, e.g. 16,8 or 16,8,4")
    p.add_argument("--scheme", default="sym", choices=("sym", "asym"))
    p.add_argument("--granularity", default="channel", choices=("tensor", "channel", "group"))
    p.add_argument("--group-size", type=int, default=64)
    _common(p)
    p.set_defaults(func=cmd_stages)


def _add_quantize_parser(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="post-training quantization with a report (per-layer error, size, perplexity)",
        description="Quantizes every linear layer but the LM head (weight-only), measures perplexity before "
        "and after on held-out text, and optionally saves a folder that reloads exactly.",
    )
    _add_model_args(p)
    p.add_argument(
        "--precision",
        default="int4",
        choices=("int8", "int4", "int3", "int2", "fp16", "bf16", "nf4", "fp4"),
        help="nf4 and fp4 need --method bitsandbytes (so does LLM.int8(): int8 with --method bitsandbytes)",
    )
    p.add_argument(
        "--scheme",
        default="asym",
        choices=("sym", "asym"),
        help="sym: Z = 0, S = max|x|/(2^(b-1)-1); asym: S = (max-min)/(2^b-1), Z = round(-min/S)",
    )
    p.add_argument("--granularity", default="group", choices=("tensor", "channel", "group"))
    p.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128, 256))
    p.add_argument(
        "--method",
        default="rtn",
        choices=("rtn", "gptq", "awq", "bitsandbytes"),
        help="rtn: round to nearest; gptq: Hessian-based error compensation on calibration data; awq: "
        "activation-aware channel scaling, then rtn; bitsandbytes: the library's NF4/FP4/LLM.int8() layers",
    )
    p.add_argument(
        "--observer",
        default="minmax",
        choices=("minmax", "percentile", "mse"),
        help="how each block's range is chosen",
    )
    p.add_argument("--percentile", type=float, default=99.99, help="for --observer percentile")
    p.add_argument("--include-head", action="store_true", help="quantize the LM head too")
    p.add_argument(
        "--include-embeddings", action="store_true", help="quantize the token embeddings too (RTN, per row)"
    )
    p.add_argument(
        "--w8a8", action="store_true", help="quantize the layers' inputs too (INT8), static ranges"
    )
    p.add_argument(
        "--activation-observer",
        default="minmax",
        choices=("minmax", "moving_average", "percentile", "mse", "entropy"),
        help="how the activations' ranges are chosen (with --w8a8)",
    )
    p.add_argument("--smoothquant", action="store_true", help="SmoothQuant before W8A8 (with --w8a8)")
    p.add_argument(
        "--budget-mb",
        type=float,
        default=0.0,
        metavar="MB",
        help="choose bits per layer from measured sensitivity so the model fits MB (mixed precision)",
    )
    p.add_argument(
        "--keep",
        action="append",
        metavar="NAME",
        help="keep layers whose name contains NAME in FP32 (repeatable), e.g. --keep down_proj",
    )
    p.add_argument("--calibration", type=Path, help="calibration text or JSONL (default: the bundled text)")
    p.add_argument("--samples", type=int, default=21, help="calibration windows (GPTQ)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    p.add_argument("--eval-text", type=Path, help="held-out text for perplexity (default: the bundled one)")
    p.add_argument("--no-perplexity", action="store_true", help="skip the perplexity measurements")
    p.add_argument("--output", type=Path, help="save the quantized model and report.json into this folder")
    _common(p)
    p.set_defaults(func=cmd_quantize)


def _add_inspect_parser(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="statistics of every weight tensor and the recommended quantization scheme",
        description="Streams the checkpoint tensor by tensor (memory stays near the largest tensor) and "
        "reports mean, std, skewness, excess kurtosis, outliers and the recommended scheme of each.",
    )
    p.add_argument("model", help="'default', a model folder, a .gguf file, or a cached repo id")
    p.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 8), help="bit width to measure at")
    p.add_argument("--group-size", type=int, default=64, help="weights per group for group-wise schemes")
    p.add_argument("--no-measure", action="store_true", help="statistics only, skip the error measurement")
    p.add_argument("--max-abs-skew", type=float, default=0.5, help="rule: symmetric if |skewness| <= this …")
    p.add_argument("--max-mean-over-std", type=float, default=0.1, help="… and |mean|/std <= this")
    p.add_argument(
        "--asym-margin-db",
        type=float,
        default=1.5,
        help="SQNR an asymmetric scheme must gain over symmetric to be chosen",
    )
    p.add_argument("--k", type=float, default=3.0, help="outlier threshold in std for the CSV column")
    p.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    _common(p)
    p.set_defaults(func=cmd_inspect)


def main(argv: Sequence[str] | None = None, gui: Callable[[], int] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and gui is not None:
        return gui()
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return EXIT_OK
    try:
        return args.func(args)
    except Cancelled:
        print("Cancelled.", file=sys.stderr)
        return EXIT_CANCELLED
    except QuantTuneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.fix:
            print(f"fix: {exc.fix}", file=sys.stderr)
        return EXIT_ERROR
