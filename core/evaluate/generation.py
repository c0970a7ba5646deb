"""The model side of the Evaluate step: batched greedy answers, answer-token perplexity, labels by
likelihood and a trained classifier's labels — each over many examples, with progress and cancel.

Prompts are chat turns, laid out as training laid them out (``core.finetune.batches``): the
tokenizer's chat template with the generation prompt when it has one, else the plain
"### Instruction / ### Response" form. Examples are processed longest first in batches of similar
length (less padding, and the memory peak shows in the first batch), and results come back in the
callers' order.

Generation pads on the left, so every row's next token sits in the last column; transformers
derives positions from the attention mask, so a padded row answers as it would alone (rotary
positions are relative; checked in the tests). Scoring pads on the right and asks the model for
logits only where an answer token is predicted: the LM head over a large vocabulary is a good share
of the work, and prompt positions need none of it.

torch is imported on first use: the window imports core before the worker has paid for torch.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import Cancelled, QuantTuneError
from core.finetune.batches import IGNORE, PLAIN_PROMPT, Example, collate, encode_instruction, pad_id_of
from core.generate import GREEDY_NEUTRAL, soft_prompted
from core.jobs import JobContext


@dataclass
class Generated:
    texts: list[str]  # one answer per prompt, in the prompts' order
    new_tokens: int  # tokens generated, each row up to and including its end of sequence
    seconds: float  # wall time of the whole batched generation
    token_ids: list[list[int]] = field(default_factory=list, repr=False)  # each answer's ids, as counted

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


def precision(model: Any, setting: str = "auto") -> Any:
    """A context for evaluating ``model``: bf16 autocast with "bf16", or with "auto" where the
    hardware multiplies bf16 natively (``core.finetune.compute.autocast_dtype``); else full precision.

    On the 2-core AVX512-BF16 test machine (benchmarks/evaluate_speed.py) it makes scoring 1.4-1.8×
    faster (perplexity of the default model over 512-token windows: 24.92 in fp32, 24.94 under bf16;
    answer perplexity unchanged at two decimals) and batched generation about 1.6× faster; greedy
    answers may differ where two tokens nearly tie. Use the same setting for every variant of a
    comparison. Autocast is per thread: enter it in the thread that runs the model.
    """
    import torch

    from core.finetune.compute import autocast_dtype

    dtype = autocast_dtype(setting, model)
    return contextlib.nullcontext() if dtype is None else torch.autocast(_device(model).type, dtype=dtype)


# -- generation ---------------------------------------------------------------------------------
def generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    ctx: JobContext,
    use_cache: bool = True,
) -> Generated:
    """Greedy answers to ``prompts`` (chat turns), ``batch_size`` at a time; each row stops at its
    end of sequence. Cancel is honoured between two generated tokens. ``use_cache=False``
    recomputes the whole sequence for every token (slower; soft-prompted models always do)."""
    import torch

    encoded = [prompt_ids(tokenizer, turns) for turns in prompts]
    _check_fits(model, encoded, max_new_tokens)
    config = _greedy_config(model, tokenizer, max_new_tokens, use_cache)
    stops = _stop_ids(config.eos_token_id)
    texts, token_ids, done = [""] * len(prompts), [[] for _ in prompts], 0
    started = time.perf_counter()
    with _eval_mode(model), torch.inference_mode():
        for batch in _batches([len(ids) for ids in encoded], batch_size):
            ctx.check_cancelled()
            inputs = _left_padded([encoded[i] for i in batch], pad_id_of(tokenizer), model)
            out = _generate(model, inputs, config, ctx)
            if ctx.cancelled:
                raise Cancelled()
            for row, index in enumerate(batch):
                token_ids[index] = _until_stop(out[row, inputs["input_ids"].shape[1] :].tolist(), stops)
                texts[index] = tokenizer.decode(token_ids[index], skip_special_tokens=True)
            done += len(batch)
            ctx.progress(done, len(prompts), "Generating answers")
    seconds = time.perf_counter() - started
    return Generated(texts, sum(len(ids) for ids in token_ids), seconds, token_ids)


PLAIN_TEXT = "text"  # the role of a prompt that is plain text to continue, as domain text is trained


def prompt_ids(tokenizer: Any, turns: list[dict]) -> list[int]:
    """The token ids the model answers after, laid out as ``batches.encode_instruction`` lays out a
    training prompt. Without a chat template, earlier exchanges (few-shot examples) are written in
    the same plain form, each followed by its answer. A single PLAIN_TEXT turn is plain text, as
    plain-text (domain) training reads it: no template."""
    if len(turns) == 1 and turns[0]["role"] == PLAIN_TEXT:
        return tokenizer(turns[0]["content"], add_special_tokens=True)["input_ids"]
    if getattr(tokenizer, "chat_template", None):
        from jinja2 import TemplateError

        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except (TemplateError, ValueError) as exc:  # a template may demand a system turn, say
            raise QuantTuneError(
                f"The model's chat template failed on an evaluation prompt: {exc}",
                "Evaluate a model whose template accepts user and assistant turns.",
            ) from exc
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text, asked = "", []
    for turn in turns:
        if turn["role"] == "assistant":
            text += PLAIN_PROMPT.format(prompt="\n\n".join(asked)) + turn["content"] + "\n\n"
            asked = []
        else:
            asked.append(turn["content"])
    return tokenizer(text + PLAIN_PROMPT.format(prompt="\n\n".join(asked)), add_special_tokens=True)[
        "input_ids"
    ]


def _generate(model: Any, inputs: dict, config: Any, ctx: JobContext) -> Any:
    if soft_prompted(model):
        return _recomputed(model, inputs, config, ctx)
    return model.generate(**inputs, generation_config=config, stopping_criteria=_cancel_criteria(ctx))


def _recomputed(model: Any, inputs: dict, config: Any, ctx: JobContext) -> Any:
    """Greedy decoding by its definition: each token the argmax of a whole forward pass.

    For peft's soft prompts, whose generate() goes wrong with the key/value cache (peft issues 1391,
    2123) and, for prefix tuning under transformers 5, also without it (after a few tokens it leaves
    a full recomputation; found here). The cost is generate()'s without a cache.
    """
    import torch

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    stops = torch.tensor(sorted(_stop_ids(config.eos_token_id)), dtype=torch.long, device=ids.device)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    # A prefix's keys carry no rotary position, so a query's absolute position matters: count it
    # from the row's first real token, as generate() does (peft adds the prefix length). Prompt and
    # P-tuning take no positions (peft drops them with a warning).
    prefixed = getattr(getattr(model, "active_peft_config", None), "peft_type", None) == "PREFIX_TUNING"
    for _ in range(config.max_new_tokens):
        if ctx.cancelled or finished.all():
            break
        positions = {"position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if prefixed else {}
        with _peft_quirks():
            following = model(input_ids=ids, attention_mask=mask, **positions).logits[:, -1].argmax(-1)
        following = torch.where(finished, config.pad_token_id, following)  # a finished row pads
        ids = torch.cat([ids, following[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        finished |= torch.isin(following, stops)
    return ids


@contextlib.contextmanager
def _peft_quirks() -> Iterator[None]:
    """Silence warnings from peft's soft prompts that name nothing the user or this code can change."""
    with warnings.catch_warnings():
        # prefix tuning hands transformers 5 its prefix as past_key_values, deprecated for cache
        warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
        yield


def _greedy_config(model: Any, tokenizer: Any, max_new_tokens: int, use_cache: bool) -> Any:
    from transformers import GenerationConfig

    # Fields left None are filled from the model's own generation_config, which may hold sampling
    # defaults: set to their neutral values, the answer is truly greedy and transformers warns nothing.
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        use_cache=use_cache,
        eos_token_id=model.generation_config.eos_token_id or tokenizer.eos_token_id,
        pad_token_id=pad_id_of(tokenizer),
        **GREEDY_NEUTRAL,
    )


def _stop_ids(eos: Any) -> set[int]:
    return set(eos) if isinstance(eos, (list, tuple)) else {eos} if eos is not None else set()


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    """A row's generated ids up to and including its first end of sequence (the rest is padding)."""
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    return ids if end is None else ids[: end + 1]


def _left_padded(rows: list[list[int]], pad_id: int, model: Any) -> dict:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    device = _device(model)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _cancel_criteria(ctx: JobContext) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopOnCancel(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), ctx.cancelled, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopOnCancel()])


# -- scoring ------------------------------------------------------------------------------------
def answer_perplexity(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]],
    answers: list[str],
    batch_size: int,
    ctx: JobContext,
) -> tuple[float, int]:
    """Perplexity over the answer tokens only, the prompt being context: exp(Σ NLL / Σ answer tokens),
    and that token count. The answer ends with the template's end of turn, as in training, so this
    is exp of the Train step's validation loss on the same rows. No rows: (nan, 0)."""
    examples = [_answer_example(tokenizer, t, a) for t, a in zip(prompts, answers, strict=True)]
    scores = answer_scores(model, examples, pad_id_of(tokenizer), batch_size, ctx, "Scoring answers")
    nll, count = sum(s for s, _ in scores), sum(c for _, c in scores)
    return (math.exp(nll / count) if count else math.nan), count


def _answer_example(tokenizer: Any, turns: list[dict], answer: str) -> Example:
    """The prompt as context and the answer's tokens to score; plain text continues as trained."""
    if len(turns) == 1 and turns[0]["role"] == PLAIN_TEXT:
        context = prompt_ids(tokenizer, turns)
        rest = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return Example(context + rest + eos, [IGNORE] * len(context) + rest + eos)
    return Example(*encode_instruction(tokenizer, turns, answer))


def classify_by_likelihood(
    model: Any,
    tokenizer: Any,
    prompts: list[list[dict]],
    labels: Sequence[str],
    batch_size: int,
    ctx: JobContext,
) -> list[str]:
    """For a causal LM without a classification head: per prompt, the label most likely to be the
    assistant's whole answer (ties go to the earlier label).

    A label is scored by the SUM of its tokens' log-likelihoods, end of turn included: that is the
    probability of the label being the complete answer, the quantity greedy generation maximises
    over this closed set. The mean per token, the usual fix for length bias among free-form
    continuations, biases the other way here: once a label's first token is chosen its remaining
    tokens are nearly certain (the labels are listed in the prompt), so dividing by the length
    flatters long labels. The end-of-turn token keeps a label that is a prefix of another honest.
    """
    if not labels:
        raise QuantTuneError("There are no labels to choose from.", "Evaluate on rows with a label column.")
    examples = [Example(*encode_instruction(tokenizer, t, label)) for t in prompts for label in labels]
    scores = answer_scores(model, examples, pad_id_of(tokenizer), batch_size, ctx, "Scoring labels")
    n = len(labels)
    return [labels[min(range(n), key=lambda j: scores[i * n + j][0])] for i in range(len(prompts))]


def answer_scores(
    model: Any, examples: list[Example], pad_id: int, batch_size: int, ctx: JobContext, message: str
) -> list[tuple[float, int]]:
    """(summed NLL, token count) over each example's labelled tokens, in the examples' order."""
    import torch

    _check_fits(model, [e.input_ids for e in examples], 0)
    scores: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    done = 0
    with _eval_mode(model), torch.inference_mode():
        for batch in _batches([len(e.input_ids) for e in examples], batch_size):
            ctx.check_cancelled()
            for index, score in zip(
                batch, _batch_nll(model, [examples[i] for i in batch], pad_id), strict=True
            ):
                scores[index] = score
            done += len(batch)
            ctx.progress(done, len(examples), message)
    return scores


def _batch_nll(model: Any, examples: list[Example], pad_id: int) -> list[tuple[float, int]]:
    import torch

    batch = {k: v.to(_device(model)) for k, v in collate(examples, pad_id).items()}
    labels = batch["labels"]
    # position t predicts token t + 1: the targets are the labels moved one to the left
    following = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
    keep = following != IGNORE
    logits = _logits_at(model, batch["input_ids"], batch["attention_mask"], keep)
    nll = torch.nn.functional.cross_entropy(logits.float(), following[keep], reduction="none")
    if not torch.isfinite(nll).all():
        raise QuantTuneError(
            "The model's loss is NaN or infinite on an evaluation example.",
            "The weights are probably broken (e.g. by too aggressive quantization); try more bits.",
        )
    sums = torch.zeros(len(examples), dtype=torch.float64, device=nll.device)
    sums.index_add_(0, keep.nonzero()[:, 0], nll.double())
    return list(zip(sums.tolist(), keep.sum(dim=1).tolist(), strict=True))


def _logits_at(model: Any, ids: Any, mask: Any, keep: Any) -> Any:
    """Logits of the positions in ``keep`` (a [batch, width] bool mask), flattened row by row."""
    if soft_prompted(model):
        # peft adds virtual tokens in front (prompt, P-tuning) or in the cache (prefix): the last
        # ``width`` positions are the real ones either way; logits_to_keep would miss that shift
        with _peft_quirks():
            return model(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :][keep]
    return model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits


# -- a trained classifier -----------------------------------------------------------------------
def classifier_predictions(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int, ctx: JobContext
) -> list[str]:
    """The most likely label of each text by a sequence classifier (``core.finetune.classify``),
    batched by similar length, in the texts' order."""
    from core.finetune import classify

    predicted = [""] * len(texts)
    done = 0
    for batch in _batches([len(text) for text in texts], batch_size):  # characters: near enough
        ctx.check_cancelled()
        chunk = classify.predict(model, tokenizer, [texts[i] for i in batch], batch_size)
        for index, (label, _probability) in zip(batch, chunk, strict=True):
            predicted[index] = label
        done += len(batch)
        ctx.progress(done, len(texts), "Classifying")
    return predicted


# -- shared -------------------------------------------------------------------------------------
def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices, longest first, in chunks of ``batch_size``: similar lengths pad little."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    size = max(1, batch_size)
    return [order[start : start + size] for start in range(0, len(order), size)]


def _check_fits(model: Any, encoded: list[list[int]], max_new_tokens: int) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not limit or not encoded:
        return
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
    if len(encoded[longest]) + max_new_tokens > limit:
        answer = f" plus the answer ({max_new_tokens} tokens)" if max_new_tokens else ""
        raise QuantTuneError(
            f"Example {longest + 1} ({len(encoded[longest])} tokens){answer} exceeds the model's context "
            f"of {limit} tokens.",
            "Lower the answer length, use fewer few-shot examples or retrieved passages, "
            "or drop the longest rows.",
        )


def _device(model: Any) -> Any:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """No dropout while evaluating (the figures are exact); the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
