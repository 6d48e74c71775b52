"""What every program shares: the Accelerator and its CPU threads, the shared flags (with the names
transformers' examples and `TrainingArguments` use as aliases), output-folder ownership, the run log and
trackers, staged saves and the start banner.

Output-folder ownership: a program claims its `--output_dir` before any work. The folder records who wrote
it in `hf_mae_run.json` ({"program", "status": "running" | "finished"}). A folder that holds another
program's outputs or a finished run is refused unless `--overwrite_output_dir` (which removes the old run's
files first, checkpoints before anything else, so nothing of it can be resumed by accident); a folder with
an interrupted run is only continued with `--resume_from_checkpoint`, otherwise refused with the command that
resumes it. A folder the program reads from (its `--model`) is never its output folder.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import socket
import sys
from pathlib import Path

import torch

from .checkpointing import CheckpointError, save_pretrained_atomic, write_json_atomic

RUN_MARKER = "hf_mae_run.json"
# What hf_mae programs write into an output folder: the names `--overwrite_output_dir` removes (nothing else
# in the folder is touched) and, without a marker, the names that show a folder already holds outputs.
OWNED_NAMES = ("checkpoints", RUN_MARKER, "log.jsonl", "results.json", "training_args.json", "config.json",
               "*.safetensors", "*.safetensors.index.json", "preprocessor_config.json", "configuration_mae.py",
               "modeling_mae.py", "image_processing_mae.py", "encoder", "best", "reconstructions", "*.png",
               "features.pt", "README.md", "model.onnx", "model_int8.onnx", "model.pt2", "model.pt",
               "export_info.json", "export_report.json", ".model_staging", ".*.tmp")


class OutputDirError(ValueError):
    """The output folder cannot be used as asked; the message names it and the flag that would allow it."""


# --------------------------------------------------------------------------------------------------------
# Flag types: bad values are refused at parse time with the flag's name (argparse adds it)
# --------------------------------------------------------------------------------------------------------


def _number(kind, low=None, high=None, low_open=False, high_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and (value < low or (low_open and value == low))) or (
                high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what or kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, what="an integer >= 1")
nonnegative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0, low_open=True, what="a number > 0")
nonnegative_float = _number(float, 0, what="a number >= 0")
unit_fraction = _number(float, 0, 1, what="a number in [0, 1]")
open_fraction = _number(float, 0, 1, high_open=True, what="a number in [0, 1)")
scale_fraction = _number(float, 0, 1, low_open=True, what="a number in (0, 1]")


def checkpointing_steps(text: str):
    """`--checkpointing_steps`: 'epoch' or a positive integer."""
    if text == "epoch":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'epoch' or an integer >= 1, got {text!r}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, *, output_dir: str, mixed_precision: str = "auto",
                      training: bool = True) -> argparse._ArgumentGroup:
    """The flags every program takes (`training`: also logging, trackers, checkpoints and resume)."""
    run = parser.add_argument_group("outputs, logging and run")
    run.add_argument("--output_dir", default=output_dir, help=f"where outputs go (default {output_dir})")
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="replace the outputs of a finished run or of another program in --output_dir (its "
                          "checkpoints and logs are removed first; other files are left alone)")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    run.add_argument("--mixed_precision", choices=["auto", "no", "bf16", "fp16"], default=mixed_precision,
                     help=f"autocast (default {mixed_precision}; auto: bf16 where the hardware computes it fast, "
                          "e.g. recent CPUs and Ampere+ GPUs)")
    run.add_argument("--num_workers", "--dataloader_num_workers", type=nonnegative_int, default=None,
                     help="DataLoader workers per process (default: one per spare core, at most 4)")
    run.add_argument("--cpu_threads", type=positive_int, default=None,
                     help="torch threads per process on CPU (default: the cores shared among local processes)")
    if training:
        run.add_argument("--logging_steps", type=positive_int, default=10, help="log every N optimizer steps")
        run.add_argument("--report_to", default="none",
                         help="Accelerate trackers: tensorboard, wandb, ... , 'all' (installed ones) or 'none'")
        run.add_argument("--checkpointing_steps", "--save_steps", type=checkpointing_steps, default="epoch",
                         help="a resumable checkpoint at the end of every epoch ('epoch'), and with N also every "
                              "N optimizer steps")
        run.add_argument("--checkpoints_total_limit", "--save_total_limit", type=positive_int, default=2,
                         help="resumable checkpoints kept in <output_dir>/checkpoints (default 2: the newest "
                              "and one before it, in case the newest is damaged)")
        run.add_argument("--resume_from_checkpoint", default=None,
                         help="'latest' (the newest intact checkpoint in <output_dir>/checkpoints) or a "
                              "checkpoint folder: continue exactly where it was written")
        run.add_argument("--max_nonfinite_steps", type=positive_int, default=5,
                         help="stop after this many optimizer steps in a row with a non-finite loss (each is "
                              "skipped and counted)")
    return run


def add_push_arguments(group, what: str, repo_note: str | None = None) -> None:
    """--push_to_hub / --hub_model_id / --hub_private."""
    group.add_argument("--push_to_hub", action="store_true", help=f"push {what} at the end")
    group.add_argument("--hub_model_id", default=None,
                       help="repo id for --push_to_hub" + (f" ({repo_note})" if repo_note else ""))
    group.add_argument("--hub_private", action="store_true", help="create the Hub repo as private")


def check_push_arguments(args) -> None:
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id")


def is_embedded(args: argparse.Namespace) -> bool:
    """True when no data flag was given (the embedded default data is used)."""
    return not (args.dataset_name or args.train_dir or args.data_files)


def apply_defaults(args: argparse.Namespace, embedded: dict, paper: dict) -> argparse.Namespace:
    """Flags left unset (None) take the embedded-data values or the paper's, by the data in use."""
    for name, value in (embedded if is_embedded(args) else paper).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


# --------------------------------------------------------------------------------------------------------
# Output-folder ownership
# --------------------------------------------------------------------------------------------------------


def _owned_entries(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if any(fnmatch.fnmatch(p.name, pattern) for pattern in OWNED_NAMES)]


def read_run_marker(folder) -> dict | None:
    try:
        return json.loads((Path(folder) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None


def _same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _resume_command() -> str:
    argv = [a for a in sys.argv if a != "--overwrite_output_dir"]
    return " ".join(shlex.quote(a) for a in ["accelerate", "launch", *argv, "--resume_from_checkpoint", "latest"])


def _still_running(marker: dict) -> bool:
    """Whether the process that marked the folder as running is alive on this machine."""
    pid = marker.get("pid")
    if not isinstance(pid, int) or marker.get("host") != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_dir(path, program: str, *, overwrite: bool = False, resume: bool = False, inputs=(),
                     resumable: bool = True) -> Path:
    """Refuse (OutputDirError, before any work) an output folder this run must not write into; see the
    module docstring for the rules (`resumable=False`: the program has no checkpoints to resume from, e.g.
    export). Reads only: safe on every process."""
    out = Path(path)
    resolved = out.resolve()
    for source in inputs:
        if source and os.path.exists(source) and _same_or_inside(Path(source).resolve(), resolved) and (
                overwrite or Path(source).resolve() == resolved):
            raise OutputDirError(f"--output_dir {out} is where this run reads its input ({source}): writing there "
                                 "would replace what is being read. Pass another --output_dir.")
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--output_dir {out} exists and is not a folder. Pass another --output_dir.")
    if not out.exists() or overwrite:
        return out
    marker = read_run_marker(out)
    owned = [p.name for p in _owned_entries(out)]
    if marker is None and not owned:
        return out  # empty, or only files of the user's own
    owner, status = (marker or {}).get("program"), (marker or {}).get("status")
    if status == "running" and _still_running(marker):
        raise OutputDirError(f"{out} is being written by a {owner} run that is still going (process "
                             f"{marker.get('pid')}). Wait for it, stop it, or pass another --output_dir.")
    if owner == program and status == "running":
        if resume or not (out / "checkpoints").is_dir():
            return out  # resumed, or a run that stopped before writing anything to resume from
        raise OutputDirError(
            f"{out} holds an interrupted {program} run. Resume it:\n  {_resume_command()}\nor start over with "
            "--overwrite_output_dir (its checkpoints and logs are removed), or pass another --output_dir.")
    if owner == program and status == "finished" and resume and (out / "checkpoints").is_dir():
        return out  # continue a finished run from its checkpoints (e.g. with more epochs)
    if marker is None and resume and (out / "checkpoints").is_dir():
        return out  # a run written before folders were marked
    what = (f"a finished {owner} run" if owner == program else
            f"the outputs of {owner}" if owner else f"outputs ({', '.join(sorted(owned)[:4])})")
    hint = " (or --resume_from_checkpoint latest to continue it)" if owner == program and resumable else ""
    raise OutputDirError(f"{out} already holds {what}. Pass another --output_dir, or --overwrite_output_dir to "
                         f"replace them{hint}.")


def take_output_dir(out: Path, program: str, *, overwrite: bool) -> None:
    """Create the folder (after `check_output_dir`), clear the old run's files when overwriting (checkpoints
    first), and mark the folder as this program's running run. Call on one process only."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for entry in sorted(_owned_entries(out), key=lambda p: p.name != "checkpoints"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        write_json_atomic(out / RUN_MARKER, {"program": program, "status": "running", "pid": os.getpid(),
                                             "host": socket.gethostname()})
    except OSError as error:
        raise OutputDirError(f"cannot write into --output_dir {out}: {error.strerror or error}. Pass a writable "
                             "--output_dir.") from None


def claim_output_dir(path, program: str, *, overwrite: bool = False, resume: bool = False, inputs=()) -> Path:
    """`check_output_dir` then `take_output_dir`, for single-process programs (export, convert)."""
    out = check_output_dir(path, program, overwrite=overwrite, resume=resume, inputs=inputs)
    take_output_dir(out, program, overwrite=overwrite)
    return out


def mark_finished(path) -> None:
    """Record that the run in `path` completed (a later run there then needs --overwrite_output_dir)."""
    marker = read_run_marker(path) or {}
    write_json_atomic(Path(path) / RUN_MARKER, {**marker, "status": "finished"})


# --------------------------------------------------------------------------------------------------------
# Accelerator, run log, trackers, banner
# --------------------------------------------------------------------------------------------------------


class RunLog:
    """Append-only JSONL log on the main process, plus the Accelerate trackers."""

    def __init__(self, accelerator, path: Path):
        self.accelerator, self.path = accelerator, path

    def write(self, record: dict, step: int | None = None) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if step is not None and numeric:
            self.accelerator.log(numeric, step=step)


TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
                   "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}


def trackers_from(report_to: str | None) -> list[str] | str | None:
    """`--report_to` as Accelerate's `log_with`: trackers whose package is missing are warned about and dropped."""
    if report_to in ("none", "", None):
        return None
    if report_to == "all":
        return "all"
    available = []
    for tracker in (t.strip() for t in report_to.split(",") if t.strip()):
        module = TRACKER_MODULES.get(tracker, tracker)
        if tracker == "tensorboard" and importlib.util.find_spec("tensorboardX"):
            available.append(tracker)
        elif importlib.util.find_spec(module) is None:
            print(f"WARNING: --report_to {tracker}: the package '{module}' is not installed; "
                  f"logging to log.jsonl only (pip install {module})", file=sys.stderr)
        else:
            available.append(tracker)
    return available or None


def cpu_threads_per_process(args, accelerator) -> int:
    """`--cpu_threads`, else the cores this process may use shared among the local processes.

    `accelerate launch` exports OMP_NUM_THREADS=1 on machines without a GPU (one physical core per process
    by its count), which halves the speed of a 2-core machine; set the thread count from the cores instead.
    """
    if getattr(args, "cpu_threads", None):
        return args.cpu_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return max(1, cores // max(1, local))


def start_run(args, program: str, *, inputs=(), gradient_accumulation_steps: int = 1, save_args: bool = False):
    """Claim the output folder, build the Accelerator (mixed precision resolved, CPU threads set), seed, and
    open the run log (fresh unless resuming); `save_args` writes training_args.json (what a training run's
    model card reads). Returns (accelerator, run_log, out_dir)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    from .allocator import keep_freed_memory
    from .precision import resolve_mixed_precision

    resume = bool(getattr(args, "resume_from_checkpoint", None))
    out = check_output_dir(args.output_dir, program, overwrite=args.overwrite_output_dir, resume=resume,
                           inputs=inputs)
    log_with = trackers_from(getattr(args, "report_to", None))
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision),
                              gradient_accumulation_steps=gradient_accumulation_steps, log_with=log_with,
                              project_dir=str(out),  # pinned batches are copied to a GPU without waiting:
                              dataloader_config=DataLoaderConfiguration(non_blocking=True))
    set_seed(args.seed)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(args, accelerator))
        keep_freed_memory()  # no page faults to reallocate each step's activations
    accelerator.wait_for_everyone()  # every process has checked the folder before one writes into it
    if accelerator.is_main_process:
        take_output_dir(out, program, overwrite=args.overwrite_output_dir)
        if not resume:
            (out / "log.jsonl").unlink(missing_ok=True)
        if save_args:
            write_json_atomic(out / "training_args.json", vars(args))
        if accelerator.log_with:
            accelerator.init_trackers("hf_mae_" + re.sub(r"\W+", "_", program).lower(),
                                      config={k: v for k, v in vars(args).items()
                                              if isinstance(v, (int, float, str, bool))})
    accelerator.wait_for_everyone()
    return accelerator, RunLog(accelerator, out / "log.jsonl"), out


def print_banner(accelerator, run_log: RunLog, title: str, banner: dict) -> None:
    """The run's settings, printed once and written as the log's "start" record."""
    width = max(len(k) for k in banner) + 2
    accelerator.print(f"hf_mae {title}\n" + "\n".join(f"  {k:>{width}}: {v}" for k, v in banner.items()))
    run_log.write({"event": "start", **banner})


def finish_run(accelerator, out_dir: Path, results: dict) -> None:
    """Write results.json and mark the folder finished (main process), then close the trackers."""
    if accelerator.is_main_process:
        write_json_atomic(out_dir / "results.json", results)
        mark_finished(out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def run_cli(main, args) -> dict:
    """`main(args)` for a command line: a known failure (bad value or data, a refused folder, a damaged
    checkpoint, a non-finite run) ends with its message and exit status 1 instead of a traceback
    (HF_MAE_TRACEBACK=1 keeps the traceback)."""
    from .data import DatasetLoadError
    from .loop import NonFiniteLossError

    try:
        return main(args)
    except (ValueError, CheckpointError, DatasetLoadError, NonFiniteLossError) as error:
        if os.environ.get("HF_MAE_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def save_model_into(folder: Path, model, processor) -> None:
    """`save_pretrained` model + processor into `folder` without touching its other files: staged beside, then
    one rename per file (each file is either complete-new or complete-old)."""
    staging = Path(folder) / ".model_staging"
    save_pretrained_atomic(model, processor, staging)
    for item in staging.iterdir():
        os.replace(item, Path(folder) / item.name)
    staging.rmdir()


__all__ = ["OutputDirError", "RunLog", "add_push_arguments", "add_run_arguments", "apply_defaults",
           "check_output_dir", "check_push_arguments", "checkpointing_steps", "claim_output_dir",
           "cpu_threads_per_process", "finish_run", "run_cli", "is_embedded", "mark_finished", "print_banner",
           "save_model_into", "start_run", "take_output_dir", "trackers_from"]
