"""`quanttune train`: the Train step headless, from a project, a config file or flags.

Settings are layered as a project keeps them (core.project.FinetuneSettings): its defaults, then
the project's (or the config file's), then the flags; core.finetune.runs builds the Train job's
params and the estimate from them as the Train pane does, so both train alike. The log goes to
stdout: a line per stage and per step, or with --json one JSON event per line (stage, progress,
metric, result, error); core.cli.main prints errors and their fix to stderr. Ctrl-C asks the job
to stop after the current step: it saves a checkpoint first, and --resume latest goes on from it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from core.cli_train_log import TrainLog, duration
from core.errors import Cancelled, InvalidSettings, QuantTuneError
from core.jobs import JobContext, run_job

EXIT_OK = 0
_MODEL_KEYS = ("model", "device", "allow_pickle", "trust_remote_code")
_NOT_SETTINGS = {"command", "func", "project", "config", "estimate", "json"}  # the other flags are settings
_PATH_KEYS = ("dataset", "output", "resume_from")
_WHERE = {"loaded", "output", "resume_from"}  # where a run goes, not how it trains


def cmd_train(args: argparse.Namespace) -> int:
    from core.finetune import runs

    log, run, params, report, status = TrainLog(args.json), _ProjectRun(), None, None, "failed"
    try:
        # every setting is checked before the model loads (seconds, or a minute the first time)
        raw = run.open(args) if args.project else _config_and_flags(args)
        settings, extra = _finetune_settings(raw), _job_only(raw)
        output, checkpoint = (None, run.checkpoint) if args.project else _output_and_resume(raw)
        loaded = _load_model(raw, log)
        if args.estimate:
            return _print_estimate(settings, loaded, log)
        output = output or run.start(settings, loaded)
        params = replace(runs.train_params(settings, loaded, output, checkpoint), **extra)
        if problems := params.validate():
            raise InvalidSettings(problems)
        run.save()  # once it can start: a run that cannot is not listed
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
    from core.finetune.runs import BUNDLED_PREFIX

    settings = dict(settings)
    for key, value in vars(args).items():
        if key in _NOT_SETTINGS or value is None:
            continue
        if key == "method" and isinstance(settings.get("method"), dict):
            value = {**settings["method"], "method": value}  # the project's rank etc. stay
        if key == "dataset" and not value.startswith(BUNDLED_PREFIX):  # a run's record outlives the cwd
            value = str(Path(value).expanduser().absolute())
        settings[key] = value
    return settings


def _config_and_flags(args: argparse.Namespace) -> dict:
    settings = _with_flags(_read_config(args.config) if args.config else {}, args)
    if not settings.get("dataset"):
        raise QuantTuneError("No dataset was given.", "Give --dataset FILE (JSONL, JSON, CSV, Parquet or "
                             "text), or a sample: --dataset bundled:instructions-units.jsonl.")  # fmt: skip
    return settings


def _read_config(path: Path) -> dict:
    """A JSON or TOML table of the Train step's settings; relative paths are relative to the file."""
    from core.finetune.runs import BUNDLED_PREFIX

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
    for key, value in [(k, data.get(k)) for k in _PATH_KEYS]:  # "latest" and a sample are no paths
        if isinstance(value, str) and value != "latest" and not value.startswith(BUNDLED_PREFIX):
            data[key] = str(path.parent / Path(value).expanduser())
    if isinstance(data.get("model"), str) and (path.parent / data["model"]).exists():
        data["model"] = str(path.parent / data["model"])
    return data


def _config_keys() -> set[str]:
    from core.finetune.methods import MethodSettings
    from core.finetune.train import TrainParams
    from core.project import FinetuneSettings

    fields = (TrainParams, FinetuneSettings, MethodSettings)
    return {name for cls in fields for name in cls.__dataclass_fields__} - {"loaded"} | set(_MODEL_KEYS)


def _load_model(settings: dict, log: TrainLog):
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


def _finetune_settings(settings: dict):
    """The project's kind of settings: its defaults, then ``settings`` (project or file, and flags).
    The method is a name or a table of MethodSettings fields; rank, alpha, … may also stand alone."""
    from core.finetune.methods import MethodSettings
    from core.project import FinetuneSettings
    from core.quant.runs import plain_settings

    method, alone = settings.get("method") or {}, set(MethodSettings.__dataclass_fields__) - {"method"}
    method = dict(method) if isinstance(method, dict) else {"method": str(method)}
    method.update({k: v for k, v in settings.items() if k in alone})
    method = plain_settings(asdict(MethodSettings(**_typed(MethodSettings, method))))  # as a project keeps it
    known = set(FinetuneSettings.__dataclass_fields__) - {"method", "columns"}
    values = _typed(FinetuneSettings, {k: v for k, v in settings.items() if k in known})
    return FinetuneSettings(**values, method=method, columns=dict(settings.get("columns") or {}))


def _job_only(settings: dict) -> dict:
    """The Train job's settings that a project does not keep (gradient clipping, the labels)."""
    from core.finetune.train import TrainParams
    from core.project import FinetuneSettings

    names = set(TrainParams.__dataclass_fields__) - set(FinetuneSettings.__dataclass_fields__) - _WHERE
    return _typed(TrainParams, {k: v for k, v in settings.items() if k in names})


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
        self.project = self.record = self.checkpoint = self.starting = self.run_id = None

    def open(self, args: argparse.Namespace) -> dict:
        self.project = find_project(args.project)
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

    def start(self, settings: Any, loaded: Any) -> Path:
        """Record the run, a new one or the resumed one going on (written by save), and give its folder."""
        from core.finetune import runs
        from core.quant.runs import plain_settings, run_path

        if self.record is None:
            self.starting, folder = runs.new_train_run(self.project, settings, loaded.ref.to_dict())
            return folder
        if problem := runs.model_problem(self.record, loaded):
            raise QuantTuneError(problem, "Give that model with --model, or start a new run.")
        self.record.update(status="running", settings=plain_settings(asdict(settings)))
        self.starting = self.record["id"]
        return run_path(self.project, self.record)

    def save(self) -> None:
        from core.project import save_project

        if self.project is not None:
            self.run_id = self.starting
            save_project(self.project)

    def end(self, status: str, report: Any) -> None:
        from core.finetune import runs
        from core.project import save_project

        if self.run_id is None:
            return
        runs.finish_train_run(self.project, self.run_id, status, report.to_dict() if report else None)
        if status == "finished":
            self.project.step_status["train"] = "done"
        save_project(self.project)


def find_project(spec: str):
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
def _train_until_done_or_ctrl_c(params: Any, log: TrainLog):
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


_MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations")


def _print_estimate(settings: Any, loaded: Any, log: TrainLog) -> int:
    """The Train pane's estimate (core.finetune.plan): what trains, the peak memory, whether it fits
    (else what to change), and the time measured on this machine."""
    from core.finetune import plan, runs
    from core.learn import format_bytes

    result = run_job(plan.run, runs.plan_params(settings, loaded, timed=True), JobContext(log.event))
    counts, memory, timing = result.trainable, result.estimate, result.time
    data = {"trainable_parameters": counts.trainable, "total_parameters": counts.total,
            "peak_memory_bytes": memory.peak, **{f"{k}_bytes": getattr(memory, k) for k in _MEMORY_PARTS},
            "available_memory_bytes": memory.available, "fits": memory.fits, "advice": memory.advice,
            **(timing.to_dict() if timing else {})}  # fmt: skip
    parts = ", ".join(f"{k} {format_bytes(getattr(memory, k))}" for k in _MEMORY_PARTS)
    free = f" of {format_bytes(memory.available)} free" if memory.available is not None else ""
    fits = {True: "fits", False: "does not fit", None: "free memory unknown"}[memory.fits]
    time_line = "time not estimated: the data has problems (training names them)"
    if timing is not None:
        time_line = (f"time about {duration(timing.seconds)} for {timing.steps} steps "
                     f"(~{timing.tokens_per_second:.0f} tokens/s on this machine)")  # fmt: skip
    lines = [f"trains {counts.trainable:,} of {counts.total:,} parameters ({100 * counts.share:.3g} %)",
             f"peak memory about {format_bytes(memory.peak)} ({parts}){free}: {fits}",
             *[f"  try: {a}" for a in memory.advice], time_line]  # fmt: skip
    log.emit("result", data, "\n".join(lines))
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------
def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a dataset (LoRA, full, IA3, …) with checkpoints and resume",
        description="The Train step, headless. Settings come from a project (--project) or a config file "
        "(--config, JSON or TOML: the Train step's setting names, plus model) over a new project's "
        "defaults; flags override them. Prints a line per step (loss, learning rate, tokens/s, ETA), or "
        "JSON events with --json. Ctrl-C stops after the current step with a checkpoint; --resume latest "
        "goes on from it.",
    )
    source = p.add_mutually_exclusive_group()
    runs = "the project's settings and model; the run goes to its artifacts/train/<run-id>"
    source.add_argument("--project", metavar="NAME_OR_FOLDER", help=runs)
    source.add_argument("--config", type=Path, metavar="FILE", help="a .json or .toml file of settings")
    p.add_argument("--model", help="'default', a model folder, a .gguf file or a cached repo id")
    p.add_argument("--device", help="auto (GPU if present), cpu, cuda, cuda:N or mps")
    p.add_argument("--allow-pickle", action="store_true", default=None, help="allow .bin/.pt weights")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="run the model's own code")
    p.add_argument("--dataset", help="JSONL, JSON, CSV, Parquet or text file; bundled:NAME: a sample")
    p.add_argument("--task", help="instruction (default), qa, summarization, causal_lm or classification")
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
    less = "recompute activations in the backward pass: less memory, slower"
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None, help=less)
    p.add_argument("--autocast", choices=("off", "bf16", "auto"), help="bf16 compute; auto: where native")
    p.add_argument("--output", type=Path, help="the run's folder (checkpoints, metrics.jsonl, final/)")
    p.add_argument("--resume", dest="resume_from", metavar="CHECKPOINT|latest",
                   help="go on from a checkpoint folder, or from the run's newest checkpoint")  # fmt: skip
    p.add_argument("--estimate", action="store_true", help="print the time and memory estimate, do not train")
    events = "one JSON event per line on stdout: stage, progress, metric, result, error"
    p.add_argument("--json", action="store_true", help=events)
    p.set_defaults(func=cmd_train)
