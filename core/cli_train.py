"""`quanttune train`: the Train step headless, from a project, a config file or flags.

Settings are layered: the project's (or the config file's), then the flags. The log goes to stdout:
a line per stage and per step, or with --json one JSON event per line (stage, progress, metric,
result, error); core.cli.main prints errors and their fix to stderr. Ctrl-C asks the job to stop
after the current step: it saves a checkpoint first, and --resume latest goes on from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from core.errors import Cancelled, QuantTuneError
from core.jobs import JobContext, JobEvent, run_job

EXIT_OK = 0
_MODEL_KEYS = ("model", "device", "allow_pickle", "trust_remote_code")
_NOT_SETTINGS = {"command", "func", "project", "config", "estimate", "json"}  # the other flags are settings
_PATH_KEYS = ("dataset", "output", "resume_from")
_SPECIAL = {"loaded", "method", "dataset", "output", "resume_from", "columns"}  # TrainParams built apart


def cmd_train(args: argparse.Namespace) -> int:
    log, run, params, report, status = _TrainLog(args.json), _ProjectRun(), None, None, "failed"
    try:
        # every setting is checked before the model loads (seconds, or a minute the first time)
        settings = run.open(args) if args.project else _config_and_flags(args)
        fields = run.fields(settings) if args.project else _file_fields(settings)
        params = replace(fields, loaded=_load_model(settings, log))
        if args.estimate:
            return _print_estimate(params, log)
        params = run.start(params)
        report = _train_until_done_or_ctrl_c(params, log)
        status = "finished"
    except Cancelled as exc:
        status = "stopped"
        log.cancelled(exc, params)
        raise
    except QuantTuneError as exc:
        log.emit("error", {"message": exc.message, "fix": exc.fix}, None)  # main() prints it to stderr
        raise
    finally:
        run.end(status, report)
    log.result(report)
    return EXIT_OK


# -- settings --------------------------------------------------------------------------------
def _with_flags(settings: dict, args: argparse.Namespace) -> dict:
    settings = dict(settings)
    for key, value in vars(args).items():
        if key in _NOT_SETTINGS or value is None:
            continue
        if key == "method" and isinstance(settings.get("method"), dict):
            value = {**settings["method"], "method": value}  # the project's rank etc. stay
        settings[key] = value
    return settings


def _config_and_flags(args: argparse.Namespace) -> dict:
    return _with_flags(_read_config(args.config) if args.config else {}, args)


def _read_config(path: Path) -> dict:
    """A JSON or TOML table of the Train step's settings; relative paths are relative to the file."""
    kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
    try:
        text = path.read_text(encoding="utf-8")
        if kind == "TOML":
            import tomllib  # Python 3.11+

        data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except OSError as exc:
        raise QuantTuneError(
            f"The config file {path} cannot be read ({exc.strerror}).", "Check the path."
        ) from exc
    except ImportError as exc:
        raise QuantTuneError("TOML config files need Python 3.11 or later.", "Write it as JSON.") from exc
    except ValueError as exc:
        raise QuantTuneError(f"The config file {path} is not valid {kind} ({exc}).", "Correct it.") from exc
    known = _config_keys()
    unknown = sorted(set(data) - known) if isinstance(data, dict) else ["(not a table of settings)"]
    if unknown:
        raise QuantTuneError(
            f"The config file {path.name} has unknown settings: {', '.join(unknown)}.",
            f"Use the Train step's setting names: {', '.join(sorted(known))}.",
        )
    for key in _PATH_KEYS:
        if isinstance(data.get(key), str) and data[key] != "latest":
            data[key] = str(path.parent / Path(data[key]).expanduser())
    if isinstance(data.get("model"), str) and (path.parent / data["model"]).exists():
        data["model"] = str(path.parent / data["model"])
    return data


def _config_keys() -> set[str]:
    from core.finetune.methods import MethodSettings
    from core.finetune.train import TrainParams
    from core.project import FinetuneSettings

    fields = (TrainParams, FinetuneSettings, MethodSettings)
    return {name for cls in fields for name in cls.__dataclass_fields__} - {"loaded"} | set(_MODEL_KEYS)


def _load_model(settings: dict, log: _TrainLog):
    from core.models import loading, sources

    model = settings.get("model") or "default"
    ref = sources.ModelRef.from_dict(model) if isinstance(model, dict) else sources.resolve(str(model))
    params = loading.LoadParams(ref, device=settings.get("device") or "auto",
                                allow_pickle=bool(settings.get("allow_pickle")),
                                trust_remote_code=bool(settings.get("trust_remote_code")))  # fmt: skip
    try:
        return run_job(loading.run, params, JobContext(log.event))
    except KeyboardInterrupt:
        raise Cancelled() from None


def _file_fields(settings: dict):
    """TrainParams from a config file and flags, but for the model (loaded next)."""
    from core.finetune import train
    from core.project import FinetuneSettings

    fields = train.TrainParams.__dataclass_fields__
    for key in set(FinetuneSettings.__dataclass_fields__) - set(fields):
        if settings.get(key):
            print(f"note: '{key}' is a project setting the Train job does not use", file=sys.stderr)
    if not settings.get("dataset"):
        raise QuantTuneError(
            "No dataset was given.", "Give --dataset FILE (JSONL, JSON, CSV, Parquet or text)."
        )
    output, resume = _output_and_resume(settings)
    values = _typed(
        train.TrainParams, {k: v for k, v in settings.items() if k in fields and k not in _SPECIAL}
    )
    columns = tuple(sorted(dict(settings.get("columns") or {}).items()))
    return train.TrainParams(loaded=None, dataset=Path(settings["dataset"]), output=output, columns=columns,
                             method=_method_settings(settings), resume_from=resume, **values)  # fmt: skip


def _output_and_resume(settings: dict) -> tuple[Path, Path | None]:
    """The run's folder, and the checkpoint to resume from (latest: the newest in the folder)."""
    from core.finetune.checkpoints import list_checkpoints

    resume, output = settings.get("resume_from"), settings.get("output")
    if resume and resume != "latest":
        return Path(output or Path(resume).parent.parent), Path(resume)  # run/checkpoints/step-N
    if not output:
        raise QuantTuneError("No output folder was given.", "Give --output FOLDER: the run is saved there.")
    found = list_checkpoints(Path(output)) if resume else []
    if resume and not found:
        raise QuantTuneError(
            f"There is no checkpoint to resume in {output}.", "Train first: a run saves some."
        )
    return Path(output), found[-1][3] if found else None


def _method_settings(settings: dict):
    """The method: a name or a table of MethodSettings fields; rank, alpha, … may also stand alone."""
    from core.finetune.methods import MethodSettings

    method = settings.get("method") or {}
    fields = dict(method) if isinstance(method, dict) else {"method": str(method)}
    fields.update(
        {k: settings[k] for k in MethodSettings.__dataclass_fields__ if k in settings and k != "method"}
    )
    return MethodSettings(**_typed(MethodSettings, fields))


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", tuple: "a list"}


def _typed(cls, values: dict) -> dict:
    """Values converted to the types of ``cls``'s defaults (lists to tuples), or a clear error."""
    typed = {}
    for name, value in values.items():
        default = cls.__dataclass_fields__[name].default
        kind = type(default) if type(default) in _KINDS else None
        try:
            mismatch = (kind is bool) != isinstance(value, bool) or (kind is tuple and isinstance(value, str))
            if kind is not None and mismatch:
                raise ValueError  # int("3") is fine, but True is no number, "yes" no flag, "abc" no list
            typed[name] = kind(value) if kind not in (None, bool) else value
        except (TypeError, ValueError):
            raise QuantTuneError(f"The setting {name} = {value!r} should be {_KINDS[kind]}.",
                                 "Correct it in the config file or the flag.") from None  # fmt: skip
    return typed


class _ProjectRun:
    """A run of a project, in its run list (core.finetune.runs) as the Train pane records its own:
    a new run gets a folder under artifacts/train/; a resumed one goes on in its own, with its own
    settings (the flags on top)."""

    def __init__(self) -> None:
        self.project = self.record = self.settings = self.checkpoint = self.run_id = None

    def open(self, args: argparse.Namespace) -> dict:
        self.project = _find_project(args.project)
        if args.output:
            raise QuantTuneError("A project's runs go to its artifacts folder.", "Leave out --output.")
        if args.resume_from:
            self.record, self.checkpoint = self._resumed(args.resume_from)
        load = self.project.load
        base = self.record["settings"] if self.record else asdict(self.project.finetune)
        settings = _with_flags({**base, "model": load.model, "device": load.device,
                                "allow_pickle": load.allow_pickle}, args)  # fmt: skip
        if not settings.get("model"):
            raise QuantTuneError(f"The project {self.project.name} has no model yet.",
                                 "Choose one in the Model step, or give --model.")  # fmt: skip
        return settings

    def _resumed(self, resume: str) -> tuple[dict, Path]:
        from core.finetune import runs
        from core.quant.runs import run_path

        saved = [r for r in self.project.train_runs if runs.checkpoints(self.project, r)]
        if resume == "latest" and saved:
            return saved[-1], runs.checkpoints(self.project, saved[-1])[-1][3]
        folder = Path(resume).parent.parent.resolve()  # run/checkpoints/step-N
        for record in saved:
            if resume != "latest" and run_path(self.project, record).resolve() == folder:
                return record, Path(resume)
        raise QuantTuneError(f"The project {self.project.name} has no checkpoint to resume at {resume}.",
                             "Give --resume latest, or a checkpoint folder of one of its runs.")  # fmt: skip

    def fields(self, settings: dict):
        from core.finetune import runs, train
        from core.project import FinetuneSettings
        from core.quant.runs import run_path

        known = FinetuneSettings.__dataclass_fields__
        method = json.loads(json.dumps(asdict(_method_settings(settings))))  # as the project keeps it
        values = _typed(FinetuneSettings, {k: v for k, v in settings.items() if k in known and k != "method"})
        self.settings = FinetuneSettings(**values, method=method)
        folder = run_path(self.project, self.record) if self.record else Path()  # a new one: at start()
        params = runs.train_params(self.settings, None, folder, self.checkpoint)
        only_job = set(train.TrainParams.__dataclass_fields__) - set(known) - _SPECIAL  # pack, autocast, …
        return replace(
            params, **_typed(train.TrainParams, {k: v for k, v in settings.items() if k in only_job})
        )

    def start(self, params: Any) -> Any:
        from core.finetune import runs
        from core.project import save_project

        if self.project is None:
            return params
        if self.record is None:
            self.run_id, folder = runs.new_train_run(self.project, self.settings)
            params = replace(params, output=folder)
        else:
            self.run_id, self.record["status"] = self.record["id"], "running"
        save_project(self.project)
        return params

    def end(self, status: str, report: Any) -> None:
        from core.finetune import runs
        from core.project import save_project

        if self.run_id is None:
            return
        runs.finish_train_run(self.project, self.run_id, status, report.to_dict() if report else None)
        if status == "finished":
            self.project.step_status["train"] = "done"
        save_project(self.project)


def _find_project(spec: str):
    from core.project import PROJECT_FILE, list_projects, load_project

    if (Path(spec).expanduser() / PROJECT_FILE).is_file():
        return load_project(Path(spec).expanduser())
    projects = list_projects()
    for project in projects:
        if spec.strip().lower() in (project.name.lower(), project.folder.name.lower()):
            return project
    names = ", ".join(p.name for p in projects) or "none yet"
    raise QuantTuneError(f"There is no project '{spec}'.", f"Give a project's name or folder ({names}).")


# -- running ---------------------------------------------------------------------------------
def _train_until_done_or_ctrl_c(params: Any, log: _TrainLog):
    """Ctrl-C asks the job to stop after the current step (it checkpoints first); twice stops at once."""
    import signal
    import threading

    from core.finetune import train

    ctx = JobContext(log.event)

    def stop(_signum, _frame):
        if ctx.cancelled:
            raise KeyboardInterrupt
        ctx.cancel()

    in_main = threading.current_thread() is threading.main_thread()  # only it can take signals
    previous = signal.signal(signal.SIGINT, stop) if in_main else None
    try:
        return run_job(train.run, params, ctx)
    except KeyboardInterrupt:  # the second Ctrl-C: out at once, the step in progress is lost
        raise Cancelled() from None
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _print_estimate(params: Any, log: _TrainLog) -> int:
    from core.finetune import estimate, train
    from core.learn import format_bytes

    timing = estimate.time_estimate(params)
    device = next(params.loaded.model.parameters()).device.type
    width = 2 if train.autocast_dtype(params.autocast, params.loaded.model) is not None else 4
    free = estimate.available_memory(device)
    memory = estimate.estimate(
        timing.shape, params.batch_size, params.max_length, compute_bytes=width, available=free
    )
    data = {**timing.to_dict(), "peak_memory_bytes": memory.peak, "available_memory_bytes": memory.available,
            "fits": memory.fits, "advice": memory.advice}  # fmt: skip
    fits = {True: "fits", False: "does not fit", None: "free memory unknown"}[memory.fits]
    lines = [f"about {_duration(timing.seconds)} for {timing.steps} steps (~{timing.tokens_per_second:.0f} "
             f"tokens/s)", f"peak memory about {format_bytes(memory.peak)}: {fits}"]  # fmt: skip
    log.emit("result", data, "\n".join(lines + [f"  try: {a}" for a in memory.advice]))
    return EXIT_OK


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _TrainLog:
    """The command's log on stdout: a line per stage and per step, or one JSON event per line."""

    STEP_COLUMNS = (("loss", "loss", ".4f"), ("learning_rate", "lr", ".2e"),
                    ("tokens_per_second", "tokens/s", ".0f"), ("val_loss", "val_loss", ".4f"))  # fmt: skip

    def __init__(self, as_json: bool) -> None:
        self.as_json, self.metrics, self.started, self.first = as_json, {}, None, None

    def emit(self, kind: str, data: dict, text: str | None) -> None:
        if self.as_json:
            print(json.dumps({"event": kind, **data}, default=str, allow_nan=False), flush=True)
        elif text is not None:
            print(text, flush=True)

    def event(self, event: JobEvent) -> None:
        data = dict(event.data)
        if event.kind == "metric":
            value = data["value"]
            self.metrics[data["name"]] = data["value"] = value if math.isfinite(value) else None
            self.emit("metric", data, None)
        elif event.kind == "progress" and not data.get("total"):  # a stage begins
            if data.get("message") == "Training":
                self.started, self.first = time.monotonic(), None
            self.emit("stage", {"message": data.get("message", "")}, f"== {data.get('message', '')}")
        elif event.kind == "progress" and self.started is not None:  # a training step ended
            data["eta_s"] = self._eta(data["done"], data["total"])
            self.emit("progress", data, self._step_line(data))
            self.metrics = {}
        else:
            self.emit(event.kind, data, None)

    def _eta(self, done: int, total: int) -> float:
        """From this session's steps only: a resumed run's earlier steps took no time here."""
        self.first = done - 1 if self.first is None else self.first
        return (time.monotonic() - self.started) / max(1, done - self.first) * (total - done)

    def _step_line(self, data: dict) -> str:
        parts = [f"step {data['done']:>{len(str(data['total']))}}/{data['total']}"]
        for name, label, form in self.STEP_COLUMNS:
            if self.metrics.get(name) is not None:
                parts.append(f"{label} {self.metrics[name]:{form}}")
        return "  ".join([*parts, f"ETA {_duration(data['eta_s'])}"])

    def result(self, report: Any) -> None:
        r = report.to_dict()
        loss, best = r["final_train_loss"], r["best_validation_loss"]
        text = f"done: {r['steps']} steps in {_duration(r['seconds'])}, {r['tokens_per_second']:.0f} tokens/s"
        text += f"; final loss {loss:.4f}" if loss is not None else ""
        text += f", best validation loss {best:.4f}" if best is not None else ""
        self.emit("result", r, f"{text}\nsaved to {Path(r['output']) / 'final'}")

    def cancelled(self, exc: Cancelled, params: Any) -> None:
        from core.finetune.checkpoints import list_checkpoints

        saved = list_checkpoints(params.output) if params is not None else []
        if not saved:
            return self.emit("error", {"message": exc.message, "fix": ""}, None)
        step, path = saved[-1][0], saved[-1][3]
        message = f"Stopped at step {step}; the checkpoint is {path}."
        fix = f"To go on, run the same command with --resume latest (or --resume {path})."
        self.emit("error", {"message": message, "fix": fix, "checkpoint": str(path)}, None)
        print(f"{message}\n{fix}", file=sys.stderr)


# -- parser ----------------------------------------------------------------------------------
def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a dataset (LoRA, full, IA3, …) with checkpoints and resume",
        description="The Train step, headless. Settings come from a project (--project) or a config file "
        "(--config, JSON or TOML: the Train step's setting names, plus model), else the defaults; flags "
        "override them. Prints a line per step (loss, learning rate, tokens/s, ETA), or JSON events with "
        "--json. Ctrl-C stops after the current step with a checkpoint; --resume latest goes on from it.",
    )
    source = p.add_mutually_exclusive_group()
    runs = "the project's settings and model; the run goes to its artifacts/train/<run-id>"
    source.add_argument("--project", metavar="NAME_OR_FOLDER", help=runs)
    source.add_argument("--config", type=Path, metavar="FILE", help="a .json or .toml file of settings")
    p.add_argument("--model", help="'default', a model folder, a .gguf file or a cached repo id")
    p.add_argument("--device", help="auto (GPU if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--allow-pickle", action="store_true", default=None, help="allow .bin/.pt weights")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="run the model's own code")
    p.add_argument("--dataset", help="JSONL, JSON, CSV, Parquet or text file")
    p.add_argument("--task", help="instruction (default), causal_lm (plain text) or classification")
    p.add_argument("--method", help="lora (default), dora, qlora, full, partial, ia3, prefix, prompt, …")
    for flag, kind, text in (("--rank", int, "LoRA rank"), ("--epochs", int, ""),
                             ("--max-steps", int, "stop after this many steps (0: as the epochs take)"),
                             ("--batch-size", int, ""), ("--learning-rate", float, ""),
                             ("--max-length", int, "tokens per example; longer rows are cut"),
                             ("--seed", int, ""),
                             ("--eval-every", int, "steps between validations (0: at the end)"),
                             ("--save-every", int, "steps between checkpoints (0: at the end)")):  # fmt: skip
        p.add_argument(flag, type=kind, help=text or None)
    pack = "each step's examples end to end, without padding (faster on short rows)"
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None, help=pack)
    p.add_argument("--autocast", choices=("off", "bf16", "auto"), help="bf16 compute; auto: where native")
    p.add_argument("--output", type=Path, help="the run's folder (checkpoints, metrics.jsonl, final/)")
    p.add_argument("--resume", dest="resume_from", metavar="CHECKPOINT|latest",
                   help="go on from a checkpoint folder, or from the run's newest checkpoint")  # fmt: skip
    p.add_argument("--estimate", action="store_true", help="print the time and memory estimate, do not train")
    events = "one JSON event per line on stdout: stage, progress, metric, result, error"
    p.add_argument("--json", action="store_true", help=events)
    p.set_defaults(func=cmd_train)
