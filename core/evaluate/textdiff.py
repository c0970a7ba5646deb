"""Word-level differences between a reference and a model's output, for the output table and the report.

Words and punctuation marks are compared one by one (case aside: "The" and "the" are the same word
to a reader, and the metrics normalise case too); whitespace is kept with the word before it, so the
output reads as it was written. ``difflib`` aligns the two sequences: a reference of a few hundred
words against an output of as many takes milliseconds.
"""

from __future__ import annotations

import html
import re
from difflib import SequenceMatcher

SAME, ADDED, MISSING = "same", "added", "missing"
# a word (letters, digits, underscore) or one punctuation mark, with the whitespace after it
_TOKEN = re.compile(r"(\w+|[^\w\s])(\s*)")
ADDED_STYLE = "background-color:#fbd5d0;"
MISSING_STYLE = "color:#8a8f98;text-decoration:line-through;"


def _tokens(text: str) -> tuple[str, list[tuple[int, int]], list[str]]:
    """(leading whitespace, (start, end) of each token with its trailing whitespace, comparison keys)."""
    lead = text[: len(text) - len(text.lstrip())]
    spans, keys = [], []
    for match in _TOKEN.finditer(text, len(lead)):
        spans.append((match.start(), match.end()))
        keys.append(match.group(1).casefold())
    return lead, spans, keys


def _text(text: str, spans: list[tuple[int, int]], first: int, last: int) -> str:
    return text[spans[first][0] : spans[last - 1][1]]


def word_diff(reference: str, output: str) -> list[tuple[str, str]]:
    """The output as (text, tag) pieces: "same" and "added" pieces joined give the output back exactly;
    "missing" pieces hold reference words the output lacks, where they would have stood (stripped of
    surrounding whitespace, since they are no part of the output)."""
    lead, out_spans, out_keys = _tokens(output)
    _ref_lead, ref_spans, ref_keys = _tokens(reference)
    pieces: list[tuple[str, str]] = [(lead, SAME)] if lead else []
    matcher = SequenceMatcher(None, ref_keys, out_keys, autojunk=False)  # autojunk drops common words
    for op, r0, r1, o0, o1 in matcher.get_opcodes():
        if op in ("delete", "replace"):
            pieces.append((_text(reference, ref_spans, r0, r1).strip(), MISSING))
        if op in ("insert", "replace"):
            pieces.append((_text(output, out_spans, o0, o1), ADDED))
        if op == "equal":
            pieces.append((_text(output, out_spans, o0, o1), SAME))
    return pieces


def diff_html(reference: str, output: str) -> str:
    """The output as escaped HTML: added words on a light red background, the reference's missing words
    struck through in grey. Line breaks are kept (``white-space: pre-wrap``)."""
    pieces = word_diff(reference, output)
    parts: list[str] = []
    for i, (text, tag) in enumerate(pieces):
        if tag == MISSING:
            text = _spaced(
                text, pieces[i - 1][0] if i else "", pieces[i + 1][0] if i + 1 < len(pieces) else ""
            )
        body = text.strip()
        if tag == SAME or not body:
            parts.append(html.escape(text))
            continue
        # the whitespace around a word stays outside its span: no red or struck-through gaps
        lead, tail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
        style = ADDED_STYLE if tag == ADDED else MISSING_STYLE
        parts.append(
            f'{html.escape(lead)}<span style="{style}">{html.escape(body)}</span>{html.escape(tail)}'
        )
    return f'<span style="white-space:pre-wrap;">{"".join(parts)}</span>'


def _spaced(text: str, previous: str, following: str) -> str:
    """A missing piece with the spaces it needs not to run into its neighbours ("the" + "cat")."""
    if _is_word_char(previous[-1:]) and _is_word_char(text[:1]):
        text = " " + text
    if _is_word_char(text[-1:]) and _is_word_char(following[:1]):
        text = text + " "
    return text


def _is_word_char(char: str) -> bool:
    return bool(char) and (char.isalnum() or char == "_")


def normalised(text: str) -> str:
    """What ``disagree`` compares: whitespace runs collapsed, case folded."""
    return " ".join(text.split()).casefold()


def disagree(outputs: list[str]) -> bool:
    """Whether the outputs differ beyond whitespace and case."""
    return len({normalised(o) for o in outputs}) > 1
