"""Fixtures for core tests: an isolated QuantTune home, tiny real models, the real default model.

The tiny model is a 2-layer Llama with a byte-level BPE tokenizer trained here, offline, on a
few sentences; it is random (it babbles) but real: transformers saves, loads and generates
with it exactly as with a big one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model, build_tiny_tokenizer, write_tiny_gguf

# Set before any test imports huggingface_hub/transformers: they read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def quanttune_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own QuantTune home and an empty Hugging Face cache."""
    home = tmp_path / "quanttune-home"
    monkeypatch.setenv("QUANTTUNE_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return home


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny model folder (single safetensors file). Read-only: copy before changing."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    build_tiny_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sharded_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The same tiny model saved in several shards with an index. Read-only."""
    folder = tmp_path_factory.mktemp("tiny-sharded") / "tiny-llama-sharded"
    build_tiny_model(tiny_tokenizer).save_pretrained(folder, max_shard_size="40KB")
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_copy(tmp_path, tiny_model_dir) -> Path:
    """A private copy of the tiny model folder that a test may damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "tiny-copy"))


@pytest.fixture
def tiny_loaded(tiny_model_dir):
    """The tiny model loaded through the real load job, on the CPU."""
    from core.jobs import JobContext
    from core.models import loading
    from core.models.sources import resolve

    return loading.run(loading.LoadParams(resolve(str(tiny_model_dir)), device="cpu"), JobContext())


# -- the real bundled default model ------------------------------------------------------------
@pytest.fixture(scope="session")
def default_model_home(tmp_path_factory) -> Path:
    """One QuantTune home for the whole session, so the ~40 s GGUF conversion happens once.

    Set QUANTTUNE_TEST_HOME to a lasting folder to keep the conversion between runs.
    """
    lasting = os.environ.get("QUANTTUNE_TEST_HOME")
    return Path(lasting) if lasting else tmp_path_factory.mktemp("default-model-home")


@pytest.fixture(scope="session")
def default_loaded(default_model_home):
    """The bundled default model loaded once per session on the CPU (treat it as read-only)."""
    from core.jobs import JobContext
    from core.models import loading
    from core.models.sources import DEFAULT_REF

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QUANTTUNE_HOME", str(default_model_home))
        return loading.run(loading.LoadParams(DEFAULT_REF, device="cpu"), JobContext())


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny model (same seed as tiny_model_dir) as a GGUF file. Read-only."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    return write_tiny_gguf(build_tiny_model(tiny_tokenizer), tiny_tokenizer, folder / "tiny.gguf")


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    """Calibration and held-out batches [8, 64] from two different word texts."""
    from core.quant.calibration import calibration_batches
    from tests.core.calibration_data import words

    return (
        calibration_batches(tiny_tokenizer, words(1), 8, 64),
        calibration_batches(tiny_tokenizer, words(2), 8, 64),
    )


@pytest.fixture
def single_thread():
    """One torch thread (the sums run in one order) and a seeded generator (new weights such as
    LoRA's A start the same): training runs repeat bit for bit."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)
