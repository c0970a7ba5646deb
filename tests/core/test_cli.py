"""`quanttune <step>`: the same jobs as the panes, headless, with --json."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core import cli


def run_cli(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "load", "ask", "inspect"):
        assert command in out
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "--json" in capsys.readouterr().out


def test_models_json_lists_the_bundled_default(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    kinds = [m["ref"]["kind"] for m in json.loads(out)]
    assert "default" in kinds


def test_load_json_prints_the_card(capsys, tiny_model_dir):
    code, out, _ = run_cli(capsys, "load", str(tiny_model_dir), "--json", "--device", "cpu")
    assert code == 0
    card = json.loads(out)
    assert card["architecture"] == "LlamaForCausalLM" and card["layers"] == 2
    assert set(card["memory_bytes"]) == {"FP32", "FP16", "BF16", "INT8", "INT4"}


def test_bad_model_gives_message_and_fix_and_exit_1(capsys, tmp_path):
    code, out, err = run_cli(capsys, "load", str(tmp_path / "nowhere"))
    assert code == 1 and out == ""
    assert "error:" in err and "fix:" in err


def test_pickle_only_model_is_refused(capsys, tiny_copy):
    import torch
    from safetensors.torch import load_file

    weights = load_file(tiny_copy / "model.safetensors")
    (tiny_copy / "model.safetensors").unlink()
    torch.save(weights, tiny_copy / "pytorch_model.bin")
    code, _, err = run_cli(capsys, "load", str(tiny_copy))
    assert code == 1 and "pickle" in err.lower()


def test_inspect_json(capsys, tiny_model_dir, tmp_path):
    csv_path = tmp_path / "table.csv"
    code, out, _ = run_cli(
        capsys, "inspect", str(tiny_model_dir), "--json", "--bits", "8", "--csv", str(csv_path)
    )
    assert code == 0
    report = json.loads(out)
    assert report["bits"] == 8 and report["tensors"] and "tensors:" in report["summary"]
    assert csv_path.read_text().startswith("name,layer,module")


def test_invalid_inspect_settings_are_listed(capsys, tiny_model_dir):
    code, _, err = run_cli(capsys, "inspect", str(tiny_model_dir), "--group-size", "1")
    assert code == 1 and "group size" in err


@pytest.mark.default_model
def test_default_model_card_and_answer(capsys, default_model_home, monkeypatch):
    monkeypatch.setenv("QUANTTUNE_HOME", str(default_model_home))
    code, out, _ = run_cli(capsys, "load", "default", "--json", "--device", "cpu")
    assert code == 0
    assert json.loads(out)["parameters"] == 134_515_008
    code, out, _ = run_cli(
        capsys, "ask", "default", "What is the capital of France?", "--json", "--device", "cpu"
    )
    assert code == 0 and "Paris" in json.loads(out)["answer"]


def test_console_script_runs_headless_without_qt():
    exe = shutil.which("quanttune", path=str(Path(sys.executable).parent))
    assert exe, "the quanttune entry point is installed by pip install -e ."
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "opens the QuantTune window" in out.stdout
    probe = (
        "import sys; from desktop import launcher; print(any(m.startswith('PySide6') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_quantize_w8a8_and_budget_options_and_the_stages_command(capsys, tiny_model_dir, tmp_path):
    common = ["--seq-len", "32", "--samples", "2", "--no-perplexity", "--json", "--group-size", "32"]
    code, out, _ = run_cli(capsys, "quantize", str(tiny_model_dir), "--precision", "int8", "--w8a8",
                           "--smoothquant", "--activation-observer", "entropy", *common)  # fmt: skip
    assert code == 0
    settings = json.loads(out)["settings"]
    assert settings["activations"] and settings["smoothquant"]
    assert settings["activation_observer"] == "entropy"
    code, out, err = run_cli(capsys, "quantize", str(tiny_model_dir), "--budget-mb", "0.001", *common)
    assert code == 1 and "over the budget" in out + err
    code, out, _ = run_cli(capsys, "stages", str(tiny_model_dir), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["stages"] == [16, 8] and len(data["layers"]) == 14
    assert data["summary"]["stage_sqnr_db"][0] > 80
    code, out, _ = run_cli(capsys, "stages", str(tiny_model_dir), "--stages", "8,16")
    assert code == 1
