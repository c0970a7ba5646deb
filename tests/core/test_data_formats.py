"""Reading dataset files, recognising their shape and checking their rows (files written in tmp_path)."""

import json
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.data.formats import detect_shape, read_rows, validate_rows
from core.errors import QuantTuneError

ALPACA = [
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris."},
    {"instruction": "Translate to German.", "input": "Good morning", "output": "Guten Morgen."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def alpaca_rows(n):
    return [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(n)]


# --- reading -----------------------------------------------------------------------------------


def test_every_format_reads_the_same_rows(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ALPACA), encoding="utf-8")
    write_jsonl(tmp_path / "lines.json", ALPACA)
    write_jsonl(tmp_path / "rows.jsonl", ALPACA)
    (tmp_path / "rows.csv").write_text(
        'instruction,input,output\nName the capital of France.,,Paris.\nTranslate to German.,"Good morning",'
        "Guten Morgen.\n",
        encoding="utf-8",
    )
    pq.write_table(pa.Table.from_pylist(ALPACA), tmp_path / "rows.parquet")
    for name in ("list.json", "lines.json", "rows.jsonl", "rows.csv", "rows.parquet"):
        table = read_rows(tmp_path / name)
        assert table.columns == ["instruction", "input", "output"], name
        assert len(table) == 2
        assert table.head()[1]["output"] == "Guten Morgen.", name


def test_text_gives_one_row_per_non_empty_line(tmp_path):
    (tmp_path / "notes.txt").write_text("First line.\n\n   \nSecond line.\nThird.\n", encoding="utf-8")
    table = read_rows(tmp_path / "notes.txt")
    assert [r["text"] for r in table.rows()] == ["First line.", "Second line.", "Third."]


def test_a_json_object_holding_one_list_reads_the_list(tmp_path):
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ALPACA}), encoding="utf-8")
    assert read_rows(tmp_path / "wrapped.json").columns == ["instruction", "input", "output"]


def test_reading_needs_no_network_and_caches_in_the_app_folder(tmp_path, monkeypatch, quanttune_home):
    def refuse(*args, **kwargs):
        raise OSError("network used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    table = read_rows(write_jsonl(tmp_path / "rows.jsonl", ALPACA))
    assert len(table) == 2
    assert any((quanttune_home / "cache" / "datasets").iterdir())


def test_an_edited_file_is_read_again_not_served_from_the_cache(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ALPACA[:1])
    assert len(read_rows(path)) == 1
    write_jsonl(path, ALPACA)
    assert len(read_rows(path)) == 2


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("data.xlsx", b"PK\x03\x04", ["'.xlsx' is not a data format", ".jsonl"]),
        ("empty.jsonl", b"", ["is empty"]),
        ("blank.csv", b"\n \n", ["is empty"]),
        ("header.csv", b"text,label\n", ["has no rows", "Add"]),
        ("bad.json", b'[{"a": "x"},\n {"a": "y"\n]', ["not valid JSON at line 3", "Fix the file at line 3"]),
        ("bad.jsonl", b'{"a": "x"}\n{"a": "y"}\n{"a": \n', ["not valid JSON at line 3"]),
        ("bad.csv", b"a,b\n1,x\n2,y,z\n", ["not valid CSV at line 3"]),
        ("pic.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["binary file", "Pick the data file"]),
        ("latin.csv", "text\ncaf\u00e9\nna\u00efve\n".encode("latin-1"), ["not UTF-8", "line 2", "UTF-8"]),
        ("wide.txt", "hello".encode("utf-16"), ["UTF-16", "UTF-8"]),
        ("fake.parquet", b"a,b\n1,2\n", ["not a Parquet file"]),
    ],
)
def test_bad_files_get_a_clear_message_and_fix(tmp_path, name, content, words):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(QuantTuneError) as caught:
        read_rows(tmp_path / name)
    assert caught.value.fix
    for word in words:
        assert word in str(caught.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(QuantTuneError, match="There is no file at .*nowhere.jsonl") as caught:
        read_rows(tmp_path / "nowhere.jsonl")
    assert "pick the file again" in caught.value.fix


# --- shapes ------------------------------------------------------------------------------------

SHAPE_SAMPLES = {
    "alpaca": (ALPACA, "instruction", {"instruction": "instruction", "input": "input", "output": "output"}),
    "sharegpt": (
        [
            {
                "id": "a1",
                "conversations": [
                    {"from": "human", "value": "How do I boil an egg?"},
                    {"from": "gpt", "value": "Simmer it for nine minutes."},
                ],
            }
        ],
        "instruction",
        {"conversations": "conversations"},
    ),
    "messages": (
        [
            {
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            }
        ],
        "instruction",
        {"messages": "messages"},
    ),
    "prompt_completion": (
        [{"prompt": "The sky is", "completion": " blue."}, {"prompt": "Water is", "completion": " wet."}],
        "instruction",
        {"prompt": "prompt", "completion": "completion"},
    ),
    "classification": (
        [{"text": "Loved it!", "label": "positive"}, {"text": "Dull and long.", "label": "negative"}],
        "classification",
        {"text": "text", "label": "label"},
    ),
    "qa": (
        [
            {
                "id": "5733be28",
                "title": "Notre_Dame",
                "context": "The Grotto is a replica of the grotto at Lourdes.",
                "question": "What is the Grotto a replica of?",
                "answers": {"text": ["the grotto at Lourdes"], "answer_start": [27]},
            }
        ],
        "qa",
        {"question": "question", "context": "context", "answer": "answers"},
    ),
    "summarization": (
        [{"article": "(CNN) A long news story about rain.", "highlights": "It rained.", "id": "x1"}],
        "summarization",
        {"document": "article", "summary": "highlights"},
    ),
    "plain_text": ([{"passage": "Chapter one. It was a bright cold day."}], "causal_lm", {"text": "passage"}),
}


@pytest.mark.parametrize("name", SHAPE_SAMPLES)
def test_every_shape_is_recognised(name):
    rows, task, mapping = SHAPE_SAMPLES[name]
    shape = detect_shape(list(rows[0]), rows)
    assert (shape.name, shape.task, shape.mapping) == (name, task, mapping)


def test_other_spellings_are_recognised():
    doc = detect_shape(["Text", "Summary"], [{"Text": "Long text.", "Summary": "Short."}])
    assert (doc.name, doc.mapping) == ("summarization", {"document": "Text", "summary": "Summary"})
    chat = detect_shape(["dialog"], [{"dialog": [{"from": "human", "value": "hi"}]}])
    assert (chat.name, chat.mapping) == ("sharegpt", {"conversations": "dialog"})
    squad = detect_shape(["question", "answer"], [{"question": "Who?", "answer": "Me."}])
    assert (squad.name, squad.mapping) == ("qa", {"question": "question", "answer": "answer"})


def test_unknown_shape_lists_columns_and_takes_the_users_mapping(tmp_path):
    rows = [{"q": "What is 2+2?", "a": "4", "source": "quiz"}]
    shape = detect_shape(["q", "a", "source"], rows)
    assert (shape.name, shape.task, shape.recognised, shape.columns) == (
        "unknown",
        None,
        False,
        ("q", "a", "source"),
    )
    mapped = shape.with_mapping({"instruction": "q", "output": "a"})
    assert (mapped.name, mapped.task, mapped.mapping) == (
        "alpaca",
        "instruction",
        {"instruction": "q", "output": "a"},
    )
    as_qa = shape.with_mapping({"question": "q", "answer": "a"})
    assert (as_qa.name, as_qa.task) == ("qa", "qa")
    with pytest.raises(QuantTuneError, match="there is no column 'answer'") as caught:
        shape.with_mapping({"instruction": "q", "output": "answer"})
    assert "q, a, source" in caught.value.fix
    with pytest.raises(QuantTuneError, match="'output' needs a column"):
        shape.with_mapping({"instruction": "q"}, name="alpaca")
    with pytest.raises(QuantTuneError, match="No data shape has exactly the roles"):
        shape.with_mapping({"question": "q", "label": "a"})


def test_mapping_a_recognised_shape_keeps_the_other_roles():
    shape = detect_shape(["text", "label", "title"], [{"text": "x", "label": "y", "title": "z"}])
    remapped = shape.with_mapping({"text": "title"})
    assert remapped.mapping == {"text": "title", "label": "label"}
    assert shape.roles() == ["text", "label"]


# --- validation --------------------------------------------------------------------------------


def test_validation_names_each_problem_with_its_row_number(tmp_path):
    rows = alpaca_rows(60)
    rows[2]["output"] = "   "  # row 3: empty
    del rows[4]["instruction"]  # row 5: missing (JSON lines fill the column with null)
    rows[6]["input"] = ""  # optional input may be empty: no problem
    table = read_rows(write_jsonl(tmp_path / "train.jsonl", rows))
    shape = detect_shape(table.columns, table.head())
    problems = validate_rows(table, shape)
    assert [(p.row, p.column, p.kind) for p in problems] == [
        (3, "output", "empty"),
        (5, "instruction", "missing"),
    ]
    assert problems[0].message.startswith("Row 3, output:")


def test_validation_finds_unknown_labels_and_wrong_types(tmp_path):
    rows = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg", "tags": ["a"]} for i in range(60)]
    rows[9]["label"] = "neutral"
    table = read_rows(write_jsonl(tmp_path / "reviews.jsonl", rows))
    shape = detect_shape(table.columns, table.head())
    problems = validate_rows(table, shape, labels=["pos", "neg"])
    assert [(p.row, p.kind) for p in problems] == [(10, "unknown_label")]
    assert "'neutral' is not one of the labels" in problems[0].message
    as_text = shape.with_mapping({"text": "tags"})  # a list where text is expected
    wrong = validate_rows(table, as_text, max_rows=3)
    assert [(p.row, p.column, p.kind) for p in wrong] == [
        (1, "tags", "wrong_type"),
        (2, "tags", "wrong_type"),
        (3, "tags", "wrong_type"),
    ]
    assert "expected text, found a list" in wrong[0].message


def test_validation_checks_chat_turns_and_squad_answers(tmp_path):
    chats = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ] * 60
    chats = [dict(c) for c in chats]
    chats[1] = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]}
    table = read_rows(write_jsonl(tmp_path / "chat.jsonl", chats))
    problems = validate_rows(table, detect_shape(table.columns, table.head()))
    assert [(p.row, p.kind) for p in problems] == [(2, "empty")]
    assert "turn 2 is empty" in problems[0].message
    squad = [{"question": "Q?", "context": "C.", "answers": {"text": ["A"], "answer_start": [0]}}] * 59
    squad.append({"question": "Q?", "context": "C.", "answers": {"text": [], "answer_start": []}})
    table = read_rows(write_jsonl(tmp_path / "squad.jsonl", squad))
    problems = validate_rows(table, detect_shape(table.columns, table.head()))
    assert [(p.row, p.column, p.kind) for p in problems] == [(60, "answers", "empty")]


def test_a_small_dataset_is_flagged_with_the_count_and_the_remedy(tmp_path):
    rows = alpaca_rows(52)
    rows[0]["output"] = ""
    rows[1]["output"] = ""
    rows[2]["output"] = ""
    table = read_rows(write_jsonl(tmp_path / "few.jsonl", rows))
    problems = validate_rows(table, detect_shape(table.columns, table.head()))
    assert [p.kind for p in problems] == ["empty", "empty", "empty", "too_small"]
    assert problems[-1].row is None
    assert "Only 49 usable rows" in problems[-1].message and "Add examples" in problems[-1].message
    full = read_rows(write_jsonl(tmp_path / "enough.jsonl", alpaca_rows(50)))
    assert validate_rows(full, detect_shape(full.columns, full.head())) == []
    # Checking only the first rows does not call a big dataset small.
    assert validate_rows(full, detect_shape(full.columns, full.head()), max_rows=5) == []


def test_an_unknown_shape_must_be_mapped_before_validation(tmp_path):
    table = read_rows(write_jsonl(tmp_path / "odd.jsonl", [{"q": "a", "a": "b"}]))
    with pytest.raises(QuantTuneError, match="Map the columns"):
        validate_rows(table, detect_shape(table.columns, table.head()))
