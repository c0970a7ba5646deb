"""The no-training baselines' prompts (zero-shot, few-shot, RAG) and BM25 retrieval over training rows."""

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from core.errors import QuantTuneError
from core.evaluate import prompting

LABELS = ["billing", "bug_report", "praise"]
ROW = [{"role": "user", "content": "I was charged twice."}]
DATASETS = Path(__file__).parents[2] / "resources" / "datasets"


def user(text):
    return [{"role": "user", "content": text}]


def test_task_instructions():
    assert prompting.task_instruction("classification", LABELS) == (
        "Classify the message as one of: billing, bug_report, praise. Answer with the label only."
    )
    assert prompting.task_instruction("summarization") == "Summarize the text in one or two sentences."
    assert prompting.task_instruction("qa") == "Answer the question from the context with a short phrase."
    assert prompting.task_instruction("instruction") == ""


def test_zero_shot_puts_the_instruction_before_the_row_and_leaves_the_row_alone():
    before = [dict(t) for t in ROW]
    turns = prompting.zero_shot(ROW, "classification", LABELS)
    assert turns == user(prompting.task_instruction("classification", LABELS) + "\n\nI was charged twice.")
    assert before == ROW
    assert prompting.zero_shot(ROW, "instruction") == ROW


def test_few_shot_gives_the_shots_as_earlier_exchanges_with_the_instruction_once():
    shots = [(user("The app crashes."), "bug_report"), (user("Great service!"), "praise")]
    turns = prompting.few_shot(ROW, shots, "classification", LABELS)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert [t["content"] for t in turns[1:]] == [
        "bug_report",
        "Great service!",
        "praise",
        "I was charged twice.",
    ]
    instruction = prompting.task_instruction("classification", LABELS)
    assert turns[0]["content"] == instruction + "\n\nThe app crashes."
    assert sum(instruction in t["content"] for t in turns) == 1
    assert shots[0][0] == user("The app crashes.")  # the shots were not changed


def support_items():
    with open(DATASETS / "classification-support.csv", encoding="utf-8") as f:
        return [(user(row["text"]), row["label"]) for row in csv.DictReader(f)]


def test_choose_shots_is_seeded_and_covers_every_label():
    items = support_items()
    labels = sorted({label for _, label in items})
    assert len(labels) == 5
    shots = prompting.choose_shots(items, 7, seed=3, labels=labels)
    assert shots == prompting.choose_shots(items, 7, seed=3, labels=labels)
    assert shots != prompting.choose_shots(items, 7, seed=4, labels=labels)
    counts = Counter(label for _, label in shots)
    assert set(counts) == set(labels) and max(counts.values()) == 2 and len(shots) == 7
    assert len({id(s) for s in shots}) == 7 and all(s in items for s in shots)
    fewer = prompting.choose_shots(items, 3, seed=3, labels=labels)  # fewer shots than labels: a sample
    assert len(fewer) == 3 and all(s in items for s in fewer)
    assert sorted(map(id, prompting.choose_shots(items[:4], 10, seed=0))) == sorted(map(id, items[:4]))
    assert prompting.choose_shots(items, 0, seed=0) == []


def test_a_query_finds_the_one_document_it_shares_words_with():
    docs = ["Jupiter has a great red spot.", "Mars is red and dusty.", "Saturn has rings of ice."]
    retriever = prompting.Retriever(docs)
    top = retriever.top("Which planet has rings?", 3)
    assert [i for i, _ in top] == [2, 0, 1]  # "has" is shared with Jupiter too, "rings" only with Saturn
    assert top[0][1] > top[1][1] > 0 == top[2][1]
    only = retriever.top("rings ice", 2)
    assert only[0][0] == 2 and only[0][1] > 0 and only[1][1] == 0
    assert [i for i, _ in retriever.top("rings", 10)] == [2, 0, 1]  # k beyond the corpus: all of it
    assert retriever.top_many(["rings", "dusty mars"], 1) == [
        retriever.top("rings", 1),
        retriever.top("dusty mars", 1),
    ]
    assert retriever.top("the and of", 2) == [(0, 0.0), (1, 0.0)]  # stop words only: nothing scores


def test_retrieval_needs_documents_with_words():
    with pytest.raises(QuantTuneError, match="no training documents") as info:
        prompting.Retriever([])
    assert "RAG" in info.value.fix
    with pytest.raises(QuantTuneError, match="no words"):
        prompting.Retriever(["", "the and"])


def test_rag_pastes_the_documents_delimited_and_within_the_budget():
    docs = ["I was charged twice.\nAnswer: billing", "x" * 500, "never reached"]
    turns = prompting.rag(ROW, docs, "classification", LABELS, budget=300)
    assert len(turns) == 1 and ROW[0]["content"] == "I was charged twice."
    text = turns[0]["content"]
    assert text.startswith(
        "Use these examples:\n\n--- Example 1 ---\nI was charged twice.\nAnswer: billing\n\n"
    )
    assert "--- Example 2 ---\n" + "x" * 200 in text and "x" * 300 not in text and "…" in text
    assert "never reached" not in text
    assert text.endswith("--- End of examples ---\n\n" + prompting.task_instruction("classification", LABELS)
                         + "\n\nI was charged twice.")  # fmt: skip
    assert prompting.rag(ROW, [], "instruction") == ROW


def test_document_of_a_row():
    turns = [{"role": "user", "content": "Jupiter is big.\n\nHow big is Jupiter?"}]
    assert prompting.document_of(turns, "big") == "Jupiter is big.\n\nHow big is Jupiter?\nAnswer: big"


def test_importing_prompting_loads_neither_torch_nor_bm25s():
    code = "import sys, core.evaluate.prompting; print(sorted({'torch', 'bm25s'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
