"""What a training run will cost, as the Fine-tuning method and Train steps show it: the trainable
parameters, the peak memory with "fits / does not fit" and what to change, the time, and after a
QAT run its perplexity against plain quantization. Also the plan job both steps run."""

from __future__ import annotations

from typing import Any

from desktop.formatting import format_bytes, format_seconds


def plan_job(params: Any, ctx) -> Any:
    from core.finetune import plan

    return plan.run(params, ctx)


def counts_html(trainable: Any) -> str:
    return (f"Trains <b>{trainable.trainable:,}</b> of {trainable.total:,} parameters "
            f"(<b>{100 * trainable.share:.3g} %</b>) of the loaded model.")  # fmt: skip


def time_html(plan: Any) -> str:
    t = plan.time
    if t is None:
        return ""
    return (
        f"Time about <b>{format_seconds(t.seconds)}</b> for {t.steps} steps (about "
        f"{t.tokens_per_second:.0f} tokens per second on this machine, measured just now)."
    )


def estimate_html(plan: Any) -> str:
    e = plan.estimate
    parts = (f"weights {format_bytes(e.weights)}, gradients {format_bytes(e.gradients)}, "
             f"optimizer {format_bytes(e.optimizer)}, activations {format_bytes(e.activations)}")  # fmt: skip
    text = f"Peak memory about <b>{format_bytes(e.peak)}</b> ({parts})"
    if e.fits is None:
        return text + "; the free memory of this device is unknown."
    free = f" of {format_bytes(e.available)} free"
    if e.fits:
        return text + free + ": <b style='color:#1e8449'>fits</b>."
    advice = "; ".join(e.advice)
    return text + free + f": <b style='color:#c0392b'>does not fit</b>. Try {advice}."


def qat_text(qat: dict | None) -> str:
    if not qat:
        return ""
    return (
        f"<br><b>{qat['scheme']}</b> with the learned scales: perplexity <b>{qat['qat']:.2f}</b>, "
        f"against {qat['ptq']:.2f} for plain quantization (RTN) of the base and {qat['base']:.2f} "
        "unquantized. The integer model is saved in the run's quantized/ folder and loads like any model."
    )


def plan_html(plan: Any) -> str:
    return counts_html(plan.trainable) + "<br>" + estimate_html(plan) + "<br>" + time_html(plan)
