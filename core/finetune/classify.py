"""Text classification: a sequence-classification head on the loaded language model.

The classifier is transformers' ``AutoModelForSequenceClassification`` built from the loaded
model's config (labels sorted, the pad token set), its base loaded from a copy of the loaded
model's base weights — only the new head (``score``) starts random. It scores the last real token
of each text, so batches are padded on the left: the last position is then always a real token,
also for soft-prompt methods, where transformers cannot see padding in ``inputs_embeds``. Rotary
position embeddings are relative, so left padding changes no score (checked in the tests); only a
soft prompt, which peft puts before the padding, sees the text a little further away.

A finished classifier is saved by the Train step (``saving.save_final``) with ``labels.json``
beside the adapter or the trained tensors; ``load_classifier`` rebuilds it from the base model,
``predict`` labels texts with it (the Evaluate step and "Ask the model").
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.data.formats import Shape, Table
from core.errors import QuantTuneError
from core.finetune import methods
from core.finetune.batches import Encoded, pad_id_of

LABELS = "labels.json"  # id2label and the pad token of a saved classifier


@dataclass(frozen=True)
class LabelledText:
    input_ids: list[int]
    label: int  # index into the sorted label names


# -- data ---------------------------------------------------------------------------------------
def _columns(shape: Shape) -> tuple[str, str]:
    if shape.name != "classification":
        raise QuantTuneError(
            f"Text classification needs rows of text and label; these rows are '{shape.name}'.",
            "Pick a file with 'text' and 'label' columns (or map two columns to them), or another task.",
        )
    return shape.mapping["text"], shape.mapping["label"]


def label_names(table: Table, shape: Shape, skip: set[int] = frozenset()) -> list[str]:
    """The labels of the rows not in ``skip`` (0-based), sorted: index i is class i."""
    _text, column = _columns(shape)
    values = table.dataset[column]
    names = sorted({str(v) for i, v in enumerate(values) if i not in skip and v is not None})
    if len(names) < 2:
        found = ", ".join(names) or "none"
        raise QuantTuneError(
            f"The data has {len(names)} label{'s' if len(names) != 1 else ''} ({found}): a classifier "
            "needs at least two.",
            "Add rows of another label, or check that the right column is mapped to 'label'.",
        )
    return names


def encode_text(tokenizer: Any, text: str, max_length: int) -> list[int]:
    return tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]


def encode_table(table: Table, shape: Shape, tokenizer: Any, labels: list[str], max_length: int) -> Encoded:
    """Each row as token ids (cut to ``max_length``) and its label's index."""
    text_column, label_column = _columns(shape)
    index = {name: i for i, name in enumerate(labels)}
    examples, truncated = [], 0
    for number, row in enumerate(table.rows(), 1):
        label = str(row[label_column])
        if label not in index:  # validate_rows names such rows first; this guards direct callers
            raise QuantTuneError(f"Row {number}: '{label}' is not one of the labels {labels}.",
                                 "Fix or drop that row.")  # fmt: skip
        ids = tokenizer(row[text_column], add_special_tokens=True)["input_ids"]
        truncated += len(ids) > max_length
        examples.append(LabelledText(ids[:max_length], index[label]))
    return Encoded(examples, truncated, 0)


def collate(examples: list[LabelledText], pad_id: int) -> dict:
    """Left-pad to the longest text (see the module note); ``labels`` holds one class per row."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, width - n :] = torch.tensor(e.input_ids)
        mask[i, width - n :] = 1
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# -- the model ----------------------------------------------------------------------------------
def build_classifier(causal: Any, labels: list[str], pad_id: int, seed: int = 0) -> Any:
    """A sequence classifier over a copy of ``causal``'s base weights (``causal`` is not changed)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal.config)
    config.id2label = dict(enumerate(labels))  # also sets num_labels
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.pad_token_id = pad_id
    config.problem_type = "single_label_classification"  # cross entropy, also for two labels
    first = next(causal.parameters())
    try:  # built empty: all but the head is copied below, so a random start would be wasted (seconds)
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config, dtype=first.dtype)
    except ValueError as e:
        raise QuantTuneError(
            f"transformers has no sequence-classification model for {type(causal).__name__} ({e}).",
            "Choose a generative task for this model, or load a model family with one (e.g. Llama).",
        ) from e
    model.to_empty(device=first.device)
    _copy_base(causal, model)
    _init_head(model, seed)
    return model


def _copy_base(causal: Any, model: Any) -> None:
    """Every base weight and buffer from ``causal`` (strict: none may stay empty)."""
    import torch

    base, source = model.base_model, causal.base_model
    try:
        base.load_state_dict(source.state_dict(), strict=True)
        if {n for n, _ in base.named_buffers()} != {n for n, _ in source.named_buffers()}:
            raise RuntimeError("the buffers differ")
        with torch.no_grad():  # the buffers a state dict leaves out (rotary frequencies)
            for name, buffer in source.named_buffers():
                base.get_buffer(name).copy_(buffer)
    except RuntimeError as e:
        raise QuantTuneError(
            f"The classifier's base does not match the loaded model ({str(e)[:200]}).",
            "Load the model again, or choose a generative task.",
        ) from e


def _init_head(model: Any, seed: int) -> None:
    """The only new weights: the head's, drawn as transformers draws them, from ``seed``."""
    import torch

    prefix = model.base_model_prefix + "."
    new = [(name, p) for name, p in model.named_parameters() if not name.startswith(prefix)]
    if not new or any(not name.startswith(("score.", "classifier.")) for name, _ in new):
        raise QuantTuneError(f"Unexpected new weights beside the classification head: {[n for n, _ in new]}.",
                             "Choose a generative task for this model.")  # fmt: skip
    std = getattr(model.config, "initializer_range", 0.02)
    generator = torch.Generator(device=new[0][1].device).manual_seed(seed)
    with torch.no_grad():
        for _name, param in new:
            if param.dim() > 1:
                param.normal_(0.0, std, generator=generator)
            else:
                param.zero_()  # biases


def is_classifier(model: Any) -> bool:
    """A sequence classifier, also inside a peft model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return methods.is_sequence_classifier(inner)


def labels_of(model: Any) -> list[str]:
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]


def save_labels(folder: Path, model: Any) -> None:
    from core.atomic import write_json

    write_json(Path(folder) / LABELS, {"id2label": dict(enumerate(labels_of(model))),
                                       "pad_token_id": model.config.pad_token_id})  # fmt: skip


def load_classifier(loaded: Any, folder: Path) -> Any:
    """The classifier a run saved in ``folder`` (its final/), rebuilt on ``loaded``'s base; eval mode."""
    from core.finetune import runs  # on first use: runs sits above this module (load_trained calls here)

    folder = Path(folder)
    try:
        saved = json.loads((folder / LABELS).read_text(encoding="utf-8"))
        settings = runs.method_settings(json.loads((folder / "method.json").read_text(encoding="utf-8")))
        labels = [saved["id2label"][str(i)] for i in range(len(saved["id2label"]))]
    except (OSError, ValueError, KeyError) as e:
        raise QuantTuneError(f"{folder} holds no readable classifier ({e}).",
                             "Pick the final folder of a finished classification run.") from e  # fmt: skip
    pad = saved.get("pad_token_id")
    model = build_classifier(loaded.model, labels, pad_id_of(loaded.tokenizer) if pad is None else pad)
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(folder)).eval()
    return runs.load_tensors(methods.apply(model, settings), folder)  # the same structure as trained


# -- use ----------------------------------------------------------------------------------------
def evaluate(model: Any, examples: list[LabelledText], batch_size: int, ctx: Any) -> tuple[float, float]:
    """Mean cross-entropy per example and the share classified right."""
    import torch

    device = next(model.parameters()).device
    model.eval()  # no dropout: the figures are exact and draw nothing from the RNG
    loss, right = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                ctx.check_cancelled()
                chunk = examples[start : start + batch_size]
                batch = {k: v.to(device) for k, v in collate(chunk, model.config.pad_token_id).items()}
                out = model(**batch)
                loss += out.loss.item() * len(chunk)
                right += int((out.logits.argmax(-1) == batch["labels"]).sum())
    finally:
        model.train()
    return loss / max(1, len(examples)), right / max(1, len(examples))


def predict(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16, max_length: int = 512
) -> list[tuple[str, float]]:
    """(label, probability) of the most likely label of each text."""
    return [max(p.items(), key=lambda kv: kv[1]) for p in probabilities(model, tokenizer, texts, batch_size,
                                                                          max_length)]  # fmt: skip


def probabilities(
    model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16, max_length: int = 512
) -> list[dict[str, float]]:
    """Each text's probability of every label."""
    import torch

    labels, pad = labels_of(model), model.config.pad_token_id
    encoded = [LabelledText(encode_text(tokenizer, text, max_length), 0) for text in texts]
    if any(not e.input_ids for e in encoded):
        raise QuantTuneError("A text to classify is empty.", "Enter some text.")
    device = next(model.parameters()).device
    was_training, results = model.training, []
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                batch = collate(encoded[start : start + batch_size], pad)
                batch.pop("labels")
                probs = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().softmax(-1)
                results += [dict(zip(labels, row.tolist(), strict=True)) for row in probs]
    finally:
        model.train(was_training)
    return results


@dataclass(frozen=True)
class ClassifyParams:
    model: Any  # a sequence classifier
    tokenizer: Any
    text: str

    def validate(self) -> list[str]:
        return [] if self.text.strip() else ["enter some text to classify"]


def run_classify(params: ClassifyParams, ctx: Any) -> list[tuple[str, float]]:
    """Every label with its probability for ``params.text``, most likely first."""
    ctx.stage("Classifying")
    probs = probabilities(params.model, params.tokenizer, [params.text])[0]
    return sorted(probs.items(), key=lambda kv: -kv[1])
