"""The load job on tiny real models: every source kind, the safety opt-ins, errors, cancel."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from core.errors import (
    Cancelled,
    CorruptModel,
    InvalidSettings,
    ModelNotFound,
    NotAModel,
    UnsafeModel,
    UnsupportedModel,
)
from core.jobs import JobContext, run_job
from core.models import loading
from core.models.sources import ModelRef, resolve

from .test_models_safety import make_pickle_only
from .test_models_sources import fake_cache_repo


def load(spec, **kwargs):
    ref = spec if isinstance(spec, ModelRef) else resolve(str(spec))
    return run_job(loading.run, loading.LoadParams(ref, device="cpu", **kwargs), JobContext())


def logits(loaded, text="The capital of France is"):
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(ids).logits


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    return load(tiny_model_dir)


def test_folder_loads_in_eval_mode_on_cpu(reference, tiny_model_dir):
    assert reference.device == "cpu" and reference.folder == tiny_model_dir
    assert not reference.model.training
    assert next(reference.model.parameters()).dtype == torch.float32
    assert reference.card.parameters > 0


def test_sharded_folder_gives_the_same_model(reference, tiny_sharded_dir):
    assert len(list(tiny_sharded_dir.glob("*.safetensors"))) > 1
    assert torch.equal(logits(load(tiny_sharded_dir)), logits(reference))


def test_gguf_file_gives_the_same_model(reference, tiny_gguf):
    loaded = load(tiny_gguf)
    assert loaded.ref.kind == "gguf" and loaded.folder == tiny_gguf.parent
    assert loaded.card.size_on_disk_bytes == tiny_gguf.stat().st_size
    assert loaded.tokenizer.chat_template == reference.tokenizer.chat_template
    assert torch.allclose(logits(loaded), logits(reference), atol=1e-5)
    assert getattr(loaded.model, "hf_quantizer", None) is None  # saveable like any model


def test_unsupported_gguf_architecture_is_named(tmp_path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "madeup")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModel) as info:
        load(tmp_path / "odd.gguf")
    assert "'madeup'" in info.value.message and "llama" in info.value.message


def test_garbage_gguf_is_corrupt(tmp_path):
    (tmp_path / "junk.gguf").write_bytes(b"this is not a gguf file at all")
    with pytest.raises(CorruptModel, match="junk.gguf"):
        load(tmp_path / "junk.gguf")


def test_hf_cache_repo_loads_from_its_snapshot(reference, tmp_path, tiny_model_dir):
    snapshot = fake_cache_repo(
        tmp_path / "hf-cache", "tests/tiny", {p.name: p for p in tiny_model_dir.iterdir()}
    )
    loaded = load("tests/tiny")
    assert loaded.ref.kind == "hf_cache" and loaded.folder == snapshot
    assert torch.equal(logits(loaded), logits(reference))


def test_hf_cache_repo_that_vanished(tmp_path):
    with pytest.raises(ModelNotFound, match="tests/gone"):
        load(ModelRef("hf_cache", "tests/gone", "tests/gone"))


def test_pickle_weights_load_only_when_allowed(reference, tiny_copy):
    make_pickle_only(tiny_copy)
    with pytest.raises(UnsafeModel):
        load(tiny_copy)
    assert torch.equal(logits(load(tiny_copy, allow_pickle=True)), logits(reference))


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_allowed_pickle_still_never_runs_code(tiny_copy, tmp_path):
    make_pickle_only(tiny_copy)
    marker = tmp_path / "code-ran"
    state = torch.load(tiny_copy / "pytorch_model.bin", weights_only=True)
    state["model.norm.weight"] = _Payload(marker)
    torch.save(state, tiny_copy / "pytorch_model.bin")
    with pytest.raises(UnsafeModel, match="other than tensors"):
        load(tiny_copy, allow_pickle=True)
    assert not marker.exists()
    torch.load(tiny_copy / "pytorch_model.bin", weights_only=False)  # the payload is live:
    assert marker.exists()  # an unrestricted unpickler would have run it


def test_missing_tokenizer_is_named(tiny_copy):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (tiny_copy / name).unlink()
    with pytest.raises(NotAModel, match="tokenizer"):
        load(tiny_copy)


def test_unknown_architecture_is_unsupported(tiny_copy):
    config = json.loads((tiny_copy / "config.json").read_text())
    config["model_type"] = "no-such-model"
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (tiny_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModel, match="tiny-copy"):
        load(tiny_copy)


def test_validate_lists_every_problem(tmp_path):
    params = loading.LoadParams(ModelRef("folder", str(tmp_path / "nope"), "nope"), device="tpu")
    problems = params.validate()
    assert len(problems) == 2 and "nope" in problems[0] and "tpu" in problems[1]
    with pytest.raises(InvalidSettings):
        run_job(loading.run, params, JobContext())
    assert loading.LoadParams(ModelRef("folder", str(tmp_path), "x")).validate() == []


def test_cancel_is_honoured_right_after_the_weights_load(tiny_model_dir):
    seen = []

    def sink(event):
        seen.append(event.data.get("message", ""))
        if event.kind == "progress" and event.data["message"].startswith("Loading the weights"):
            ctx.cancel()

    ctx = JobContext(sink)
    with pytest.raises(Cancelled):
        loading.run(loading.LoadParams(resolve(str(tiny_model_dir)), device="cpu"), ctx)
    assert not any(m.startswith("Loading the tokenizer") for m in seen)


def test_corrupt_folder_fails_before_transformers(tmp_path, tiny_model_dir):
    folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "cut"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-8])
    with pytest.raises(CorruptModel, match="model.safetensors"):
        load(folder)


def test_weights_missing_from_the_checkpoint_are_refused_not_randomised(tiny_copy):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_copy / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, tiny_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorruptModel, match="model.layers.1.mlp.up_proj.weight"):
        load(tiny_copy)


def test_weights_of_the_wrong_shape_are_corrupt(tiny_copy):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_copy / "model.safetensors")
    state["model.norm.weight"] = state["model.norm.weight"][:16].clone()
    save_file(state, tiny_copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CorruptModel, match="tiny-copy"):
        load(tiny_copy)


def test_weights_path_without_loading(tmp_path, tiny_model_dir, tiny_gguf):
    ctx = JobContext()
    assert loading.weights_path(resolve(str(tiny_model_dir)), ctx) == tiny_model_dir
    assert loading.weights_path(resolve(str(tiny_gguf)), ctx) == tiny_gguf
    snapshot = fake_cache_repo(tmp_path / "hf-cache", "tests/tiny", {"config.json": "{}"})
    assert loading.weights_path(resolve("tests/tiny"), ctx) == snapshot
    with pytest.raises(ModelNotFound, match="gone.gguf"):
        loading.weights_path(ModelRef("gguf", str(tmp_path / "gone.gguf"), "gone"), ctx)
    with pytest.raises(ModelNotFound, match="gone.gguf"):  # and the load job says the same
        loading.run(loading.LoadParams(ModelRef("gguf", str(tmp_path / "gone.gguf"), "gone")), ctx)
