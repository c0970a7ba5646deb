"""Evaluate's model side on the tiny model: batched greedy answers equal one-at-a-time answers,
answer-token perplexity and labels by likelihood equal hand computations, cancel stops."""

import copy
import math

import pytest
import torch

from core.errors import Cancelled, QuantTuneError
from core.evaluate import generation
from core.finetune.batches import IGNORE, PLAIN_PROMPT, encode_instruction
from core.jobs import JobContext

QUESTIONS = [
    "Paris?",
    "What is the capital of France? Tell me, please, in one short sentence.",
    "Quantization maps weights to a small grid.",
    "Café and jalapeño?",
    "The capital of Italy is Rome. What is the capital of France? Is it Paris?",
]
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]
# One thread: on 2 shared cores, two OpenMP threads spin-wait on each other over these tiny matrices
# (seconds instead of milliseconds per test); the answers are the same either way.
pytestmark = pytest.mark.usefixtures("single_thread")
ANSWERS = ["Paris.", "The capital of France is Paris.", "Yes", "naïve", "Paris is the answer."]


def alone(model, tokenizer, turns, max_new_tokens):
    """One prompt, no padding: transformers' own greedy decoding."""
    ids = torch.tensor([generation.prompt_ids(tokenizer, turns)])
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def test_a_batch_answers_exactly_as_each_prompt_alone(tiny_loaded):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    events = []
    result = generation.generate_batch(model, tokenizer, PROMPTS, 12, 2, JobContext(events.append))
    expected = [alone(model, tokenizer, turns, 12) for turns in PROMPTS]
    assert len({len(generation.prompt_ids(tokenizer, t)) for t in PROMPTS}) == 5  # all lengths differ
    assert result.token_ids == expected  # left padding changed no token of any row
    assert result.texts == [tokenizer.decode(ids, skip_special_tokens=True) for ids in expected]
    assert result.new_tokens == 5 * 12 and result.seconds > 0
    assert result.tokens_per_second == pytest.approx(60 / result.seconds)
    progress = [(e.data["done"], e.data["total"]) for e in events if e.kind == "progress"]
    assert progress == [(2, 5), (4, 5), (5, 5)]


def test_each_row_stops_at_its_end_of_sequence(tiny_loaded):
    model, tokenizer = copy.deepcopy(tiny_loaded.model), tiny_loaded.tokenizer
    expected = [alone(model, tokenizer, turns, 10) for turns in PROMPTS]
    stop = expected[0][3]  # a token the random model does produce: call it the end of sequence
    model.generation_config.eos_token_id = stop
    result = generation.generate_batch(model, tokenizer, PROMPTS, 10, 5, JobContext())
    cut = [ids[: ids.index(stop) + 1] if stop in ids else ids for ids in expected]
    assert result.token_ids == cut and len(cut[0]) <= 4 and any(len(ids) == 10 for ids in cut)
    assert result.new_tokens == sum(len(ids) for ids in cut)


def test_cancel_between_batches_and_within_one(tiny_loaded):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    ctx, seen = JobContext(), []

    def cancel_after_first_batch(event):
        seen.append(event)
        ctx.cancel()

    ctx = JobContext(cancel_after_first_batch)
    with pytest.raises(Cancelled):
        generation.generate_batch(model, tokenizer, PROMPTS, 4, 2, ctx)
    assert [e.data["done"] for e in seen] == [2]

    class CancelOnThirdLook(JobContext):
        looks = 0

        @property
        def cancelled(self):
            self.looks += 1
            if self.looks == 3:  # the third generated token
                self.cancel()
            return super().cancelled

    ctx = CancelOnThirdLook()
    with pytest.raises(Cancelled):
        generation.generate_batch(model, tokenizer, PROMPTS, 200, 5, ctx)
    assert ctx.looks < 6  # stopped inside the one batch of 200 steps


def test_prompt_layout_is_the_training_layout(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    turns = PROMPTS[1]
    ids, labels = encode_instruction(tokenizer, turns, "Paris.")
    prompt = [t for t, label in zip(ids, labels, strict=True) if label == IGNORE]
    assert generation.prompt_ids(tokenizer, turns) == prompt
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        ids, labels = encode_instruction(tokenizer, turns, "Paris.")
        assert generation.prompt_ids(tokenizer, turns) == [t for t, lab in zip(ids, labels, strict=True)
                                                           if lab == IGNORE]  # fmt: skip
        shot = [{"role": "user", "content": "Italy?"}, {"role": "assistant", "content": "Rome."}]
        text = tokenizer.decode(generation.prompt_ids(tokenizer, shot + turns), skip_special_tokens=True)
        assert text == PLAIN_PROMPT.format(prompt="Italy?") + "Rome.\n\n" + PLAIN_PROMPT.format(
            prompt=QUESTIONS[1]
        )
    finally:
        tokenizer.chat_template = saved


def test_a_prompt_longer_than_the_context_is_named(tiny_loaded):
    long = [{"role": "user", "content": "Paris " * 300}]
    with pytest.raises(QuantTuneError, match="Example 2") as info:
        generation.generate_batch(
            tiny_loaded.model, tiny_loaded.tokenizer, [PROMPTS[0], long], 8, 2, JobContext()
        )
    assert "answer length" in info.value.fix


def soft_prompted_copy(loaded, kind="prompt"):
    from core.finetune import methods

    torch.manual_seed(0)
    model = methods.apply(copy.deepcopy(loaded.model), methods.MethodSettings(method=kind, virtual_tokens=4))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(40.0)  # a soft prompt far from any word: it steers every token
    return model.eval()


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_a_soft_prompted_model_answers_as_a_full_recomputation_does(tiny_loaded, kind):
    """peft's generate() with soft prompts leaves greedy decoding after a few tokens (with the
    key/value cache for all of them, and without it too for prefix tuning under transformers 5)."""
    model, tokenizer = soft_prompted_copy(tiny_loaded, kind), tiny_loaded.tokenizer
    assert generation.soft_prompted(model) and not generation.soft_prompted(tiny_loaded.model)
    # a prompt-tuned row sees its virtual tokens further away behind padding: alone, one at a time
    batch_size = 2 if kind == "prefix" else 1
    result = generation.generate_batch(model, tokenizer, PROMPTS[:3], 6, batch_size, JobContext())
    for turns, got in zip(PROMPTS[:3], result.token_ids, strict=True):
        ids = torch.tensor([generation.prompt_ids(tokenizer, turns)])
        with torch.no_grad():  # each token the argmax of a whole forward pass
            for _ in range(6):
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
                ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        assert got == ids[0, -6:].tolist()


# -- scoring ------------------------------------------------------------------------------------
def answer_nll_by_hand(model, tokenizer, turns, answer):
    ids, labels = encode_instruction(tokenizer, turns, answer)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -len(ids) :]
    nll, count = 0.0, 0
    for t in range(len(ids) - 1):
        if labels[t + 1] != IGNORE:
            nll -= float(torch.log_softmax(logits[t].double(), -1)[labels[t + 1]])
            count += 1
    return nll, count


def perplexity_by_hand(model, tokenizer):
    scores = [answer_nll_by_hand(model, tokenizer, t, a) for t, a in zip(PROMPTS, ANSWERS, strict=True)]
    return math.exp(sum(s for s, _ in scores) / sum(c for _, c in scores)), sum(c for _, c in scores)


@pytest.mark.parametrize("kind", ["plain", "prompt", "prefix"])
def test_answer_perplexity_equals_a_loop_over_single_examples(tiny_loaded, kind):
    tokenizer = tiny_loaded.tokenizer
    model = soft_prompted_copy(tiny_loaded, kind) if kind != "plain" else tiny_loaded.model
    model.train()  # evaluation must switch dropout off, and give the mode back
    events = []
    ppl, tokens = generation.answer_perplexity(
        model, tokenizer, PROMPTS, ANSWERS, 2, JobContext(events.append)
    )
    assert model.training
    model.eval()
    expected, count = perplexity_by_hand(model, tokenizer)
    assert tokens == count and ppl == pytest.approx(expected, rel=1e-4)
    assert [e.data["done"] for e in events if e.kind == "progress"] == [2, 4, 5]


def test_answer_perplexity_of_nothing_is_nan(tiny_loaded):
    ppl, tokens = generation.answer_perplexity(
        tiny_loaded.model, tiny_loaded.tokenizer, [], [], 4, JobContext()
    )
    assert math.isnan(ppl) and tokens == 0


def test_classify_by_likelihood_picks_the_label_with_the_highest_total_log_likelihood(tiny_loaded):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    labels = ["billing", "bug_report", "praise", "Paris", "feature request"]
    predicted = generation.classify_by_likelihood(model, tokenizer, PROMPTS, labels, 3, JobContext())
    expected = []
    for turns in PROMPTS:
        totals = [-answer_nll_by_hand(model, tokenizer, turns, label)[0] for label in labels]
        expected.append(labels[max(range(len(labels)), key=lambda j: totals[j])])
    assert predicted == expected
    with pytest.raises(QuantTuneError, match="no labels"):
        generation.classify_by_likelihood(model, tokenizer, PROMPTS, [], 3, JobContext())


def test_classifier_predictions_keep_the_texts_order(tiny_loaded):
    from core.finetune import classify

    tokenizer = tiny_loaded.tokenizer
    classifier = classify.build_classifier(
        tiny_loaded.model, ["billing", "bug", "praise"], tokenizer.pad_token_id
    )
    events = []
    predicted = generation.classifier_predictions(
        classifier, tokenizer, QUESTIONS, 2, JobContext(events.append)
    )
    assert predicted == [label for label, _ in classify.predict(classifier, tokenizer, QUESTIONS, 1)]
    assert [e.data["done"] for e in events if e.kind == "progress"] == [2, 4, 5]
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        generation.classifier_predictions(classifier, tokenizer, QUESTIONS, 2, ctx)


def test_precision_is_bf16_autocast_only_when_asked_or_native(tiny_loaded):
    from core.finetune.compute import bf16_native

    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    full, _ = generation.answer_perplexity(model, tokenizer, PROMPTS, ANSWERS, 5, JobContext())
    with generation.precision(model, "off"):
        assert generation.answer_perplexity(model, tokenizer, PROMPTS, ANSWERS, 5, JobContext())[0] == full
        assert not torch.is_autocast_enabled("cpu")
    with generation.precision(model, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
        half, _ = generation.answer_perplexity(model, tokenizer, PROMPTS, ANSWERS, 5, JobContext())
    assert half != full and half == pytest.approx(full, rel=0.02)
    with generation.precision(model, "auto"):
        assert torch.is_autocast_enabled("cpu") == bf16_native(torch.device("cpu"))
