"""Word differences between a reference and an output, checked by hand on small strings."""

from __future__ import annotations

from core.evaluate.textdiff import ADDED_STYLE, MISSING_STYLE, diff_html, disagree, word_diff


def _output_of(pieces: list[tuple[str, str]]) -> str:
    return "".join(text for text, tag in pieces if tag != "missing")


def test_a_replaced_word_is_missing_then_added():
    assert word_diff("the cat sat", "the dog sat") == [
        ("the ", "same"),
        ("cat", "missing"),
        ("dog ", "added"),
        ("sat", "same"),
    ]


def test_same_and_added_pieces_give_the_output_back_exactly():
    output = "  Paris is\nthe capital,  of France!"
    pieces = word_diff("The capital of France is Paris.", output)
    assert _output_of(pieces) == output
    assert ("Paris is\n", "added") in pieces
    assert ("is Paris.", "missing") in pieces


def test_case_is_no_difference_but_punctuation_is():
    assert word_diff("Paris.", "paris") == [("paris", "same"), (".", "missing")]


def test_an_empty_reference_makes_everything_added_and_an_empty_output_everything_missing():
    assert word_diff("", "hello there") == [("hello there", "added")]
    assert word_diff("hello there", "") == [("hello there", "missing")]
    assert word_diff("", "") == []


def test_identical_texts_are_one_same_piece():
    assert word_diff("a b c", "a b c") == [("a b c", "same")]


def test_html_marks_added_and_missing_words_and_keeps_spaces_outside_the_spans():
    page = diff_html("the cat sat", "the dog sat")
    assert f'<span style="{ADDED_STYLE}">dog</span> sat' in page
    assert f'the <span style="{MISSING_STYLE}">cat</span> <span' in page
    assert "white-space:pre-wrap" in page


def test_html_escapes_markup_in_the_texts():
    page = diff_html("a <b>x</b>", "a <b>y</b> & z")
    assert "<b>" not in page and "&lt;b&gt;" in page and "&amp;" in page
    assert f'<span style="{ADDED_STYLE}">y</span>' in page
    assert f'<span style="{MISSING_STYLE}">x</span>' in page


def test_a_missing_word_at_the_end_does_not_run_into_the_word_before():
    assert diff_html("the cat", "the") == (
        f'<span style="white-space:pre-wrap;">the <span style="{MISSING_STYLE}">cat</span></span>'
    )


def test_disagree_ignores_whitespace_and_case_only():
    assert not disagree(["Paris", " paris ", "PARIS"])
    assert not disagree(["the  capital\nis Paris", "The capital is paris"])
    assert disagree(["Paris", "Paris."])
    assert disagree(["Paris", "Lyon", "Paris"])
    assert not disagree([]) and not disagree(["only one"])
