"""Output-folder ownership: a program claims its `--output_dir` before any work."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path

from .checkpointing import write_json_atomic

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
