"""Turn dataset rows into token ids and labels, and pad them into batches.

Instruction rows become a prompt and an answer: with the tokenizer's chat template when it has
one (the answer is what the template adds after the generation prompt), else a plain
"### Instruction / ### Response" layout. Only the answer's tokens carry labels; the prompt's are
-100, so the loss teaches answering, not repeating questions. Plain text (causal_lm) is learnt
whole. Rows longer than ``max_length`` are cut (and counted); a row whose answer was cut away
entirely is dropped, since it would teach nothing and give a 0/0 loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.data.formats import Shape, Table
from core.errors import QuantTuneError

IGNORE = -100  # the label value the loss skips
PLAIN_PROMPT = "### Instruction:\n{prompt}\n\n### Response:\n"
_SPEAKERS = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class Encoded:
    examples: list[Example]
    truncated: int  # rows cut to max_length
    dropped: int  # rows with nothing left to learn after the cut


def encode_table(table: Table, shape: Shape, tokenizer: Any, task: str, max_length: int) -> Encoded:
    examples, truncated, dropped = [], 0, 0
    for row in table.rows():
        ids, labels = _encode_row(row, shape, tokenizer, task)
        if len(ids) > max_length:
            truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE for label in labels[1:]):  # the first label is never predicted
            dropped += 1
            continue
        examples.append(Example(ids, labels))
    return Encoded(examples, truncated, dropped)


def _encode_row(row: dict, shape: Shape, tokenizer: Any, task: str) -> tuple[list[int], list[int]]:
    if task == "causal_lm":
        text = row.get(shape.mapping.get("text", ""))
        if not isinstance(text, str):
            raise QuantTuneError("Plain-text training needs a 'text' column.", "Map a text column to 'text'.")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"] + _eos(tokenizer)
        return ids, list(ids)
    turns, answer = prompt_and_answer(row, shape)
    return encode_instruction(tokenizer, turns, answer)


def prompt_and_answer(row: dict, shape: Shape) -> tuple[list[dict], str]:
    """The conversation before the answer (as chat turns) and the answer text."""
    m = shape.mapping
    if shape.name in ("messages", "sharegpt"):
        speaker, text = ("role", "content") if shape.name == "messages" else ("from", "value")
        turns = [
            {"role": _SPEAKERS.get(t[speaker], t[speaker]), "content": t[text]} for t in row[m[shape.name]]
        ]
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        if last is None:
            raise QuantTuneError("A conversation has no assistant turn to learn.", "Drop or fix that row.")
        return turns[:last], turns[last]["content"]
    if shape.name == "alpaca":
        prompt = "\n\n".join(p for p in (row[m["instruction"]], row.get(m.get("input", ""), "")) if p)
        return [{"role": "user", "content": prompt}], row[m["output"]]
    if shape.name == "prompt_completion":
        return [{"role": "user", "content": row[m["prompt"]]}], row[m["completion"]]
    if shape.name == "qa":
        context = row.get(m.get("context", "")) or ""
        answer = row[m["answer"]]
        answer = answer.get("text", [""])[0] if isinstance(answer, dict) else answer
        answer = answer[0] if isinstance(answer, list) else answer
        prompt = f"{context}\n\n{row[m['question']]}" if context else row[m["question"]]
        return [{"role": "user", "content": prompt}], answer
    if shape.name == "summarization":
        return [{"role": "user", "content": f"Summarize:\n{row[m['document']]}"}], row[m["summary"]]
    raise QuantTuneError(
        f"Rows of shape '{shape.name}' have no prompt and answer for instruction tuning.",
        "Choose the plain-text task, or map the columns to an instruction shape.",
    )


def encode_instruction(tokenizer: Any, turns: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + answer, with labels only on the answer's tokens."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            turns + [{"role": "assistant", "content": answer}], tokenize=False
        )
        # The answer part is what the full chat adds after the prompt (its end-of-turn included).
        answer_text = full[len(prompt) :] if full.startswith(prompt) else answer
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
        if not full.startswith(prompt):
            answer_ids += _eos(tokenizer)
    else:
        text = "\n\n".join(t["content"] for t in turns)
        prompt_ids = tokenizer(PLAIN_PROMPT.format(prompt=text), add_special_tokens=True)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + _eos(tokenizer)
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def _eos(tokenizer: Any) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def pad_id_of(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end of sequence (many causal
    LMs have none; padding is masked out of attention and loss)."""
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def collate(examples: list[Example], pad_id: int) -> dict:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


PACK_ROW_TOKENS = 512  # a packed row grows to this (or the longest example): attention costs row length²


def pack(examples: list[Example], pad_id: int, row_tokens: int = PACK_ROW_TOKENS) -> dict:
    """The examples end to end in as few rows as fit ``row_tokens``: the same loss as ``collate``'s batch.

    Positions restart at 0 with each example and no attention mask is given: transformers reads
    the restarts as boundaries and builds a block-diagonal causal mask, so no example attends to
    another (masking_utils.find_packed_sequence_indices; the model must run without a cache). Rows
    are balanced (longest example to the shortest row); a shorter row ends in a padding segment of
    its own, which nothing attends to and nothing learns from. Logits are computed only where the
    next token is learnt (``logits_to_keep``): the LM head over a large vocabulary is a good share
    of the work, and prompt positions need none of it. ``targets`` are those next tokens in order;
    their mean loss is the model's own loss over a padded batch. ``real_tokens``: padding excluded.
    """
    import torch

    capacity = max(row_tokens, *(len(e.input_ids) for e in examples))
    slots: list[list[int]] = [[] for _ in range(-(-sum(len(e.input_ids) for e in examples) // capacity))]
    for i in sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids)):
        min(slots, key=lambda slot: sum(len(examples[j].input_ids) for j in slot)).append(i)
    rows = [[examples[i] for i in sorted(slot)] for slot in slots]  # in their order within a row
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    ids, positions, keep = [], [], []
    for row in rows:
        gap = width - sum(len(e.input_ids) for e in row)
        ids.append([t for e in row for t in e.input_ids] + [pad_id] * gap)
        positions.append([p for e in row for p in range(len(e.input_ids))] + list(range(gap)))
        # position t predicts labels[t + 1] of its own example; an example's last position, nothing
        keep.append([label for e in row for label in [*e.labels[1:], IGNORE]] + [IGNORE] * gap)
    flat = [label for row in keep for label in row]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "logits_to_keep": torch.tensor(keep) != IGNORE,
        "targets": torch.tensor([label for label in flat if label != IGNORE], dtype=torch.long),
        "real_tokens": torch.tensor(sum(len(e.input_ids) for e in examples)),
    }
