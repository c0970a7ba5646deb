"""The folder checks that run before transformers reads a model: each refusal names the thing."""

import json
import shutil
import struct

import pytest
import torch

from core.errors import CorruptModel, ModelNotFound, NotAModel, UnsafeModel
from core.models.safety import inspect_folder, read_safetensors_header


def make_pickle_only(folder):
    """Swap the safetensors weights for a torch.save pickle, as old checkpoints have."""
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


def test_good_folder(tiny_model_dir):
    info = inspect_folder(tiny_model_dir)
    assert info.weights_format == "safetensors"
    assert [p.name for p in info.weight_files] == ["model.safetensors"]
    assert info.config["model_type"] == "llama"


def test_sharded_folder(tiny_sharded_dir):
    info = inspect_folder(tiny_sharded_dir)
    assert len(info.weight_files) > 1


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        inspect_folder(tmp_path / "nope")


def test_no_config_is_not_a_model(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(NotAModel) as info:
        inspect_folder(tmp_path)
    assert "is not a model folder: no config.json" in info.value.message
    assert "config.json" in info.value.fix


def test_unreadable_config_is_corrupt(tiny_copy):
    (tiny_copy / "config.json").write_text("{not json")
    with pytest.raises(CorruptModel, match="config.json"):
        inspect_folder(tiny_copy)


def test_no_weights_is_not_a_model(tiny_copy):
    (tiny_copy / "model.safetensors").unlink()
    with pytest.raises(NotAModel, match="no weights"):
        inspect_folder(tiny_copy)


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_custom_code_is_refused_unless_trusted(tiny_copy, config_file):
    path = tiny_copy / config_file
    config = json.loads(path.read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    path.write_text(json.dumps(config))
    with pytest.raises(UnsafeModel) as info:
        inspect_folder(tiny_copy)
    assert "modeling_evil.py" in info.value.message
    assert info.value.needs == "trust_remote_code" and "--trust-remote-code" in info.value.fix
    with pytest.raises(CorruptModel, match="modeling_evil.py"):  # trusted, but the file is missing
        inspect_folder(tiny_copy, trust_remote_code=True)
    (tiny_copy / "modeling_evil.py").write_text("# would run on load\n")
    assert inspect_folder(tiny_copy, trust_remote_code=True).weights_format == "safetensors"


def test_pickle_only_is_refused_unless_allowed(tiny_copy):
    make_pickle_only(tiny_copy)
    with pytest.raises(UnsafeModel) as info:
        inspect_folder(tiny_copy)
    assert "pytorch_model.bin" in info.value.message and "refused by default" in info.value.message
    assert "safetensors" in info.value.fix
    info = inspect_folder(tiny_copy, allow_pickle=True)
    assert info.weights_format == "pickle" and info.weight_files == [tiny_copy / "pytorch_model.bin"]


def test_truncated_safetensors_is_corrupt(tiny_copy):
    path = tiny_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptModel) as info:
        inspect_folder(tiny_copy)
    assert "model.safetensors" in info.value.message and "damaged" in info.value.message


@pytest.mark.parametrize(
    "content",
    [b"", b"\x01\x02", struct.pack("<Q", 10**12) + b"{}", struct.pack("<Q", 4) + b"{no}"],
    ids=["empty", "short", "huge-header", "bad-json"],
)
def test_garbage_safetensors_is_corrupt(tiny_copy, content):
    (tiny_copy / "model.safetensors").write_bytes(content)
    with pytest.raises(CorruptModel, match="model.safetensors"):
        inspect_folder(tiny_copy)


def test_header_reader_accepts_real_files(tiny_model_dir):
    header = read_safetensors_header(tiny_model_dir / "model.safetensors")
    assert "model.embed_tokens.weight" in header


def test_missing_shard_is_corrupt(tmp_path, tiny_sharded_dir):
    folder = shutil.copytree(tiny_sharded_dir, tmp_path / "sharded")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (folder / victim).unlink()
    with pytest.raises(CorruptModel) as info:
        inspect_folder(folder)
    assert victim in info.value.message and "incomplete" in info.value.message
