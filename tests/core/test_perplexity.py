"""Perplexity in fixed windows, and reading the user's text files."""

import math

import pytest
import torch

from core.errors import Cancelled, InvalidSettings, QuantTuneError
from core.evaluate import perplexity as ppl
from core.jobs import JobContext, run_job


def test_perplexity_is_exp_of_the_mean_token_nll(tiny_loaded):
    model, tokenizer = tiny_loaded.model, tiny_loaded.tokenizer
    text = ppl.bundled_text("heldout")
    result = run_job(
        ppl.run, ppl.PerplexityParams(model, tokenizer, text, window=32, max_tokens=200), JobContext()
    )
    ids = tokenizer(text, add_special_tokens=False).input_ids[:192]
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, 192, 32):
            window = torch.tensor([ids[start : start + 32]])
            logits = model(window).logits[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, window[0, 1:], reduction="sum"))
            count += 31
    assert result.windows == 6 and result.tokens == count
    assert result.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_text_shorter_than_a_window_is_refused(tiny_loaded):
    params = ppl.PerplexityParams(tiny_loaded.model, tiny_loaded.tokenizer, "Too short.", window=512)
    with pytest.raises(InvalidSettings, match="fewer than one window"):
        run_job(ppl.run, params, JobContext())


def test_cancel(tiny_loaded):
    ctx = JobContext()
    ctx.cancel()
    params = ppl.PerplexityParams(
        tiny_loaded.model, tiny_loaded.tokenizer, ppl.bundled_text("heldout"), window=32
    )
    with pytest.raises(Cancelled):
        run_job(ppl.run, params, ctx)


def test_bundled_texts_are_disjoint_and_long_enough():
    heldout, calibration = ppl.bundled_text("heldout"), ppl.bundled_text("calibration")
    assert len(heldout.split()) > 4000 and len(calibration.split()) > 8000
    assert heldout[:2000] not in calibration


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"   \n", "empty"),
        ("blob.bin", b"\x00\x01\x02binary", "binary"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "UTF-8"),
        ("rows.jsonl", b'{"text": "ok"}\n{"nope": 1}\n', "line 2"),
        ("broken.jsonl", b"{not json\n", "line 1"),
    ],
)
def test_bad_text_files_get_clear_messages(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(QuantTuneError, match=message) as info:
        ppl.read_text_file(path)
    assert info.value.fix


def test_jsonl_rows_are_joined(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "first"}\n\n{"text": "second"}\n')
    assert ppl.read_text_file(path) == "first\n\nsecond"
