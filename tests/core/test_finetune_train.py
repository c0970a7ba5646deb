"""The Train step on the tiny model: it learns, masks prompts, resumes bit for bit, stops cleanly."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import Cancelled, QuantTuneError
from core.finetune import batches, checkpoints, methods, rundata, train
from core.finetune.methods import MethodSettings
from core.jobs import JobContext

pytestmark = pytest.mark.usefixtures("single_thread")  # runs repeat bit for bit

QUESTIONS = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Italy?", "Rome."),
    ("What does quantization do?", "It maps weights to a small grid."),
    ("What does fine-tuning do?", "It adapts them."),
]


def write_alpaca(path, rows):
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            question, answer = QUESTIONS[i % len(QUESTIONS)]
            f.write(
                json.dumps({"instruction": question, "input": "" if i % 3 else f"row {i}", "output": answer})
            )
            f.write("\n")
    return path


@pytest.fixture
def alpaca(tmp_path):
    return write_alpaca(tmp_path / "alpaca.jsonl", 40)


def params(loaded, dataset, output, **changes):
    base = dict(loaded=loaded, dataset=dataset, output=output, method=MethodSettings(rank=4), max_length=64,
                validation_ratio=0.1, batch_size=4, learning_rate=5e-3, max_steps=6)  # fmt: skip
    return train.TrainParams(**{**base, **changes})


def test_only_the_answer_tokens_carry_labels(tiny_tokenizer):
    turns = [{"role": "user", "content": "What is the capital of France?"}]
    ids, labels = batches.encode_instruction(tiny_tokenizer, turns, "Paris.")
    learnt = [i for i, label in zip(ids, labels, strict=True) if label != batches.IGNORE]
    assert tiny_tokenizer.decode(learnt) == "Paris.<|endoftext|>"
    prompt_end = labels.index(next(label for label in labels if label != batches.IGNORE))
    assert tiny_tokenizer.decode(ids[:prompt_end]).endswith("<|assistant|>")
    assert all(label == batches.IGNORE for label in labels[:prompt_end])
    assert labels[prompt_end:] == ids[prompt_end:]

    plain = copy.deepcopy(tiny_tokenizer)  # without a chat template: the plain layout
    plain.chat_template = None
    ids, labels = batches.encode_instruction(plain, turns, "Paris.")
    prompt = plain.decode([i for i, label in zip(ids, labels, strict=True) if label == -100])
    assert prompt.startswith("### Instruction:") and prompt.endswith("### Response:\n")


def test_lora_overfits_a_few_rows_and_leaves_the_loaded_model_alone(tiny_loaded, tmp_path):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    grads_before = [p.requires_grad for p in tiny_loaded.model.parameters()]
    data = write_alpaca(tmp_path / "few.jsonl", 4)
    events = []
    ctx = JobContext(events.append)
    p = params(tiny_loaded, data, tmp_path / "out", validation_ratio=0.0, learning_rate=1e-2, max_steps=20,
               method=MethodSettings(rank=4, dropout=0.0))  # fmt: skip
    report = train.run(p, ctx)
    assert report.steps == 20 and len(report.losses) == 20
    # a random 2-layer model with rank-4 adapters learns slowly, but steadily: 5.78 -> 5.36 measured
    assert report.losses[-1] < report.losses[0] - 0.3, report.losses
    assert sum(report.losses[-5:]) < sum(report.losses[:5]) - 1.0
    assert 0 < report.trainable_parameters < report.total_parameters
    assert report.tokens_per_second > 0
    json.dumps(report.to_dict(), allow_nan=False)
    names = {e.data["name"] for e in events if e.kind == "metric"}
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second"} <= names
    assert (tmp_path / "out/final/adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "out/final/method.json").read_text())["method"] == "lora"
    after = tiny_loaded.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in tiny_loaded.model.parameters()] == grads_before


def test_three_steps_then_resume_equals_six_straight(tiny_loaded, alpaca, tmp_path):
    straight = train.run(
        params(tiny_loaded, alpaca, tmp_path / "a", save_every=3, eval_every=3), JobContext()
    )
    step3 = tmp_path / "a/checkpoints/step-3"
    assert [c[0] for c in checkpoints.list_checkpoints(tmp_path / "a")] == [3, 6]
    torch.load(step3 / checkpoints.OPTIMIZER, weights_only=True)  # no pickled code needed
    resumed = train.run(params(tiny_loaded, alpaca, tmp_path / "b", resume_from=step3), JobContext())
    assert resumed.losses == straight.losses and resumed.steps == 6
    a = load_file(tmp_path / "a/checkpoints/step-6" / checkpoints.WEIGHTS)
    b = load_file(tmp_path / "b/checkpoints/step-6" / checkpoints.WEIGHTS)
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.best_validation_loss is not None
    with pytest.raises(QuantTuneError, match="other data"):
        train.run(params(tiny_loaded, alpaca, tmp_path / "c", resume_from=step3, seed=1), JobContext())


def test_a_diverging_loss_stops_with_a_clear_error_and_keeps_earlier_checkpoints(
    tiny_loaded, alpaca, tmp_path
):
    p = params(tiny_loaded, alpaca, tmp_path / "out", learning_rate=1e6, max_grad_norm=0.0, max_steps=30,
               save_every=1, method=MethodSettings(method="full"))  # fmt: skip
    with pytest.raises(QuantTuneError) as caught:
        train.run(p, JobContext())
    message = str(caught.value)
    assert "diverged at step" in message and "Lower the learning rate" in message
    bad_step = int(message.split("step ")[1].split(":")[0])
    saved = checkpoints.list_checkpoints(tmp_path / "out")
    assert [c[0] for c in saved] == list(range(1, bad_step))
    weights = load_file(saved[-1][3] / checkpoints.WEIGHTS)
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert all(math.isfinite(c[1]) for c in saved)


def test_cancel_saves_a_checkpoint_first_and_it_resumes(tiny_loaded, alpaca, tmp_path):
    ctx = JobContext()

    def cancel_after_two(event):
        if event.kind == "metric" and event.data["name"] == "loss" and event.data["step"] == 2:
            ctx.cancel()

    ctx._sink = cancel_after_two
    with pytest.raises(Cancelled):
        train.run(params(tiny_loaded, alpaca, tmp_path / "out", max_steps=4), ctx)
    saved = checkpoints.list_checkpoints(tmp_path / "out")
    assert [c[0] for c in saved] == [2]
    assert not (tmp_path / "out/final").exists()
    fresh = params(tiny_loaded, alpaca, tmp_path / "out")
    assert any("another run's checkpoints" in x for x in fresh.validate())
    events = []
    lower = params(tiny_loaded, alpaca, tmp_path / "out", max_steps=4, learning_rate=1e-3,
                   resume_from=saved[0][3])  # fmt: skip
    resumed = train.run(lower, JobContext(events.append))
    assert resumed.steps == 4 and len(resumed.losses) == 4
    rates = {e.data["step"]: e.data["value"] for e in events if e.data.get("name") == "learning_rate"}
    # the resumed run uses its own learning rate, on the same linear decay
    assert rates == pytest.approx({3: 1e-3 * 2 / 4, 4: 1e-3 * 1 / 4})


def test_plain_text_trains_every_token_with_a_freezing_method(tiny_loaded, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text(
        "\n".join(f"The capital of France is Paris, note {i}." for i in range(12)), encoding="utf-8"
    )
    p = params(tiny_loaded, text, tmp_path / "out", task="causal_lm", max_length=8, max_steps=0, epochs=2,
               method=MethodSettings(method="ln"))  # fmt: skip
    report = train.run(p, JobContext())
    assert report.steps == 2 * 3 and report.truncated_rows == 12  # 11 training rows in batches of 4, twice
    saved = load_file(tmp_path / "out/final" / checkpoints.WEIGHTS)
    assert saved and all("norm" in name for name in saved)


def test_validate_lists_every_problem_at_once(tiny_loaded, tmp_path):
    p = params(tiny_loaded, tmp_path / "missing.jsonl", tmp_path / "out", task="poems", batch_size=0,
               learning_rate=0.0, validation_ratio=1.5, resume_from=tmp_path)  # fmt: skip
    problems = p.validate()
    assert len(problems) == 6, problems
    assert any("no dataset file" in x for x in problems) and any("task" in x for x in problems)
    assert p.validate() == problems  # and validating changes nothing
    assert params(tiny_loaded, tmp_path / "missing.jsonl", tmp_path).validate() == [
        f"there is no dataset file at {tmp_path / 'missing.jsonl'}"
    ]


def test_early_stopping_ends_when_validation_loss_stops_improving(tiny_loaded, alpaca, tmp_path):
    # full fine-tuning at a reckless rate overshoots: validation loss rises after the first steps
    p = params(tiny_loaded, alpaca, tmp_path / "out", method=MethodSettings(method="full"), learning_rate=0.3,
               max_steps=30, eval_every=1, early_stopping_patience=2)  # fmt: skip
    events = []
    report = train.run(p, JobContext(events.append))
    val = [e.data["value"] for e in events if e.data.get("name") == "val_loss"]
    assert report.stopped_early and report.steps < 30 and len(val) == report.steps
    assert min(val[-2:]) >= report.best_validation_loss == min(val)
    assert checkpoints.list_checkpoints(tmp_path / "out")[-1][0] == report.steps


def test_a_row_without_an_answer_is_named_before_training(tiny_loaded, alpaca, tmp_path):
    rows = alpaca.read_text(encoding="utf-8").splitlines()
    rows[2] = json.dumps({"instruction": "Say nothing", "input": "", "output": ""})
    alpaca.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(QuantTuneError, match="Row 3, output"):
        train.run(params(tiny_loaded, alpaca, tmp_path / "out"), JobContext())


@pytest.mark.parametrize("name", ["instructions-units.jsonl", "qa-planets.jsonl", "summaries-notes.jsonl"])
def test_the_bundled_instruction_datasets_train(tiny_loaded, tmp_path, name):
    dataset = Path(__file__).parents[2] / "resources/datasets" / name
    p = params(tiny_loaded, dataset, tmp_path / "out", max_length=1024, max_steps=2,
               method=MethodSettings("ia3"))  # fmt: skip
    report = train.run(p, JobContext())
    assert report.steps == 2 and all(math.isfinite(v) for v in report.losses)
    assert report.best_validation_loss is not None


def test_the_metrics_log_and_split_are_written_as_training_goes(tiny_loaded, alpaca, tmp_path):
    from core.finetune.runlog import read_metrics

    out = tmp_path / "run"
    p = params(tiny_loaded, alpaca, out, max_steps=4, eval_every=2, test_ratio=0.2)
    train.run(p, JobContext())
    history = read_metrics(out)
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["learning_rate"] > 0 for r in history)
    assert "val_loss" in history[1] and "val_loss" not in history[0]
    split = json.loads((out / rundata.SPLIT).read_text())
    assert len(split["test"]) == 8 and len(split["validation"]) == 4 and len(split["train"]) == 28
    assert not set(split["test"]) & set(split["train"] + split["validation"])
    with (out / "metrics.jsonl").open("a") as log:
        log.write('{"step": 5, "loss": 1.')  # a line cut short by a kill
    assert len(read_metrics(out)) == 4


def test_rows_with_problems_stop_the_run_unless_dropped(tiny_loaded, tmp_path):
    data = write_alpaca(tmp_path / "rows.jsonl", 40)
    with data.open("a", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "", "input": "", "output": "no question"}) + "\n")
    with pytest.raises(QuantTuneError, match="1 row"):
        train.run(params(tiny_loaded, data, tmp_path / "a", max_steps=1), JobContext())
    train.run(params(tiny_loaded, data, tmp_path / "b", max_steps=1, drop_bad_rows=True), JobContext())
    split = json.loads((tmp_path / "b" / rundata.SPLIT).read_text())
    assert 40 not in split["train"] + split["validation"] + split["test"]


def test_gradient_checkpointing_gives_the_same_steps(tiny_loaded, alpaca, tmp_path):
    plain = train.run(params(tiny_loaded, alpaca, tmp_path / "a", max_steps=3), JobContext())
    again = train.run(
        params(tiny_loaded, alpaca, tmp_path / "b", max_steps=3, gradient_checkpointing=True), JobContext()
    )
    assert again.losses == pytest.approx(plain.losses, rel=1e-5)
    assert any(getattr(m, "gradient_checkpointing", False) for m in again.model.modules())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.model.modules())


def test_resuming_from_an_earlier_checkpoint_drops_the_later_future(tiny_loaded, alpaca, tmp_path):
    from core.finetune.runlog import read_metrics

    out = tmp_path / "run"
    train.run(params(tiny_loaded, alpaca, out, max_steps=6, save_every=2), JobContext())
    assert [c[0] for c in checkpoints.list_checkpoints(out)] == [2, 4, 6]
    earlier = out / "checkpoints" / "step-2"
    with pytest.raises(QuantTuneError, match="another batch size"):
        train.run(
            params(tiny_loaded, alpaca, out, max_steps=6, batch_size=2, resume_from=earlier), JobContext()
        )
    ctx = JobContext()
    train.run(params(tiny_loaded, alpaca, out, max_steps=3, save_every=0, resume_from=earlier), ctx)
    assert [c[0] for c in checkpoints.list_checkpoints(out)] == [2, 3]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]


LEARNING_RATES = {"full": 1e-3, "partial": 1e-3, "qat": 5e-3}  # the rest: 2e-2 (few, fresh parameters)


@pytest.mark.parametrize("method", [m for m in methods.METHODS if m not in ("bitfit", "feature")])
def test_every_method_learns_a_batch_it_can_memorise(tiny_loaded, tmp_path, method):
    data = write_alpaca(tmp_path / "eight.jsonl", 8)  # 8 rows, batch 8: the same batch every step
    p = params(tiny_loaded, data, tmp_path / "run", validation_ratio=0.0, batch_size=8, max_steps=8,
               learning_rate=LEARNING_RATES.get(method, 2e-2),
               method=MethodSettings(method=method, rank=4, virtual_tokens=4))  # fmt: skip
    losses = train.run(p, JobContext()).losses
    # the tiny model's random, frozen head bounds how far most methods can go: the loss must fall
    # step by step (the same batch each step; one thread, so every run is the same)
    assert losses[-1] < losses[0] - 1e-3 and losses[-1] == min(losses), losses


def test_a_stop_during_validation_validates_that_step_on_resume(tiny_loaded, alpaca, tmp_path):
    from core.finetune.runlog import read_metrics

    out = tmp_path / "run"
    holder = {}

    def stop_before_validating(event):  # the stop lands after step 2's loss, as validation begins
        if event.kind == "metric" and event.data["name"] == "loss" and event.data["step"] == 2:
            holder["ctx"].cancel()

    holder["ctx"] = ctx = JobContext(stop_before_validating)
    with pytest.raises(Cancelled):
        train.run(params(tiny_loaded, alpaca, out, max_steps=4, eval_every=2), ctx)
    assert [c[0] for c in checkpoints.list_checkpoints(out)] == [2]
    assert "val_loss" not in read_metrics(out)[-1]
    resumed = params(
        tiny_loaded, alpaca, out, max_steps=4, eval_every=2, resume_from=out / "checkpoints" / "step-2"
    )
    train.run(resumed, JobContext())
    validated = [r["step"] for r in read_metrics(out) if r.get("val_loss") is not None]
    assert validated == [2, 4]
