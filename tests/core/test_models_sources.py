"""Where models come from: resolve() of every kind, the local HF cache listing, cheap imports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ModelError, ModelNotFound, NotAModel
from core.models.sources import DEFAULT_REF, ModelRef, list_available, resolve

ROOT = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache_repo(cache: Path, repo_id: str, files: dict[str, str | bytes | Path], kind: str = "models"):
    """Lay out a repo the way huggingface_hub does (refs/main -> snapshots/<commit>/...)."""
    repo = cache / f"{kind}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        target = snapshot / name
        if isinstance(content, Path):
            target.write_bytes(content.read_bytes())
        else:
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return snapshot


@pytest.fixture
def hf_cache(tmp_path, tiny_model_dir) -> Path:
    """A local HF cache holding the tiny model, a classifier, a dataset and a broken repo."""
    cache = tmp_path / "hf-cache"  # the autouse fixture points HF_HUB_CACHE here
    fake_cache_repo(cache, "tests/tiny-llama", {p.name: p for p in tiny_model_dir.iterdir()})
    bert = json.dumps({"architectures": ["BertForSequenceClassification"], "model_type": "bert"})
    fake_cache_repo(cache, "tests/classifier", {"config.json": bert})
    fake_cache_repo(cache, "tests/some-data", {"data.csv": "a,b\n"}, kind="datasets")
    fake_cache_repo(cache, "tests/no-config", {"README.md": "hello"})
    (cache / "models--tests--broken").mkdir()  # no snapshots folder: a damaged repo
    return cache


def test_default_round_trips():
    assert resolve("default") == DEFAULT_REF
    assert resolve("  DEFAULT ") == DEFAULT_REF
    assert ModelRef.from_dict(DEFAULT_REF.to_dict()) == DEFAULT_REF


def test_folder_and_weights_file_resolve_to_the_folder(tiny_model_dir):
    ref = resolve(str(tiny_model_dir))
    assert ref == ModelRef("folder", str(tiny_model_dir.resolve()), tiny_model_dir.name)
    assert resolve(str(tiny_model_dir / "model.safetensors")) == ref
    assert ModelRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref


def test_gguf_file_resolves_to_gguf(tmp_path):
    path = tmp_path / "model.Q4.gguf"
    path.write_bytes(b"GGUF")
    assert resolve(str(path)) == ModelRef("gguf", str(path.resolve()), "model.Q4")


def test_relative_path_becomes_absolute(tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tiny_model_dir.parent)
    ref = resolve(tiny_model_dir.name)
    assert Path(ref.location).is_absolute() and ref.kind == "folder"


def test_other_file_is_not_a_model(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    with pytest.raises(NotAModel, match="notes.txt"):
        resolve(str(path))


def test_repo_id_found_in_local_cache(hf_cache):
    assert resolve("tests/tiny-llama") == ModelRef("hf_cache", "tests/tiny-llama", "tests/tiny-llama")


@pytest.mark.parametrize("spec", ["tests/not-there", "/no/such/folder", "", "   "])
def test_missing_model_raises_not_found_with_a_fix(hf_cache, spec):
    with pytest.raises(ModelNotFound) as info:
        resolve(spec)
    assert info.value.fix
    if spec.strip():
        assert spec in info.value.message


def test_bad_saved_reference_is_a_model_error():
    with pytest.raises(ModelError, match="kind"):
        ModelRef.from_dict({"kind": "ftp", "location": "x", "name": "x"})


def test_list_available_offers_default_and_causal_lms_in_the_cache(hf_cache):
    found = list_available()
    refs = [m.ref for m in found]
    assert refs == [DEFAULT_REF, ModelRef("hf_cache", "tests/tiny-llama", "tests/tiny-llama")]
    tiny = found[1]
    snapshot = hf_cache / "models--tests--tiny-llama" / "snapshots" / COMMIT
    assert tiny.size_bytes == sum(p.stat().st_size for p in snapshot.iterdir())
    assert "LlamaForCausalLM" in tiny.detail
    assert found[0].size_bytes and found[0].size_bytes > 50_000_000  # the bundled GGUF
    assert tiny.to_dict()["ref"] == tiny.ref.to_dict()


def test_list_available_without_any_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nowhere"))
    assert [m.ref for m in list_available()] == [DEFAULT_REF]


def test_list_available_with_a_file_where_the_cache_should_be(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("oops")
    monkeypatch.setenv("HF_HUB_CACHE", str(not_a_dir))
    assert [m.ref for m in list_available()] == [DEFAULT_REF]


def test_model_modules_import_without_torch():
    """The GUI imports these on its own thread; torch and transformers must wait for the worker."""
    modules = "core.device, core.generate, core.models.sources, core.models.safety, core.models.card, "
    modules += "core.models.loading, core.models.default_model"
    script = f"import sys, {modules}\nprint('torch' in sys.modules, 'transformers' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False False"
