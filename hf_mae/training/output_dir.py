"""Output-folder ownership: a program claims its `--output_dir` before any work."""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import shlex
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json

RUN_MARKER = "hf_mae_run.json"
# A marker's status while its run goes on, and the ones a run that ended without finishing gets (`mark_stopped`)
STOPPED = ("running", "failed", "interrupted")

# The folders this process marked as its running run: `mark_stopped` marks how each one ended
_TAKEN: list[Path] = []


# What hf_mae programs write into an output folder: the names `--overwrite_output_dir` removes (nothing else
# in the folder is touched) and, without a marker, the names that show a folder already holds outputs.
OWNED_NAMES = ("checkpoints", RUN_MARKER, "log.jsonl", "results.json", "training_args.json", "config.json",
               "*.safetensors", "*.safetensors.index.json", "preprocessor_config.json", "*_mae.py", "encoder", "best",
               "reconstructions", "*.png", "features.pt", "README.md", "model.onnx", "model_int8.onnx", "model.pt2",
               "model.pt", "export_info.json", "export_report.json", ".*.tmp")


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


@dataclass(frozen=True)
class _Request:
    """What `check_output_dir` decides on: the folder as found and what the run asks for."""

    out: Path
    program: str
    overwrite: bool
    resume: bool
    resumable: bool
    inputs: tuple

    @functools.cached_property
    def reads_from_it(self) -> str | None:
        """An input that writing the folder would replace (the folder itself, or inside it when overwriting)."""
        resolved = self.out.resolve()
        for source in self.inputs:
            if source and os.path.exists(source) and _same_or_inside(Path(source).resolve(), resolved) and (
                    self.overwrite or Path(source).resolve() == resolved):
                return str(source)
        return None

    @functools.cached_property
    def marker(self) -> dict | None:
        return read_run_marker(self.out)

    @functools.cached_property
    def owned(self) -> list[str]:
        return sorted(p.name for p in _owned_entries(self.out))

    @property
    def owner(self) -> str | None:
        return (self.marker or {}).get("program")

    @property
    def own_run(self) -> bool:
        return self.owner == self.program

    @property
    def status(self) -> str | None:
        return (self.marker or {}).get("status")

    @property
    def has_checkpoints(self) -> bool:
        return (self.out / "checkpoints").is_dir()


def _reads_input(r: _Request) -> str:
    return (f"--output_dir {r.out} is where this run reads its input ({r.reads_from_it}): writing there would "
            "replace what is being read. Pass another --output_dir.")


def _not_a_folder(r: _Request) -> str:
    return f"--output_dir {r.out} exists and is not a folder. Pass another --output_dir."


def _still_being_written(r: _Request) -> str:
    return (f"{r.out} is being written by a {r.owner} run that is still going (process "
            f"{r.marker.get('pid')}). Wait for it, stop it, or pass another --output_dir.")


def _interrupted(r: _Request) -> str:
    how = "a failed" if r.status == "failed" else "an interrupted"
    message = (r.marker or {}).get("message")
    return (f"{r.out} holds {how} {r.program} run" + (f" ({message})" if message else "") + ". Resume it:\n  "
            f"{_resume_command()}\nor start over with --overwrite_output_dir (its checkpoints and logs are removed), "
            "or pass another --output_dir.")


def _already_holds(r: _Request) -> str:
    what = (f"a finished {r.owner} run" if r.own_run else f"the outputs of {r.owner}" if r.owner else
            f"outputs ({', '.join(r.owned[:4])})")
    hint = " (or --resume_from_checkpoint latest to continue it)" if r.own_run and r.resumable else ""
    return (f"{r.out} already holds {what}. Pass another --output_dir, or --overwrite_output_dir to replace "
            f"them{hint}.")


# The first rule whose condition holds decides: None accepts the folder, a function words the refusal.
_OUTPUT_DIR_RULES: tuple[tuple[Callable[[_Request], bool], Callable[[_Request], str] | None], ...] = (
    (lambda r: r.reads_from_it is not None, _reads_input),
    (lambda r: r.out.exists() and not r.out.is_dir(), _not_a_folder),
    (lambda r: not r.out.exists() or r.overwrite, None),
    (lambda r: r.marker is None and not r.owned, None),  # empty, or only files of the user's own
    (lambda r: r.status == "running" and _still_running(r.marker), _still_being_written),
    # resumed, or a run that stopped before writing anything to resume from
    (lambda r: r.own_run and r.status in STOPPED and (r.resume or not r.has_checkpoints), None),
    (lambda r: r.own_run and r.status in STOPPED, _interrupted),
    (lambda r: r.own_run and r.status == "finished" and r.resume and r.has_checkpoints, None),  # more epochs
    (lambda r: r.marker is None and r.resume and r.has_checkpoints, None),  # checkpoints in an unmarked folder
    (lambda r: True, _already_holds),
)


def check_output_dir(path, program: str, *, overwrite: bool = False, resume: bool = False, inputs=(),
                     resumable: bool = True) -> Path:
    """Refuse (OutputDirError, before any work) an output folder this run must not write into, by the first
    matching rule of `_OUTPUT_DIR_RULES` (`resumable=False`: the program has no checkpoints to resume from,
    e.g. export). Reads only: safe on every process."""
    request = _Request(Path(path), program, overwrite, resume, resumable, tuple(inputs))
    refusal = next(outcome for condition, outcome in _OUTPUT_DIR_RULES if condition(request))
    if refusal is not None:
        raise OutputDirError(refusal(request))
    return request.out


def take_output_dir(out: Path, program: str, *, overwrite: bool) -> None:
    """Create the folder (after `check_output_dir`), clear the old run's files when overwriting (checkpoints
    first), and mark the folder as this program's running run. Call on one process only."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for entry in sorted(_owned_entries(out), key=lambda p: p.name != "checkpoints"):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        _remove_stale_temporaries(out / "checkpoints")
        write_json(out / RUN_MARKER, {"program": program, "status": "running", "pid": os.getpid(),
                                      "host": socket.gethostname()})
        _TAKEN.append(out)
    except OSError as error:
        raise OutputDirError(f"cannot write into --output_dir {out}: {error.strerror or error}. Pass a writable "
                             "--output_dir.") from None


def _remove_stale_temporaries(checkpoints: Path) -> None:
    """Half-written checkpoints (`.checkpoint-N.tmp`) of a run killed mid-write: no process of this run writes yet."""
    if checkpoints.is_dir():
        for stale in checkpoints.glob(".checkpoint-*.tmp"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def claim_output_dir(path, program: str, *, overwrite: bool = False, resume: bool = False, inputs=()) -> Path:
    """`check_output_dir` then `take_output_dir`, for single-process programs (export, convert)."""
    out = check_output_dir(path, program, overwrite=overwrite, resume=resume, inputs=inputs)
    take_output_dir(out, program, overwrite=overwrite)
    return out


def mark_finished(path) -> None:
    """Record that the run in `path` completed (a later run there then needs --overwrite_output_dir)."""
    marker = read_run_marker(path) or {}
    write_json(Path(path) / RUN_MARKER, {**{k: v for k, v in marker.items() if k != "message"}, "status": "finished"})
    if Path(path) in _TAKEN:
        _TAKEN.remove(Path(path))


def taken_count() -> int:
    """How many folders this process has taken and not finished (a mark for `mark_stopped`'s `since`)."""
    return len(_TAKEN)


def mark_stopped(status: str, message: str, since: int = 0) -> list[Path]:
    """Mark each folder this process took (after the first `since`) and has not finished as `status` ("failed" or
    "interrupted") with `message`; returns them. A folder whose marker is no longer this process's running run
    is left alone."""
    marked = []
    while len(_TAKEN) > since:
        folder = _TAKEN.pop()
        marker = read_run_marker(folder) or {}
        if marker.get("status") != "running" or marker.get("pid") != os.getpid():
            continue
        try:
            write_json(folder / RUN_MARKER, {**marker, "status": status, "message": message})
        except OSError:  # e.g. the full disk that stopped the run: the marker still says "running"
            continue
        marked.append(folder)
    return marked
