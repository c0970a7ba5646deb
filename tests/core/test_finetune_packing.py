"""The Train step's speed options on the tiny model: packing (same loss, no attention across
examples, resume bit for bit) and bf16 autocast."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from core.finetune import batches, compute, methods, train
from core.finetune.checkpoints import WEIGHTS
from core.finetune.methods import MethodSettings
from core.jobs import JobContext

pytestmark = pytest.mark.usefixtures("single_thread")  # runs repeat bit for bit

QUESTIONS = [
    ("What is the capital of France?", "Paris."),
    ("Hi", "It maps weights to a small grid, yes."),
    ("What does fine-tuning do?", "It adapts them."),
    ("Why?", "Because the weights move a little each step."),
]


@pytest.fixture
def examples(tiny_tokenizer):
    return [
        batches.Example(*batches.encode_instruction(tiny_tokenizer, [{"role": "user", "content": q}], a))
        for q, a in QUESTIONS
    ]


@pytest.fixture
def lora(tiny_loaded):
    model = methods.apply(copy.deepcopy(tiny_loaded.model), MethodSettings(rank=4, dropout=0.0))
    return model.eval()  # no dropout: the two layouts see the same computation


@pytest.mark.parametrize("row_tokens", [512, 40])  # one row; three rows, one ending in padding
def test_a_packed_batch_has_the_padded_batch_s_loss_and_gradients(lora, examples, row_tokens):
    padded = batches.collate(examples, pad_id=1)
    packed = batches.pack(examples, pad_id=1, row_tokens=row_tokens)
    assert packed["input_ids"].shape[0] == (1 if row_tokens == 512 else 3)
    assert int(packed["real_tokens"]) == int(padded["attention_mask"].sum()) < padded["input_ids"].numel()
    grads = []
    for batch in (padded, packed):
        loss = compute.batch_loss(lora, batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad})
        lora.zero_grad()
        grads[-1]["loss"] = loss.detach()
    assert grads[0]["loss"] == pytest.approx(grads[1]["loss"].item(), rel=1e-5)
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6) for n in grads[0])


def test_packed_examples_do_not_see_each_other(lora, examples):
    batch = batches.pack(examples[:2], pad_id=1)
    with torch.no_grad():
        together = lora(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        second = lora(input_ids=torch.tensor([examples[1].input_ids])).logits[0]
    start = len(examples[0].input_ids)
    assert torch.allclose(together.logits[0, start:], second, atol=1e-5)


def test_the_learnt_positions_are_the_next_tokens_of_each_answer(examples):
    batch = batches.pack(examples, pad_id=1)
    answers = [[t for t in e.labels[1:] if t != batches.IGNORE] for e in examples]
    assert sorted(batch["targets"].tolist()) == sorted(t for a in answers for t in a)
    assert int(batch["logits_to_keep"].sum()) == len(batch["targets"]) == sum(map(len, answers))


def test_which_runs_pack_and_autocast(tiny_loaded, tmp_path):
    p = train.TrainParams(loaded=tiny_loaded, dataset=tmp_path, output=tmp_path, pack=True)
    model = tiny_loaded.model
    assert compute.can_pack(p, model)
    assert not compute.can_pack(replace(p, pack=False), model)
    prompt = methods.apply(copy.deepcopy(model), MethodSettings("prompt", virtual_tokens=2))
    assert not compute.can_pack(p, prompt)  # virtual tokens shift every position
    assert compute.autocast_dtype("off", model) is None
    assert compute.autocast_dtype("bf16", model) is torch.bfloat16
    native = compute.bf16_native(torch.device("cpu"))
    assert compute.autocast_dtype("auto", model) is (torch.bfloat16 if native else None)
    bad = train.TrainParams(loaded=tiny_loaded, dataset=tmp_path, output=tmp_path, autocast="fp8")
    assert any("autocast" in problem for problem in bad.validate())


def test_bf16_autocast_computes_in_bf16_and_keeps_the_loss_close(lora, examples):
    batch = batches.pack(examples, pad_id=1)
    seen = []
    hook = lora.base_model.model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda _m, _i, out: seen.append(out.dtype)
    )
    full, half = compute.batch_loss(lora, batch), compute.batch_loss(lora, batch, torch.bfloat16)
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16] and half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.02)


def write_rows(path, count):
    rows = [{"instruction": q, "input": "", "output": a} for i in range(count) for q, a in [QUESTIONS[i % 4]]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_packed_bf16_run_learns_and_resumes_bit_for_bit(tiny_loaded, tmp_path):
    data = write_rows(tmp_path / "rows.jsonl", 24)

    def params(out, **changes):
        return train.TrainParams(loaded=tiny_loaded, dataset=data, output=out, method=MethodSettings(rank=4),
                                 max_length=64, validation_ratio=0.0, learning_rate=1e-2, max_steps=6,
                                 pack=True, autocast="bf16", **changes)  # fmt: skip

    events = []
    straight = train.run(params(tmp_path / "a", save_every=3), JobContext(events.append))
    assert straight.losses[-1] < straight.losses[0]
    counted = [e.data["value"] for e in events if e.data.get("name") == "tokens_per_second"]
    assert len(counted) == 6 and straight.tokens_per_second > 0
    resumed = train.run(params(tmp_path / "b", resume_from=tmp_path / "a/checkpoints/step-3"), JobContext())
    assert resumed.losses == straight.losses
    a = load_file(tmp_path / "a/checkpoints/step-6" / WEIGHTS)
    b = load_file(tmp_path / "b/checkpoints/step-6" / WEIGHTS)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
