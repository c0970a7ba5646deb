"""Read a user's dataset file, recognise its shape (Alpaca, ShareGPT, …) and check its rows.

``read_rows`` reads local JSON, JSON lines, CSV, Parquet and plain text through the ``datasets``
library; plain text gives one row per non-empty line (column ``text``), because packing for
continued pre-training joins lines anyway and a line is what a user sees in an editor.
``detect_shape`` names the shape and maps its roles to columns; ``validate_rows`` lists the
problems row by row (1-based) so the user can drop rows or fix the mapping.

``datasets`` is imported on first use: the window imports this module on the GUI thread.
Local files never touch the network; the arrow cache goes to the app's cache folder.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from core import paths
from core.errors import QuantTuneError

BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
MIN_USABLE_ROWS = 50
_SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class Table:
    """The rows of one file, kept as an arrow-backed ``datasets.Dataset`` (not all in memory)."""

    path: Path
    dataset: Any

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def __len__(self) -> int:
        return self.dataset.num_rows

    def rows(self, limit: int | None = None) -> Iterator[dict]:
        return islice(iter(self.dataset), limit)

    def head(self, n: int = 20) -> list[dict]:
        return list(self.rows(n))

    def subset(self, rows: list[int]) -> Table:
        return Table(self.path, self.dataset.select(rows))


# --- reading -----------------------------------------------------------------------------------


def read_rows(path: str | Path) -> Table:
    """Read a .json/.jsonl/.csv/.parquet/.txt file; raise QuantTuneError saying what to fix."""
    path = Path(path)
    builder = _check_file(path)
    dataset = _load(path, builder)
    if builder == "text":
        dataset = dataset.filter(lambda row: bool(row["text"].strip()))
    elif builder == "json":
        dataset = _unwrap_single_list(path, dataset)
    if dataset.num_rows == 0:
        raise QuantTuneError(f"{path.name} has no rows.", "Add at least one row of data below the header.")
    return Table(path, dataset)


def _check_file(path: Path) -> str:
    """Catch what the library reports badly: missing, wrong kind, empty, binary, not UTF-8."""
    if not path.is_file():
        raise QuantTuneError(f"There is no file at {path}.", "Check the path, or pick the file again.")
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        kinds = ", ".join(BUILDERS)
        raise QuantTuneError(
            f"QuantTune cannot read {path.name}: '{path.suffix or 'no extension'}' is not a data format "
            f"it knows.",
            f"Save the data as one of {kinds} (and name the file so).",
        )
    head = path.read_bytes()[:_SNIFF_BYTES] if path.stat().st_size <= _SNIFF_BYTES else _head(path)
    if not head.strip():
        raise QuantTuneError(f"{path.name} is empty.", "Pick the file that holds your data.")
    if builder == "parquet":
        if not head.startswith(b"PAR1"):
            raise QuantTuneError(f"{path.name} is not a Parquet file.", "Export it again as Parquet.")
        return builder
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise QuantTuneError(f"{path.name} is UTF-16 text, not UTF-8.", "Save it again with UTF-8 encoding.")
    if b"\x00" in head:
        raise QuantTuneError(
            f"{path.name} is a binary file, not {builder.upper()} text.",
            f"Pick the data file itself, or export the data as {path.suffix} text.",
        )
    _check_utf8(path)
    return builder


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(_SNIFF_BYTES)


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                line += chunk[: e.start].count(b"\n")
                raise QuantTuneError(
                    f"{path.name} is not UTF-8 text (first bad byte on line {line}).",
                    "Save it again with UTF-8 encoding (in most editors: Save as… › Encoding › UTF-8).",
                ) from e
            line += chunk.count(b"\n")


def _load(path: Path, builder: str, **options: Any) -> Any:
    import datasets
    from datasets.utils import logging as ds_logging

    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    verbosity = ds_logging.get_verbosity()
    ds_logging.set_verbosity(ds_logging.CRITICAL)  # it logs each parse failure; we raise our own message
    try:
        return datasets.load_dataset(
            builder,
            data_files=str(path),
            split="train",
            cache_dir=str(paths.cache_dir() / "datasets"),
            **options,
        )
    except ValueError as e:
        if "corresponds to no data" in str(e):
            raise QuantTuneError(f"{path.name} has no rows.", "Add rows of data below the header.") from e
        raise _parse_error(path, builder, e) from e
    except Exception as e:  # DatasetGenerationError wraps the parser's error
        raise _parse_error(path, builder, e) from e
    finally:
        ds_logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _parse_error(path: Path, builder: str, error: Exception) -> QuantTuneError:
    causes = []
    while error is not None:
        causes.append(str(error))
        error = error.__cause__ or error.__context__
    detail = " ".join("; ".join(causes[1:] or causes).split())
    where = _json_error_line(path) if builder == "json" else _csv_error_line(detail)
    at = f" at line {where}" if where else ""
    kind = {"json": "JSON", "csv": "CSV"}.get(builder, builder)
    return QuantTuneError(
        f"{path.name} is not valid {kind}{at} ({detail[:200]}).",
        f"Fix the file{at} in a text editor, or export it again as {kind}.",
    )


def _json_error_line(path: Path) -> int | None:
    """The library reports byte offsets or nothing; Python's parser reports the line."""
    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as whole:
        if text.lstrip().startswith("["):
            return whole.lineno
    for number, line in enumerate(text.splitlines(), 1):  # JSON lines: one object per line
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError:
            return number
    return None


def _csv_error_line(detail: str) -> int | None:
    match = re.search(r"\bline (\d+)", detail)
    return int(match.group(1)) if match else None


def _unwrap_single_list(path: Path, dataset: Any) -> Any:
    """``{"data": [{…}, …]}`` reads as one row; read the list inside instead."""
    if dataset.num_rows != 1 or len(dataset.column_names) != 1:
        return dataset
    (name,) = dataset.column_names
    value = dataset[0][name]
    if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return dataset
    return _load(path, "json", field=name)


# --- shapes ------------------------------------------------------------------------------------

UNKNOWN = "unknown"
TASKS = ("instruction", "classification", "qa", "summarization", "causal_lm")


@dataclass(frozen=True)
class _Role:
    kind: str  # "text", "label", "turns" (a chat: list of dicts) or "answer" (text, list or SQuAD dict)
    names: tuple[str, ...]  # column names that fill the role, best first (matched ignoring case)
    required: bool = True
    keys: tuple[str, str] = ("", "")  # for turns: the speaker key and the text key


@dataclass(frozen=True)
class _Spec:
    task: str
    roles: dict[str, _Role]


# Tried in this order; the first whose required roles all find a column wins.
SPECS: dict[str, _Spec] = {
    "messages": _Spec("instruction", {"messages": _Role("turns", ("messages",), keys=("role", "content"))}),
    "sharegpt": _Spec(
        "instruction",
        {"conversations": _Role("turns", ("conversations", "conversation"), keys=("from", "value"))},
    ),
    "alpaca": _Spec(
        "instruction",
        {
            "instruction": _Role("text", ("instruction",)),
            "input": _Role("text", ("input",), required=False),
            "output": _Role("text", ("output",)),
        },
    ),
    "prompt_completion": _Spec(
        "instruction",
        {"prompt": _Role("text", ("prompt",)), "completion": _Role("text", ("completion", "response"))},
    ),
    "qa": _Spec(
        "qa",
        {
            "question": _Role("text", ("question",)),
            "context": _Role("text", ("context",), required=False),
            "answer": _Role("answer", ("answer", "answers")),
        },
    ),
    "summarization": _Spec(
        "summarization",
        {
            "document": _Role("text", ("document", "article", "text", "dialogue")),
            "summary": _Role("text", ("summary", "highlights")),
        },
    ),
    "classification": _Spec(
        "classification",
        {"text": _Role("text", ("text", "sentence")), "label": _Role("label", ("label", "labels"))},
    ),
    "plain_text": _Spec("causal_lm", {"text": _Role("text", ("text", "content"))}),
}


@dataclass(frozen=True)
class Shape:
    """A recognised layout: its name, the task it suits and which column plays each role."""

    name: str
    task: str | None
    mapping: dict[str, str] = field(default_factory=dict)  # role -> column
    columns: tuple[str, ...] = ()

    @property
    def recognised(self) -> bool:
        return self.name != UNKNOWN

    def roles(self) -> list[str]:
        """Every role this shape can fill (for a column picker); none while unknown."""
        return list(SPECS[self.name].roles) if self.recognised else []

    def mapped(self, mapping: dict[str, str]) -> Shape:
        """The user's mapping, whole: the roles it fills name the shape."""
        return self.with_mapping(mapping, name=shape_for_roles(mapping))

    def with_mapping(self, mapping: dict[str, str], name: str | None = None) -> Shape:
        """Apply the user's role -> column choice; ``name`` picks the shape (else kept or guessed)."""
        if name is None:
            name = self.name if self.recognised else shape_for_roles(mapping)
        if name not in SPECS:
            raise QuantTuneError(
                f"'{name}' is not a data shape QuantTune knows.",
                f"Pick one of {', '.join(SPECS)}.",
            )
        merged = {**self.mapping, **mapping} if name == self.name else dict(mapping)
        merged = {role: column for role, column in merged.items() if column}  # "" clears an optional role
        _check_mapping(SPECS[name], merged, self.columns)
        return Shape(name, SPECS[name].task, merged, self.columns)


def shape_for_roles(mapping: dict[str, str]) -> str:
    roles = {role for role, column in mapping.items() if column}
    for name, spec in SPECS.items():
        required = {r for r, role in spec.roles.items() if role.required}
        if required <= roles <= set(spec.roles):
            return name
    raise QuantTuneError(
        f"No data shape has exactly the roles {sorted(roles)}.",
        "Map the columns to the roles of one shape, e.g. instruction + output, or text + label.",
    )


def _check_mapping(spec: _Spec, mapping: dict[str, str], columns: Sequence[str]) -> None:
    problems = [f"'{role}' is not a role of this shape" for role in mapping if role not in spec.roles]
    problems += [f"there is no column '{c}'" for c in mapping.values() if c not in columns]
    required = [r for r, role in spec.roles.items() if role.required]
    problems += [f"'{r}' needs a column" for r in required if r not in mapping]
    if problems:
        raise QuantTuneError(
            "The column mapping does not fit: " + "; ".join(problems) + ".",
            f"Choose, for each role, one of the columns: {', '.join(columns)}.",
        )


def detect_shape(columns: Sequence[str], sample_rows: Sequence[dict]) -> Shape:
    """Recognise the layout from column names (and, for chats, the keys inside the first rows)."""
    columns = tuple(columns)
    for name, spec in SPECS.items():
        mapping = _match_roles(spec, columns, sample_rows)
        if mapping is not None:
            return Shape(name, spec.task, mapping, columns)
    text_columns = [c for c in columns if _sample_of(sample_rows, c, str)]
    if len(columns) == 1 and text_columns:  # one text column of any name: raw text for adaptation
        return Shape("plain_text", "causal_lm", {"text": columns[0]}, columns)
    return Shape(UNKNOWN, None, {}, columns)


def _match_roles(spec: _Spec, columns: tuple[str, ...], sample_rows: Sequence[dict]) -> dict[str, str] | None:
    by_lower = {c.lower(): c for c in columns}
    mapping = {}
    for role_name, role in spec.roles.items():
        if role.kind == "turns":  # a chat column is known by the keys of its turns, whatever its name
            found = next((c for c in columns if _is_chat(sample_rows, c, role.keys)), None)
        else:
            found = next((by_lower[n] for n in role.names if n in by_lower), None)
        if found is None and role.required:
            return None
        if found is not None:
            mapping[role_name] = found
    return mapping


def _sample_of(sample_rows: Sequence[dict], column: str, kind: type) -> list:
    values = [row.get(column) for row in sample_rows if row.get(column) is not None]
    return values if values and all(isinstance(v, kind) for v in values) else []


def _is_chat(sample_rows: Sequence[dict], column: str, keys: tuple[str, str]) -> bool:
    chats = _sample_of(sample_rows, column, list)
    turns = [turn for chat in chats for turn in chat]
    return bool(turns) and all(isinstance(t, dict) and set(keys) <= t.keys() for t in turns)


# --- validation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowProblem:
    """One problem: ``row`` is 1-based (None for the whole dataset); ``kind`` is a stable code."""

    row: int | None
    column: str | None
    kind: str  # "missing", "empty", "wrong_type", "unknown_label" or "too_small"
    message: str


def validate_rows(
    table: Table, shape: Shape, max_rows: int | None = None, labels: Sequence[str] | None = None
) -> list[RowProblem]:
    """Check every row (or the first ``max_rows``) against the shape; warn when too few are usable."""
    if not shape.recognised:
        raise QuantTuneError("The data's shape is not known yet.", "Map the columns to roles first.")
    roles = SPECS[shape.name].roles
    known = {str(label) for label in labels} if labels is not None else None
    problems: list[RowProblem] = []
    checked = usable = 0
    for number, row in enumerate(table.rows(max_rows), 1):
        checked += 1
        found = [
            RowProblem(number, column, kind, f"Row {number}, {column}: {message}")
            for role, column in shape.mapping.items()
            for kind, message in _value_problems(row.get(column), roles[role], known)
        ]
        problems += found
        usable += not found
    usable += len(table) - checked  # rows past max_rows are not judged
    if usable < MIN_USABLE_ROWS:
        problems.append(RowProblem(None, None, "too_small", _too_small(usable)))
    return problems


def _too_small(usable: int) -> str:
    return (
        f"Only {usable} usable row{'s' if usable != 1 else ''}: too few to learn from. "
        f"Add examples (at least {MIN_USABLE_ROWS}, a few hundred is better) or fix the rows listed."
    )


def _value_problems(value: Any, role: _Role, labels: set[str] | None) -> list[tuple[str, str]]:
    if value is None:
        return [("missing", "the field is missing or blank")] if role.required else []
    if role.kind == "label":
        return _label_problems(value, labels)
    if role.kind == "turns":
        return _turn_problems(value, role.keys)
    if role.kind == "answer" and not isinstance(value, str):
        texts = value.get("text") if isinstance(value, dict) else value  # SQuAD: {"text": [...], ...}
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return [("wrong_type", f"expected an answer text, found {_kind(value)}")]
        return [] if any(t.strip() for t in texts) else [("empty", "the answer is empty")]
    if not isinstance(value, str):
        return [("wrong_type", f"expected text, found {_kind(value)}")]
    if not value.strip() and role.required:
        return [("empty", "the text is empty")]
    return []


def _label_problems(value: Any, labels: set[str] | None) -> list[tuple[str, str]]:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return [("wrong_type", f"expected a label (text or a whole number), found {_kind(value)}")]
    if isinstance(value, str) and not value.strip():
        return [("empty", "the label is empty")]
    if labels is not None and str(value) not in labels:
        return [("unknown_label", f"'{value}' is not one of the labels {sorted(labels)}")]
    return []


def _turn_problems(value: Any, keys: tuple[str, str]) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        return [("wrong_type", f"expected a list of turns, found {_kind(value)}")]
    if not value:
        return [("empty", "the conversation has no turns")]
    speaker, text = keys
    for number, turn in enumerate(value, 1):
        if not isinstance(turn, dict) or turn.get(speaker) is None or turn.get(text) is None:
            return [("missing", f"turn {number} needs both '{speaker}' and '{text}'")]
        if not isinstance(turn[text], str):
            return [("wrong_type", f"turn {number}: expected text, found {_kind(turn[text])}")]
        if not turn[text].strip():
            return [("empty", f"turn {number} is empty")]
    return []


def _kind(value: Any) -> str:
    names = {list: "a list", dict: "an object", int: "a number", float: "a number", bool: "true/false"}
    return names.get(type(value), type(value).__name__)
