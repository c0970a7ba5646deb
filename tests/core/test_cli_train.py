"""`quanttune train` on the tiny model: flags, config files, a project, JSON events, row errors, Ctrl-C
and --resume latest."""

import io
import json
import signal
import sys

import pytest

from core import cli, project
from core.finetune.checkpoints import list_checkpoints
from core.finetune.methods import MethodSettings
from core.finetune.runlog import read_metrics
from core.models.sources import ModelRef

QUESTIONS = [("What is the capital of France?", "Paris."), ("What does fine-tuning do?", "It adapts them.")]
SMALL = ["--rank", "4", "--max-length", "64", "--batch-size", "4"]


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"instruction": q, "input": "", "output": a} for i in range(24) for q, a in [QUESTIONS[i % 2]]]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def train(capsys, *args):
    code = cli.main(["train", *args])
    out, err = capsys.readouterr()
    return code, out, err


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def steps_of(found: list[dict]) -> list[int]:
    return [e["done"] for e in found if e["event"] == "progress" and e["message"].startswith("Step")]


def test_a_run_from_flags_prints_a_line_per_step(capsys, tiny_model_dir, dataset, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = train(capsys, "--model", str(tiny_model_dir), "--dataset", str(dataset),
                           "--output", str(out_dir), "--max-steps", "3", *SMALL)  # fmt: skip
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all(all(word in line for word in ("loss ", "lr ", "tokens/s", "ETA")) for line in lines)
    assert "val_loss" in lines[-1]  # the validation at the end
    assert f"saved to {out_dir / 'final'}" in out
    assert json.loads((out_dir / "final/method.json").read_text())["rank"] == 4


def test_a_run_from_flags_alone_trains_with_a_projects_defaults(capsys, tiny_model_dir, dataset, tmp_path):
    defaults, out_dir = project.FinetuneSettings(), tmp_path / "run"
    steps = defaults.save_every + 2
    code, out, err = train(capsys, "--model", str(tiny_model_dir), "--dataset", str(dataset),
                           "--output", str(out_dir), "--max-steps", str(steps), "--batch-size", "1",
                           "--max-length", "32", "--json")  # fmt: skip
    assert code == 0, err
    # a crash after the default interval keeps a checkpoint; validation comes every eval_every steps
    assert [c[0] for c in list_checkpoints(out_dir)] == [defaults.save_every, steps]
    validated = [r["step"] for r in read_metrics(out_dir) if r.get("val_loss") is not None]
    assert validated == [*range(defaults.eval_every, steps, defaults.eval_every), steps]
    split = json.loads((out_dir / "split.json").read_text(encoding="utf-8"))
    test, trained = set(split["test"]), set(split["train"])
    assert len(test) == round(24 * defaults.test_ratio) and not test & trained
    assert json.loads((out_dir / "final/method.json").read_text())["rank"] == MethodSettings().rank


ROWS = {  # a small file of each task that trains as instructions
    "qa": lambda i: {"question": f"Which planet is number {i}?", "context": f"Planet {i} is blue.",
                     "answer": f"Planet {i}"},
    "summarization": lambda i: {"document": f"Meeting {i}. Ana will send the notes by Monday.",
                                "summary": "Ana sends the notes."},
}  # fmt: skip


@pytest.mark.parametrize("task", ROWS)
def test_qa_and_summaries_train_as_instructions(capsys, tiny_model_dir, tmp_path, task):
    data, run = tmp_path / f"{task}.jsonl", tmp_path / "run"
    data.write_text("".join(json.dumps(ROWS[task](i)) + "\n" for i in range(20)), encoding="utf-8")
    code, out, err = train(capsys, "--model", str(tiny_model_dir), "--dataset", str(data), "--task", task,
                           "--output", str(run), "--max-steps", "2", "--json", *SMALL)  # fmt: skip
    assert code == 0, err
    assert events(out)[-1]["steps"] == 2 and (run / "final/method.json").is_file()


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_a_config_file_with_flags_on_top_and_json_events(capsys, tiny_model_dir, dataset, tmp_path, suffix):
    settings = {"model": str(tiny_model_dir), "dataset": "rows.jsonl", "output": "out", "method": "ia3",
                "max_steps": 2, "max_length": 64, "batch_size": 2, "validation_ratio": 0.0}  # fmt: skip
    config = tmp_path / f"train{suffix}"
    if suffix == ".json":
        config.write_text(json.dumps(settings), encoding="utf-8")
    else:
        config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()), encoding="utf-8")
    code, out, err = train(capsys, "--config", str(config), "--max-steps", "3", "--json")
    assert code == 0, err
    found = events(out)  # every line is one JSON event
    assert {e["event"] for e in found} == {"stage", "metric", "progress", "result"}
    assert steps_of(found) == [1, 2, 3]  # the flag beat the file's 2
    assert {e["name"] for e in found if e["event"] == "metric"} >= {
        "loss",
        "learning_rate",
        "tokens_per_second",
    }
    result = found[-1]
    assert result["event"] == "result" and result["steps"] == 3 and result["output"] == str(tmp_path / "out")
    assert json.loads((tmp_path / "out/final/method.json").read_text())["method"] == "ia3"


def test_unknown_settings_and_wrong_types_are_named(capsys, dataset, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"dataset": "rows.jsonl", "epochz": 2}), encoding="utf-8")
    code, out, err = train(capsys, "--config", str(config), "--output", str(tmp_path / "run"))
    assert code == 1 and "epochz" in err and "fix:" in err and "epochs" in err
    config.write_text(
        json.dumps({"dataset": "rows.jsonl", "max_steps": "many", "pack": "yes"}), encoding="utf-8"
    )
    code, out, err = train(capsys, "--config", str(config), "--output", str(tmp_path / "run"), "--json")
    assert code == 1 and "max_steps = 'many' should be a whole number" in err
    assert events(out)[-1]["event"] == "error" and events(out)[-1]["fix"]


def test_a_bad_row_is_named_by_its_number(capsys, tiny_model_dir, dataset, tmp_path):
    rows = dataset.read_text(encoding="utf-8").splitlines()
    rows[2] = json.dumps({"instruction": "Say nothing", "input": "", "output": ""})
    dataset.write_text("\n".join(rows) + "\n", encoding="utf-8")
    args = ["--model", str(tiny_model_dir), "--dataset", str(dataset), "--output", str(tmp_path / "run")]
    code, out, err = train(capsys, *args, *SMALL)
    assert code == 1 and "Row 3" in err and "fix: Drop the rows" in err
    code, out, err = train(capsys, *args, *SMALL, "--json")
    error = events(out)[-1]
    assert code == 1 and error["event"] == "error" and "Row 3" in error["message"] and error["fix"]


class CtrlCWhenSeen(io.StringIO):
    """A terminal whose user presses Ctrl-C as soon as ``text`` appears on it."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.pressed = text, False

    def write(self, s: str) -> int:
        n = super().write(s)
        if not self.pressed and self.text in self.getvalue():
            self.pressed = True
            signal.raise_signal(signal.SIGINT)
        return n


def test_ctrl_c_saves_a_checkpoint_and_resume_latest_goes_on(capsys, monkeypatch, tiny_model_dir, dataset,
                                                             tmp_path):  # fmt: skip
    out_dir = tmp_path / "run"
    args = ["train", "--model", str(tiny_model_dir), "--dataset", str(dataset), "--output", str(out_dir),
            "--max-steps", "4", *SMALL]  # fmt: skip
    handler, captured = signal.getsignal(signal.SIGINT), sys.stdout
    monkeypatch.setattr(sys, "stdout", CtrlCWhenSeen("step 2/4"))
    code = cli.main(args)
    monkeypatch.setattr(sys, "stdout", captured)
    err = capsys.readouterr().err
    assert code == cli.EXIT_CANCELLED and "Stopped at step 2" in err and "--resume latest" in err
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C means what it meant before
    assert [c[0] for c in list_checkpoints(out_dir)] == [2]
    code, out, err = train(capsys, *args[1:], "--resume", "latest", "--json")
    assert code == 0, err
    found = events(out)
    assert steps_of(found) == [3, 4] and found[-1]["steps"] == 4 and len(found[-1]["losses"]) == 4


def test_a_project_run_goes_to_its_artifacts_and_resumes_there(capsys, tiny_model_dir, tiny_copy, dataset):
    p = project.create_project("Units demo")  # under this test's QuantTune home
    p.load.model = ModelRef("folder", str(tiny_model_dir), "tiny").to_dict()
    p.finetune.dataset, p.finetune.max_length, p.finetune.max_steps = str(dataset), 64, 2
    p.finetune.method = {"method": "lora", "rank": 4}
    project.save_project(p)
    code, out, err = train(capsys, "--project", "units demo", "--json")
    assert code == 0, err
    runs = list((p.artifacts / "train").iterdir())
    assert len(runs) == 1 and events(out)[-1]["output"] == str(runs[0])
    assert json.loads((runs[0] / "final/method.json").read_text())["rank"] == 4
    record = project.load_project(p.folder).train_runs[0]  # in the run list, as the Train pane's runs
    assert record["status"] == "finished" and record["summary"]["steps"] == 2
    resume = ["--project", str(p.folder), "--resume", "latest", "--max-steps", "3", "--json"]
    code, out, err = train(capsys, *resume)
    assert code == 0, err
    assert steps_of(events(out)) == [3] and list((p.artifacts / "train").iterdir()) == runs
    again = project.load_project(p.folder)
    assert len(again.train_runs) == 1 and again.train_runs[0]["summary"]["steps"] == 3
    code, _, err = train(capsys, *resume, "--model", str(tiny_copy))  # only the model it trained resumes it
    assert code == 1 and "This run trained tiny" in err
    assert project.load_project(p.folder).train_runs == again.train_runs  # nothing recorded
    code, _, err = train(capsys, "--project", str(p.folder), "--output", str(runs[0]))
    assert code == 1 and "Leave out --output" in err
    code, _, err = train(capsys, "--project", "no such project")
    assert code == 1 and "Units demo" in err


def test_estimate_only(capsys, tiny_model_dir, dataset, tmp_path):
    args = ["--model", str(tiny_model_dir), "--dataset", str(dataset), "--output", str(tmp_path / "run")]
    code, out, err = train(capsys, *args, "--max-steps", "5", "--pack", "--estimate", "--json", *SMALL)
    assert code == 0, err
    result = events(out)[-1]
    assert result["event"] == "result" and result["steps"] == 5
    assert result["seconds"] > 0 and result["peak_memory_bytes"] > 0 and result["fits"] is True
    assert 0 < result["trainable_parameters"] < result["total_parameters"]  # LoRA: the adapters train
    parts = ("weights", "gradients", "optimizer", "activations")
    assert result["peak_memory_bytes"] == sum(result[f"{p}_bytes"] for p in parts)
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    checkpointed = [*args, "--max-steps", "5", "--estimate", "--gradient-checkpointing", *SMALL]
    code, out, err = train(capsys, *checkpointed)
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("trains ") and "parameters" in line for line in lines)
    memory = next(line for line in lines if line.startswith("peak memory about"))
    assert all(p in memory for p in parts) and memory.endswith(": fits")
    assert any(line.startswith("time about") and "for 5 steps" in line for line in lines)
    code, out, err = train(capsys, *checkpointed, "--json")
    assert events(out)[-1]["activations_bytes"] < result["activations_bytes"]  # as the window counts it
