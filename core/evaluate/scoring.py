"""Score one opened variant on the test data: its prompts, its outputs, the task's metrics, its costs.

Every variant answers the same test rows. Models are asked the rows' own prompts (the controlled
comparison); the baselines ask the base model with the task's instruction (zero-shot), with
training rows as worked examples (few-shot), or with the training rows most like the question
retrieved by BM25 (RAG). A model with no classification head classifies by likelihood: the label
it finds most probable as its answer, so a small model is not marked wrong for wording alone.
"""

from __future__ import annotations

import time
from typing import Any

from core.evaluate import metrics as m
from core.evaluate.results import VariantResult
from core.evaluate.testdata import TestData
from core.evaluate.variants import Opened, VariantInfo, weights_bytes


def prompts_for(info: VariantInfo, data: TestData, settings: Any, seed: int = 0) -> list[list[dict]]:
    """The chat turns ``info`` is asked, one per test example."""
    from core.evaluate import prompting

    task, labels = data.task, data.labels
    if info.kind == "few-shot":
        shots = prompting.choose_shots(data.train_items, settings.few_shot, seed, labels)
        return [prompting.few_shot(turns, shots, task, labels) for turns in data.turns]
    if info.kind == "rag":
        documents = [prompting.document_of(turns, answer) for turns, answer in data.train_items]
        retriever = prompting.Retriever(documents)
        found = retriever.top_many([turns[-1]["content"] for turns in data.turns], settings.rag_top_k)
        return [prompting.rag(turns, [documents[i] for i, _score in hits], task, labels)
                for turns, hits in zip(data.turns, found, strict=True)]  # fmt: skip
    if info.kind == "zero-shot" or task == "classification":  # a causal LM needs the labels named
        return [prompting.zero_shot(turns, task, labels) for turns in data.turns]
    return data.turns


def score(info: VariantInfo, opened: Opened, data: TestData, settings: Any, ctx: Any) -> VariantResult:
    """Outputs, metric scores and costs of one variant (the caller catches its errors)."""
    started = time.monotonic()
    result = VariantResult(info.id, info.label, info.kind, notes=list(opened.notes))
    result.size_bytes, result.peak_memory_bytes = opened.size_bytes, weights_bytes(opened.model)
    prompts = prompts_for(info, data, settings)
    references = [e.reference for e in data.examples]
    if data.task == "classification":
        outputs, speed = _classify(opened, data, prompts, settings, ctx)
    else:
        outputs, speed = _generate(opened, prompts, settings, ctx)
    scores, per_example, unavailable, extras = m.score_outputs(data.task, references, outputs, data.labels)
    if "perplexity" in m.TASK_METRICS[metric_task(data.task)] and opened.model is not None:
        from core.evaluate.generation import answer_perplexity

        ctx.stage(f"{info.label}: perplexity of the reference answers")
        scores["perplexity"], _tokens = answer_perplexity(
            opened.model, opened.tokenizer, prompts, references, settings.batch_size, ctx
        )
    result.scores, result.example_scores, result.outputs = scores, per_example, outputs
    result.confusion = extras.get("confusion", [])
    result.notes.extend(f"{key}: {why}" for key, why in unavailable.items())
    result.notes.extend(_leak_note(opened, data))
    result.tokens_per_second, result.seconds = speed, time.monotonic() - started
    return result


TEXT_WINDOW, TEXT_TOKENS = 512, 4096  # as the Quantize step measures, so the figures compare
TEXT_WINDOWS_PER_PASS = 4
# Every variant is scored under the same compute: bf16 autocast where the processor multiplies bf16
# natively (1.6-2x faster on a CPU with AVX512-BF16; perplexity moves by about 0.1 %, a greedy answer
# may change where two words nearly tie), else FP32. Recorded in the evaluation's settings.
AUTOCAST = "auto"


def text_perplexity(opened: Opened, text: str, ctx: Any) -> float:
    """Perplexity of the model over a held-out text in fixed windows (core.evaluate.perplexity)."""
    from core.evaluate import perplexity

    context = getattr(getattr(opened.model, "config", None), "max_position_embeddings", TEXT_WINDOW)
    window = min(TEXT_WINDOW, context or TEXT_WINDOW)
    params = perplexity.PerplexityParams(opened.model, opened.tokenizer, text, window, TEXT_TOKENS,
                                         TEXT_WINDOWS_PER_PASS, AUTOCAST)  # fmt: skip
    return perplexity.run(params, ctx).perplexity


def metric_task(task: str) -> str:
    """The metrics' name of a project task (plain text is "text" there)."""
    return "text" if task == "causal_lm" else task


def _generate(opened: Opened, prompts: list[list[dict]], settings: Any, ctx: Any) -> tuple[list[str], float]:
    from core.evaluate.generation import generate_batch

    generated = generate_batch(
        opened.model, opened.tokenizer, prompts, settings.max_new_tokens, settings.batch_size, ctx
    )
    return [text.strip() for text in generated.texts], generated.tokens_per_second


def _classify(
    opened: Opened, data: TestData, prompts: list, settings: Any, ctx: Any
) -> tuple[list[str], float]:
    """Predicted labels and the tokens read per second (classification generates nothing)."""
    from core.evaluate import generation
    from core.finetune import classify

    started = time.monotonic()
    if classify.is_classifier(opened.model):
        texts = [e.prompt for e in data.examples]
        outputs = generation.classifier_predictions(
            opened.model, opened.tokenizer, texts, settings.batch_size, ctx
        )
        read = sum(len(opened.tokenizer(t)["input_ids"]) for t in texts)
    else:
        outputs = generation.classify_by_likelihood(
            opened.model, opened.tokenizer, prompts, data.labels, settings.batch_size, ctx
        )
        read = sum(len(opened.tokenizer(t[-1]["content"])["input_ids"]) for t in prompts) * len(data.labels)
    return outputs, read / max(1e-9, time.monotonic() - started)


def _leak_note(opened: Opened, data: TestData) -> list[str]:
    if not opened.trained_rows:
        return []
    seen = sum(1 for e in data.examples if e.row in opened.trained_rows)
    if not seen:
        return []
    return [
        f"It trained on {seen} of these {len(data.examples)} test rows (its split differs): they flatter it."
    ]
