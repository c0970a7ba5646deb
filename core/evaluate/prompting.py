"""The baselines with no training: zero-shot and few-shot prompting, and retrieval-augmented
generation (RAG) over the training rows — "would prompting or retrieval have done as well?".

Every function takes and returns chat turns (``[{"role": "user", "content": ...}, ...]``), as
``core.finetune.batches.prompt_and_answer`` gives them; ``core.evaluate.generation`` lays them out
with the model's chat template. The task's instruction goes once into the first user turn. Few-shot
examples are earlier user/assistant exchanges (in-context learning: the model continues the
pattern); retrieved rows are pasted into the question's own turn as delimited examples.

Retrieval is BM25 (``bm25s``), over words: lower-cased runs of letters and digits, with bm25s's
built-in English stop-word list — no stemmer, nothing to download. Pure Python apart from bm25s,
which is imported on first use.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from core.errors import QuantTuneError

RAG_CHARS = 2400  # retrieved text pasted into a prompt: ~600 tokens, a fair share of a small context
_WORD = re.compile(r"\w+")

Turns = list[dict]
Shot = tuple[Turns, str]  # the turns before the answer, and the answer


# -- instructions and prompts -------------------------------------------------------------------
def task_instruction(task: str, labels: Sequence[str] = ()) -> str:
    """What a model that was never trained on the task is asked to do ("" where the rows say it)."""
    if task == "classification":
        return f"Classify the message as one of: {', '.join(labels)}. Answer with the label only."
    if task == "summarization":
        return "Summarize the text in one or two sentences."
    if task == "qa":
        return "Answer the question from the context with a short phrase."
    return ""  # instruction rows carry their own instruction; plain text has none


def zero_shot(turns: Turns, task: str, labels: Sequence[str] = ()) -> Turns:
    """The row's own turns, the task's instruction put before the first user turn's text."""
    return _instructed(_copy(turns), task_instruction(task, labels))


def few_shot(turns: Turns, shots: Sequence[Shot], task: str, labels: Sequence[str] = ()) -> Turns:
    """Each shot as an earlier exchange (its turns, then its answer as the assistant's), then the
    row's turns; the instruction once, in the first user turn."""
    earlier = [turn for shot_turns, answer in shots for turn in [*_copy(shot_turns), _assistant(answer)]]
    return _instructed(earlier + _copy(turns), task_instruction(task, labels))


def rag(
    turns: Turns, documents: Sequence[str], task: str, labels: Sequence[str] = (), budget: int = RAG_CHARS
) -> Turns:
    """The retrieved ``documents`` (best first) as delimited examples in the last user turn, before
    the instruction and the row's text; cut to ``budget`` characters in all."""
    kept = _within_budget(documents, budget)
    turns = _copy(turns)
    last = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
    if last is None:
        raise QuantTuneError("An evaluation row has no user turn to answer.", "Drop or fix that row.")
    question = turns[last]["content"]
    instruction = task_instruction(task, labels)
    parts = []
    if kept:
        examples = "\n\n".join(f"--- Example {i} ---\n{doc}" for i, doc in enumerate(kept, 1))
        parts.append(f"Use these examples:\n\n{examples}\n\n--- End of examples ---")
    parts += [p for p in (instruction, question) if p]
    turns[last] = {**turns[last], "content": "\n\n".join(parts)}
    return turns


def document_of(turns: Turns, answer: str) -> str:
    """A training row as a retrievable document: its prompt text, then its answer."""
    return f"{text_of(turns)}\nAnswer: {answer}"


def text_of(turns: Turns) -> str:
    """The text of a row's turns, joined: what a query or a document is made of."""
    return "\n\n".join(t["content"] for t in turns if t.get("content"))


def _instructed(turns: Turns, instruction: str) -> Turns:
    first = next((i for i, t in enumerate(turns) if t["role"] == "user"), None)
    if instruction and first is not None:
        turns[first] = {**turns[first], "content": f"{instruction}\n\n{turns[first]['content']}"}
    return turns


def _within_budget(documents: Sequence[str], budget: int) -> list[str]:
    """Whole documents while they fit; the first that does not is cut (with "…") if room is left."""
    kept, left = [], budget
    for doc in documents:
        if len(doc) <= left:
            kept.append(doc)
            left -= len(doc)
            continue
        if left >= 40:  # a shorter stub says nothing
            kept.append(doc[: left - 1].rstrip() + "…")
        break
    return kept


def _assistant(answer: str) -> dict:
    return {"role": "assistant", "content": answer}


def _copy(turns: Turns) -> Turns:
    return [dict(t) for t in turns]  # the caller's rows are never changed


# -- choosing few-shot examples -----------------------------------------------------------------
def choose_shots(train_items: Sequence[Any], k: int, seed: int, labels: Sequence[str] = ()) -> list:
    """``k`` training items (``(turns, answer)`` pairs), the same for the same seed.

    For classification (``labels`` given) with ``k`` at least the number of labels, the shots are
    spread over the labels in turn, so every label is shown; their order is then shuffled, so
    that no label is always last (small models lean towards the last answer they saw).
    """
    rng = random.Random(seed)
    if k <= 0 or not train_items:
        return []
    if not labels or k < len(labels):
        return rng.sample(list(train_items), min(k, len(train_items)))
    pools = {label: [item for item in train_items if item[1] == label] for label in labels}
    for pool in pools.values():
        rng.shuffle(pool)
    chosen: list = []
    while len(chosen) < k and any(pools.values()):
        for label in labels:
            if pools[label] and len(chosen) < k:
                chosen.append(pools[label].pop())
    rest = [item for item in train_items if item[1] not in pools]  # answers outside the labels
    chosen += rng.sample(rest, min(k - len(chosen), len(rest)))
    rng.shuffle(chosen)
    return chosen


# -- retrieval ----------------------------------------------------------------------------------
def words(text: str) -> list[str]:
    """Lower-cased words (runs of letters and digits), English stop words left out."""
    from bm25s.stopwords import STOPWORDS_EN

    stop = set(STOPWORDS_EN)
    return [w for w in _WORD.findall(text.lower()) if w not in stop]


class Retriever:
    """BM25 over ``documents``: ``top(query, k)`` gives (document index, score), best first."""

    def __init__(self, documents: Sequence[str]) -> None:
        import bm25s

        if not documents:
            raise QuantTuneError(
                "There are no training documents to retrieve from.",
                "Give RAG a dataset with training rows (a test split of every row leaves none), "
                "or turn RAG off.",
            )
        tokens = [words(doc) for doc in documents]
        if not any(tokens):
            raise QuantTuneError(
                "The training documents hold no words to search.", "Check that the right columns are mapped."
            )
        self.size = len(documents)
        self._bm25 = bm25s.BM25()
        self._bm25.index(tokens, show_progress=False)

    def top(self, query: str, k: int) -> list[tuple[int, float]]:
        return self.top_many([query], k)[0]

    def top_many(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """The ``k`` best documents of each query (all of them if ``k`` exceeds the corpus). Documents
        sharing no word with the query score 0 and follow in their own order: still examples of the
        task's form."""
        import numpy as np

        results = []
        for query in queries:
            tokens = words(query)
            scores = self._bm25.get_scores(tokens) if tokens else np.zeros(self.size, dtype=np.float32)
            order = np.argsort(-scores, kind="stable")[: max(0, k)]
            results.append([(int(i), float(scores[i])) for i in order])
        return results
