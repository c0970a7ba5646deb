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
