"""Projects: create, save, reopen, rename, duplicate, delete, migrate, and atomic writes."""

import json
import os
import subprocess
import sys

import pytest

from core import atomic, project
from core.errors import ProjectError, StorageError


@pytest.fixture
def root(tmp_path):
    return tmp_path / "projects"


def test_create_save_reopen(root):
    p = project.create_project("Sentiment: INT4 vs INT8", root)
    assert p.folder.parent == root and (p.folder / "project.json").is_file()
    assert p.artifacts.is_dir()
    p.load.model = {"kind": "default", "location": "", "name": "SmolLM2"}
    p.load.device = "cpu"
    project.save_project(p)
    again = project.load_project(p.folder)
    assert again.name == "Sentiment: INT4 vs INT8"
    assert again.load.model["kind"] == "default" and again.load.device == "cpu"
    data = json.loads((p.folder / "project.json").read_text())
    assert data["schema_version"] == project.SCHEMA_VERSION


def test_same_name_gets_its_own_folder(root):
    a = project.create_project("demo", root)
    b = project.create_project("demo", root)
    assert a.folder != b.folder
    assert {x.folder for x in project.list_projects(root)} == {a.folder, b.folder}


def test_rename_duplicate_delete(root):
    p = project.create_project("first", root)
    (p.artifacts / "report.json").write_text("{}")
    project.rename_project(p, "renamed")
    assert project.load_project(p.folder).name == "renamed"
    copy = project.duplicate_project(p)
    assert copy.folder != p.folder and copy.name == "renamed copy"
    assert (copy.artifacts / "report.json").is_file()
    assert project.load_project(copy.folder).name == "renamed copy"
    project.delete_project(p)
    assert not p.folder.exists()
    assert [x.name for x in project.list_projects(root)] == ["renamed copy"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
def test_bad_names_are_refused(root, name):
    with pytest.raises(ProjectError, match="name"):
        project.create_project(name, root)


def test_migrates_version_1(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "project.json").write_text(
        json.dumps({"schema_version": 1, "name": "old one", "model_path": "/models/llama.gguf"})
    )
    p = project.load_project(folder)
    assert p.name == "old one"
    assert p.load.model == {"kind": "gguf", "location": "/models/llama.gguf", "name": "llama.gguf"}
    project.save_project(p)
    assert json.loads((folder / "project.json").read_text())["schema_version"] == project.SCHEMA_VERSION


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"schema_version": 1, "name": 5, "created": []}']
)
def test_damaged_project_file_names_file_and_fix(tmp_path, content):
    (tmp_path / "project.json").write_text(content)
    with pytest.raises(ProjectError) as info:
        project.load_project(tmp_path)
    assert "project.json" in info.value.message and info.value.fix


def test_newer_schema_is_refused(tmp_path):
    (tmp_path / "project.json").write_text(json.dumps({"schema_version": 99, "name": "x"}))
    with pytest.raises(ProjectError, match="newer QuantTune"):
        project.load_project(tmp_path)


def test_damaged_project_is_skipped_in_list(root):
    good = project.create_project("good", root)
    bad = root / "bad"
    bad.mkdir()
    (bad / "project.json").write_text("{")
    assert [p.folder for p in project.list_projects(root)] == [good.folder]


def test_save_after_folder_deleted_says_so(root):
    p = project.create_project("gone", root)
    project.delete_project(p)
    with pytest.raises(ProjectError, match="no longer exists"):
        project.save_project(p)


def test_full_disk_keeps_previous_version(tmp_path, monkeypatch):
    target = tmp_path / "project.json"
    atomic.write_json(target, {"v": 1})

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageError, match="disk is full"):
        atomic.write_json(target, {"v": 2, "pad": "x" * 100_000})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["project.json"], "temp file left behind"


KILLER = r"""
import os, sys
from core import atomic
path = sys.argv[1]
i = 0
while True:
    i += 1
    atomic.write_json(path, {"i": i, "pad": "x" * 200_000})
    if i == 3:
        print("ready", flush=True)
"""


def test_kill_during_writes_never_leaves_a_corrupt_file(tmp_path):
    """SIGKILL a process that saves in a loop: the file always parses."""
    target = tmp_path / "project.json"
    for _ in range(5):
        with subprocess.Popen([sys.executable, "-c", KILLER, str(target)], stdout=subprocess.PIPE) as proc:
            assert proc.stdout.readline().strip() == b"ready"
            proc.kill()
        assert json.loads(target.read_text())["i"] >= 3


def test_staged_dir_is_all_or_nothing(tmp_path):
    target = tmp_path / "artifact"
    with atomic.staged_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic.staged_dir(target) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("job failed halfway")
    assert (target / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_migrates_version_2_adds_inspect_defaults(tmp_path):
    (tmp_path / "project.json").write_text(
        json.dumps({"schema_version": 2, "name": "v2", "load": {"model": None, "device": "cpu"}})
    )
    p = project.load_project(tmp_path)
    assert p.load.device == "cpu"
    assert p.inspect.bits == 4 and p.inspect.group_size == 64 and p.inspect.recommended == {}
    p.inspect.recommended["w"] = {"symmetric": True, "granularity": "channel"}
    project.save_project(p)
    assert project.load_project(tmp_path).inspect.recommended == {
        "w": {"symmetric": True, "granularity": "channel"}
    }


def test_migrates_version_3_adds_quantize_defaults(tmp_path):
    (tmp_path / "project.json").write_text(
        json.dumps({"schema_version": 3, "name": "v3", "inspect": {"bits": 8, "recommended": {}}})
    )
    p = project.load_project(tmp_path)
    assert p.inspect.bits == 8
    assert (p.quantize.precision, p.quantize.granularity, p.quantize.group_size) == ("int4", "group", 64)
    assert p.quantize.symmetric is None and p.quantize.overrides == {}
    p.quantize.overrides["model.layers.0.mlp.down_proj"] = "int8"
    p.quantize.symmetric = False
    project.save_project(p)
    again = project.load_project(tmp_path)
    assert again.quantize.overrides == {"model.layers.0.mlp.down_proj": "int8"}
    assert again.quantize.symmetric is False


def test_migrates_version_4_adds_finetune_defaults(tmp_path):
    (tmp_path / "project.json").write_text(
        json.dumps({"schema_version": 4, "name": "v4", "quantize": {"precision": "int8"}, "runs": []})
    )
    p = project.load_project(tmp_path)
    assert p.quantize.precision == "int8"
    assert (p.finetune.dataset, p.finetune.task, p.finetune.batch_size) == ("", "instruction", 4)
    assert p.train_runs == []
    p.finetune.method = {"method": "ia3"}
    p.finetune.dataset = "/data/rows.jsonl"
    project.save_project(p)
    again = project.load_project(tmp_path)
    assert again.finetune.method == {"method": "ia3"} and again.finetune.dataset == "/data/rows.jsonl"


def test_migrates_version_5_adds_evaluate_defaults(tmp_path):
    (tmp_path / "project.json").write_text(
        json.dumps({"schema_version": 5, "name": "v5", "finetune": {"task": "classification"}})
    )
    p = project.load_project(tmp_path)
    assert p.finetune.task == "classification"
    assert (p.evaluate.few_shot, p.evaluate.kfold_k, p.evaluate.marks) == (3, 5, {})
    assert p.evaluations == []
    p.evaluate.marks["base|7"] = {"mark": "bad", "output": "Paris"}
    project.save_project(p)
    assert project.load_project(tmp_path).evaluate.marks == {"base|7": {"mark": "bad", "output": "Paris"}}


def test_a_staged_folder_under_a_file_is_a_storage_error(tmp_path):
    from core.errors import StorageError

    (tmp_path / "plain-file").write_text("x")
    with pytest.raises(StorageError), atomic.staged_dir(tmp_path / "plain-file" / "out"):
        pass
