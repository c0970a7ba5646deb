"""Text classification on the tiny model: a new head on a copy of the base, feature extraction,
LoRA with the head saved and reloaded, validation accuracy, stratified splits, row errors."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from core.errors import QuantTuneError
from core.finetune import classify, methods, rundata, train
from core.finetune.checkpoints import WEIGHTS
from core.finetune.methods import MethodSettings
from core.jobs import JobContext

pytestmark = pytest.mark.usefixtures("single_thread")  # runs repeat bit for bit

# The class shows in the last word, which is what the head reads: learnable even by a random model.
PHRASES = {
    "geography": "The capital of France is Paris",
    "quantization": "Quantization maps weights to a small grid",
    "food": "Café and jalapeño",
}


def write_labelled(path, per_label=10, labels=tuple(PHRASES)):
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(per_label):
            for label in labels:
                writer.writerow([f"Note {i}: {PHRASES[label]}", label])
    return path


@pytest.fixture
def labelled(tmp_path):
    return write_labelled(tmp_path / "labelled.csv")


def params(loaded, dataset, output, **changes):
    base = dict(loaded=loaded, dataset=dataset, output=output, task="classification", max_length=32,
                method=MethodSettings(method="feature"), validation_ratio=0.2, batch_size=8,
                learning_rate=5e-2, max_steps=12)  # fmt: skip
    return train.TrainParams(**{**base, **changes})


def metrics(events, name):
    return [e.data["value"] for e in events if e.kind == "metric" and e.data["name"] == name]


def test_the_classifier_copies_every_base_weight_and_only_the_head_is_new(tiny_loaded):
    causal = tiny_loaded.model
    model = classify.build_classifier(causal, ["a", "b", "c"], pad_id=1, seed=0)
    base = causal.base_model.state_dict()
    mine = model.base_model.state_dict()
    assert base.keys() == mine.keys() and all(torch.equal(base[k], mine[k]) for k in base)
    assert all(mine[k].data_ptr() != base[k].data_ptr() for k in base)  # a copy: the loaded model stays
    assert [n for n, _ in model.named_parameters() if not n.startswith("model.")] == ["score.weight"]
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.config.pad_token_id == 1
    again = classify.build_classifier(causal, ["a", "b", "c"], pad_id=1, seed=0)
    assert torch.equal(model.score.weight, again.score.weight)  # the head's start follows the seed


def test_feature_extraction_trains_only_the_head_and_learns(tiny_loaded, labelled, tmp_path):
    before = {k: v.clone() for k, v in tiny_loaded.model.state_dict().items()}
    events = []
    report = train.run(
        params(tiny_loaded, labelled, tmp_path / "out", eval_every=4), JobContext(events.append)
    )
    hidden = tiny_loaded.model.config.hidden_size
    assert report.trainable_parameters == hidden * 3
    assert report.losses[-1] < report.losses[0] - 0.3, report.losses
    accuracy = metrics(events, "val_accuracy")
    assert len(accuracy) == len(metrics(events, "val_loss")) == 3 and accuracy[-1] == 1.0
    saved = load_file(tmp_path / "out/final" / WEIGHTS)
    assert list(saved) == ["score.weight"] and saved["score.weight"].shape == (3, hidden)
    labels = json.loads((tmp_path / "out/final" / classify.LABELS).read_text())["id2label"]
    assert labels == {"0": "food", "1": "geography", "2": "quantization"}  # sorted
    after = tiny_loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_lora_trains_adapters_and_head_and_reloads_with_the_same_answers(tiny_loaded, labelled, tmp_path):
    p = params(tiny_loaded, labelled, tmp_path / "out", learning_rate=2e-2,
               method=MethodSettings(rank=4, dropout=0.0))  # fmt: skip
    report = train.run(p, JobContext())
    names = [n for n, q in report.model.named_parameters() if q.requires_grad]
    assert any("lora_A" in n for n in names) and any("score" in n for n in names)
    head = [n for n in names if "score" in n]
    assert (
        sum(q.numel() for n, q in report.model.named_parameters() if n in head)
        == tiny_loaded.model.config.hidden_size * 3
    )
    assert (tmp_path / "out/final/adapter_model.safetensors").is_file()
    texts = [f"Note {i}: {phrase}" for i, phrase in enumerate(PHRASES.values())] + ["Paris and Rome"]
    trained = classify.predict(report.model, tiny_loaded.tokenizer, texts)
    reloaded = classify.load_classifier(tiny_loaded, tmp_path / "out/final")
    again = classify.predict(reloaded, tiny_loaded.tokenizer, texts, batch_size=1)  # no padding at all
    assert [label for label, _ in again] == [label for label, _ in trained]
    assert [p for _, p in again] == pytest.approx([p for _, p in trained], abs=1e-5)
    assert [label for label, _ in trained[:3]] == ["geography", "quantization", "food"]


def test_a_resumed_classifier_continues_bit_for_bit(tiny_loaded, labelled, tmp_path):
    straight = train.run(
        params(tiny_loaded, labelled, tmp_path / "a", max_steps=6, save_every=3), JobContext()
    )
    step3 = tmp_path / "a/checkpoints/step-3"
    assert list(load_file(step3 / WEIGHTS)) == ["score.weight"]
    resumed = train.run(params(tiny_loaded, labelled, tmp_path / "b", max_steps=6, resume_from=step3),
                        JobContext())  # fmt: skip
    assert resumed.losses == straight.losses
    a, b = (load_file(tmp_path / f"{x}/final" / WEIGHTS)["score.weight"] for x in "ab")
    assert torch.equal(a, b)


def test_the_split_is_stratified_by_label(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv", per_label=10)
    train.run(params(tiny_loaded, data, tmp_path / "out", max_steps=1, test_ratio=0.2), JobContext())
    split = json.loads((tmp_path / "out" / rundata.SPLIT).read_text())
    with data.open(encoding="utf-8") as f:
        labels = [row["label"] for row in csv.DictReader(f)]
    for part, per_label in (("train", 6), ("validation", 2), ("test", 2)):
        counts = {name: sum(labels[i] == name for i in split[part]) for name in PHRASES}
        assert counts == dict.fromkeys(PHRASES, per_label), (part, counts)


def test_feature_extraction_on_another_task_says_to_choose_classification(tiny_loaded, tmp_path):
    rows = [json.dumps({"instruction": "Say hi", "input": "", "output": "Hi."})] * 8
    data = tmp_path / "alpaca.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    p = params(tiny_loaded, data, tmp_path / "out", task="instruction")
    assert any("classification head" in problem for problem in p.validate())
    with pytest.raises(QuantTuneError, match="classification head") as caught:
        train.run(p, JobContext())
    assert "text-classification task" in caught.value.fix


def test_a_label_outside_the_chosen_ones_is_a_row_error(tiny_loaded, tmp_path):
    data = write_labelled(tmp_path / "labelled.csv", per_label=4)
    p = params(tiny_loaded, data, tmp_path / "out", labels=("geography", "quantization"))
    with pytest.raises(QuantTuneError, match=r"Row 3, label: 'food' is not one of the labels"):
        train.run(p, JobContext())
    dropped = train.run(params(tiny_loaded, data, tmp_path / "kept", labels=("geography", "quantization"),
                               drop_bad_rows=True, max_steps=1), JobContext())  # fmt: skip
    assert classify.labels_of(dropped.model) == ["geography", "quantization"]
    one = write_labelled(tmp_path / "one.csv", labels=("food",))
    with pytest.raises(QuantTuneError, match="at least two"):
        train.run(params(tiny_loaded, one, tmp_path / "one"), JobContext())


@pytest.mark.parametrize("method", ["ln", "partial", "full", "prompt", "ia3"])
def test_every_method_on_a_classifier_trains_the_head(tiny_loaded, method):
    model = classify.build_classifier(tiny_loaded.model, ["a", "b"], pad_id=1)
    model = methods.apply(model, MethodSettings(method=method, virtual_tokens=4))
    trainable = [n for n, q in model.named_parameters() if q.requires_grad]
    assert any("score" in n for n in trainable) and len(trainable) > 1
    examples = [classify.LabelledText([5, 6, 7], 0), classify.LabelledText([8, 9], 1)]
    loss = model(**classify.collate(examples, pad_id=1)).loss
    loss.backward()
    head = next(q for n, q in model.named_parameters() if "score" in n and q.requires_grad)
    assert torch.isfinite(loss) and head.grad is not None and head.grad.abs().sum() > 0
    # left padding: the shorter text scores as it does alone. A soft prompt comes before the padding,
    # so its distance to the text grows by the padding: nearly the same (2e-4 measured), where right
    # padding would score a pad token
    model.eval()
    with torch.no_grad():
        together = model(**classify.collate(examples, pad_id=1)).logits
        alone = torch.cat([model(**classify.collate([e], pad_id=1)).logits for e in examples])
    assert torch.allclose(together, alone, atol=1e-3 if method == "prompt" else 1e-5)
