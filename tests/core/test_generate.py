"""The generate job on the tiny model: streamed pieces add up to the answer; cancel stops it."""

import dataclasses

import pytest
import torch

from core import generate
from core.errors import Cancelled, InvalidSettings, QuantTuneError
from core.generate import GenerateParams
from core.jobs import JobContext, run_job

PROMPT = "What is the capital of France?"


def ask(loaded, sink=None, **kwargs):
    ctx = JobContext(sink)
    return run_job(generate.run, GenerateParams(loaded, PROMPT, **kwargs), ctx)


def greedy_reference(loaded, input_ids, max_new_tokens):
    with torch.no_grad():
        out = loaded.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    return loaded.tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)


def test_streamed_pieces_add_up_to_the_greedy_answer(tiny_loaded):
    events = []
    answer = ask(tiny_loaded, events.append, max_new_tokens=24)
    pieces = [e.data["text"] for e in events if e.kind == "token"]
    assert len(pieces) >= 5 and "".join(pieces) == answer
    messages = [{"role": "user", "content": PROMPT}]
    ids = tiny_loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    assert answer == greedy_reference(tiny_loaded, ids["input_ids"], 24)
    progress = [e.data for e in events if e.kind == "progress" and e.data["total"] == 24]
    assert progress[-1]["done"] == 24


def test_greedy_is_deterministic_and_plain_prompt_skips_the_template(tiny_loaded):
    assert ask(tiny_loaded, max_new_tokens=12) == ask(tiny_loaded, max_new_tokens=12)
    plain = ask(tiny_loaded, max_new_tokens=12, use_chat_template=False)
    ids = tiny_loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    assert plain == greedy_reference(tiny_loaded, ids, 12)


def test_temperature_zero_is_greedy_even_if_the_model_defaults_to_sampling(tiny_loaded):
    reference = ask(tiny_loaded, max_new_tokens=12)
    gen = tiny_loaded.model.generation_config
    gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, 0.6, 0.9, 20
    assert [ask(tiny_loaded, max_new_tokens=12) for _ in range(2)] == [reference, reference]


def test_tokenizer_without_template_uses_the_plain_prompt(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        answer = ask(tiny_loaded, max_new_tokens=8)
    finally:
        tokenizer.chat_template = saved
    assert answer == ask(tiny_loaded, max_new_tokens=8, use_chat_template=False)


def test_a_failing_chat_template_says_how_to_avoid_it(tiny_loaded):
    tokenizer = tiny_loaded.tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = "{{ raise_exception('A system message is required') }}"
    try:
        with pytest.raises(QuantTuneError) as info:
            ask(tiny_loaded, max_new_tokens=4)
        assert "system message is required" in info.value.message and "chat template" in info.value.fix
        assert ask(tiny_loaded, max_new_tokens=4, use_chat_template=False)
    finally:
        tokenizer.chat_template = saved


def test_sampling_with_temperature(tiny_loaded):
    torch.manual_seed(1)
    first = ask(tiny_loaded, max_new_tokens=16, temperature=1.5)
    torch.manual_seed(1)
    assert ask(tiny_loaded, max_new_tokens=16, temperature=1.5) == first
    assert first != ask(tiny_loaded, max_new_tokens=16)  # a random 300-token babble: not greedy's


def test_multibyte_characters_are_never_split(tiny_tokenizer):
    """Fed one byte-token at a time, the streamer holds back half characters (no U+FFFD)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    text = "Café, 東京 and 😀!"
    spelling = bytes_to_unicode()
    byte_ids = [tiny_tokenizer.convert_tokens_to_ids(spelling[b]) for b in text.encode("utf-8")]
    events = []
    streamer = generate._make_streamer(tiny_tokenizer, JobContext(events.append), total=len(byte_ids))
    streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt comes first and is not part of the answer
    for token_id in byte_ids:
        streamer.put(torch.tensor([token_id]))
    streamer.end()
    pieces = [e.data["text"] for e in events if e.kind == "token"]
    assert "".join(pieces) == text == streamer.text
    assert not any("\ufffd" in piece for piece in pieces)
    assert "東" in pieces and "😀" in pieces  # each arrived whole, once its last byte did


def test_cancel_stops_between_tokens(tiny_loaded):
    pieces = []

    def sink(event):
        if event.kind == "token":
            pieces.append(event.data["text"])
            if len(pieces) == 3:
                ctx.cancel()

    ctx = JobContext(sink)
    with pytest.raises(Cancelled):
        generate.run(GenerateParams(tiny_loaded, PROMPT, max_new_tokens=200), ctx)
    assert 3 <= len(pieces) <= 4


def test_validate_lists_every_problem(tiny_loaded):
    params = GenerateParams(tiny_loaded, "  ", max_new_tokens=0, temperature=-1.0)
    assert len(params.validate()) == 3
    assert len(dataclasses.replace(params, max_new_tokens=4096).validate()) == 3
    assert GenerateParams(tiny_loaded, "hi", temperature=float("nan")).validate()
    assert GenerateParams(tiny_loaded, "hi").validate() == []
    with pytest.raises(InvalidSettings):
        run_job(generate.run, params, JobContext())


def test_prompt_plus_answer_beyond_the_context_is_refused(tiny_loaded):
    with pytest.raises(InvalidSettings, match="context of 256 tokens"):
        ask(tiny_loaded, max_new_tokens=2048)


def test_params_compare_without_the_model(tiny_loaded):
    a = GenerateParams(tiny_loaded, "hi")
    b = GenerateParams(None, "hi")
    assert a == b and "loaded" not in repr(a)


def test_a_soft_prompted_model_answers_as_a_full_recomputation_does(tiny_loaded):
    """peft's soft prompts and the key/value cache disagree after the first token: the job must not
    use the cache for them (each token below is the argmax of a whole forward pass)."""
    import copy

    from core.finetune import methods

    torch.manual_seed(0)
    soft_prompt = methods.MethodSettings(method="prompt", virtual_tokens=4)
    model = methods.apply(copy.deepcopy(tiny_loaded.model), soft_prompt)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(40.0)  # a soft prompt far from any word: it steers every token
    prompted = dataclasses.replace(tiny_loaded, model=model.eval())
    answer = ask(prompted, max_new_tokens=8, use_chat_template=False)
    ids = tiny_loaded.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(8):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    expected = tiny_loaded.tokenizer.decode(ids[0, -8:], skip_special_tokens=True)
    assert answer == expected
