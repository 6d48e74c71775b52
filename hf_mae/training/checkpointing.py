"""Atomic, rotated, resumable training checkpoints (Accelerate state + a `from_pretrained` folder).

A checkpoint is written under a hidden temporary name and renamed into place only when complete, so a run
killed at any moment (SIGKILL included) leaves either the previous checkpoints or a new complete one. It is
written only from finite weights and optimizer state. Resuming checks the checkpoint first (files present,
readable, finite); `latest` falls back to the newest intact one and says which it skipped.

Under FSDP the Accelerate state is sharded (`torch.distributed.checkpoint` folders `pytorch_model_fsdp_0/`,
`optimizer_0/`: each process writes its shards, and it resumes on another number of processes), while `model/`
is the full `from_pretrained` folder gathered from every process. Every process agrees on the staging folder
before it writes and before it is renamed (under DDP too: each writes its own RNG state).
"""

import json
import re
import shutil
from pathlib import Path

import torch

from ..atomic import move_into_place, temporary_sibling, write_json
from .distributed import FullModel, distributed_type_name, local_part

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


def list_checkpoints(checkpoints_dir) -> list[Path]:
    """Complete checkpoints (they hold the state file), oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT.match(p.name))
             and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str, checkpoints_dir) -> Path | None:
    """`latest` -> newest complete checkpoint (None when there is none); else the given path, checked."""
    if spec == "latest":
        found = list_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{spec} is not a complete hf_mae checkpoint (no {STATE_FILE} inside)")
    return path


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written (non-finite state) or resumed from (damaged); the message names it."""


def count_nonfinite(model, optimizer=None) -> int:
    """Tensors of the model's parameters and the optimizer's state holding NaN or inf (one host sync); of a
    sharded model, this process's shards (sum over the processes for the whole count)."""
    tensors = [local_part(p.detach()) for p in model.parameters()]
    if optimizer is not None:
        tensors += [local_part(v) for state in optimizer.state.values() for v in state.values()
                    if torch.is_tensor(v) and v.is_floating_point()]
    if not tensors:
        return 0
    return int(torch.stack([~torch.isfinite(t).all() for t in tensors]).sum())


def checkpoint_problem(path) -> str | None:
    """Why checkpoint `path` cannot be resumed from (missing or unreadable file, non-finite weights), or None."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        return f"{STATE_FILE} is missing or unreadable ({type(error).__name__})"
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    sharded = [d for d in path.glob("*_*") if d.is_dir() and (d / ".metadata").exists()]  # FSDP: DCP folders
    if not any(w.name.startswith(("model", "pytorch_model")) for w in weights + sharded):
        return "its model weights are missing"
    if not any(w.name.startswith("optimizer") for w in weights + sharded):
        return "its optimizer state (optimizer.bin or optimizer_0/) is missing"
    for file in weights:
        try:
            if file.suffix == ".safetensors":
                tensors = load_file(file)
            else:
                tensors = torch.load(file, map_location="cpu", weights_only=False)
        except (OSError, SafetensorError, RuntimeError, EOFError, ValueError) as error:
            return f"{file.name} is unreadable ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        values = tensors.values() if isinstance(tensors, dict) else []
        if any(torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all() for v in values):
            return f"{file.name} holds non-finite weights"
    return None


def save_checkpoint(accelerator, model, processor, checkpoints_dir, step: int, state: dict,
                    total_limit: int | None = None, optimizer=None, pretrained=None) -> Path:
    """Write checkpoint-{step}: Accelerate state (model, optimizer, RNG, sampler), the model (or `pretrained`,
    the model that holds it, e.g. the classifier around a probe head) as a `from_pretrained` folder in
    `model/`, and `training_state.json`; then keep the newest `total_limit`.
    Raises `CheckpointError` (writing nothing) when the weights or optimizer state are not finite."""
    bad = accelerator.reduce(torch.tensor(float(count_nonfinite(model, optimizer)), device=accelerator.device),
                             "sum").item()
    if bad:
        raise CheckpointError(f"not writing checkpoint-{step}: {int(bad)} weight or optimizer tensors are not "
                              "finite")
    root = Path(checkpoints_dir)
    final = root / f"checkpoint-{step}"
    tmp = temporary_sibling(final)  # one name for every process: each writes its own part of the state
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()  # the staging folder exists before any process writes into it
    accelerator.save_state(str(tmp))  # every process: its RNG state (and under FSDP its shards)
    full = FullModel(pretrained if pretrained is not None else accelerator.unwrap_model(model))
    pretrained = full.get(build=accelerator.is_main_process)  # gathered from every process when sharded
    if accelerator.is_main_process and hasattr(pretrained, "save_pretrained"):
        pretrained.save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
    accelerator.wait_for_everyone()  # every process has written its part before the folder is renamed
    if accelerator.is_main_process:
        write_json(tmp / STATE_FILE, {**state, "num_processes": accelerator.num_processes,
                                      "distributed_type": distributed_type_name(accelerator)})
        move_into_place(tmp, final)
        if total_limit:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint_state(path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def newest_intact_checkpoint(checkpoints_dir, report=print) -> Path | None:
    """The newest checkpoint that `checkpoint_problem` accepts; each damaged newer one is reported."""
    for path in reversed(list_checkpoints(checkpoints_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        report(f"WARNING: checkpoint {path} is damaged ({problem}): trying the one before it.")
    return None


def resume_from(accelerator, spec: str, checkpoints_dir) -> tuple[Path | None, dict]:
    """Load the Accelerate state of checkpoint `spec` ('latest' or a folder) into the prepared objects;
    returns (its path, its training state), or (None, {}) when 'latest' finds none (a fresh start).

    'latest' takes the newest intact checkpoint (damaged newer ones are named and skipped); a damaged
    checkpoint given by path stops the run with a message naming it and the newest intact one."""
    if spec == "latest":
        found = list_checkpoints(checkpoints_dir)
        path = newest_intact_checkpoint(checkpoints_dir, accelerator.print)
        if path is None and found:
            names = ", ".join(p.name for p in found)
            raise CheckpointError(f"every checkpoint in {checkpoints_dir} is damaged ({names}): nothing to resume "
                                  "from. Start over with --overwrite_output_dir.")
        if path is None:
            accelerator.print(f"No checkpoint in {checkpoints_dir}: starting from scratch.")
            return None, {}
    else:
        path = resolve_checkpoint(spec, checkpoints_dir)
        problem = checkpoint_problem(path)
        if problem:
            intact = newest_intact_checkpoint(path.parent, lambda _: None)
            raise CheckpointError(f"cannot resume from {path}: {problem}. "
                                  + (f"The newest intact checkpoint is {intact}." if intact else
                                     "No intact checkpoint is beside it."))
    state = load_checkpoint_state(path)
    check_layout(accelerator, path, state)
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # what the checks above cannot see (e.g. a state from another model)
        raise CheckpointError(f"cannot resume from {path}: {type(error).__name__}: {error}") from error
    return path, state


def check_layout(accelerator, path: Path, state: dict) -> None:
    """A checkpoint resumes under the kind of launch that wrote it (sharded or not); a sharded one on any number
    of processes (its shards are redistributed), but only from an epoch's end when that number changed: the
    rest of an epoch's data order depends on it."""
    sharded_state = any(path.glob("pytorch_model_fsdp_*"))
    sharded_now = distributed_type_name(accelerator) == "FSDP"
    if sharded_state != sharded_now:
        written = "sharded (FSDP)" if sharded_state else "unsharded"
        raise CheckpointError(f"cannot resume from {path}: its state is {written} and this run is "
                              f"{distributed_type_name(accelerator)}; resume it with the kind of launch config that "
                              "wrote it (scripts/configs/fsdp*.yaml for sharded state).")
    saved, now = state.get("num_processes"), accelerator.num_processes
    if saved and saved != now:
        if state.get("batches_in_epoch"):
            raise CheckpointError(f"cannot resume from {path} on {now} processes: it was written by {saved} processes "
                                  f"in the middle of an epoch, whose remaining data order depends on the number of "
                                  f"processes. Resume it on {saved} processes, or from an end-of-epoch checkpoint.")
        accelerator.print(f"Resuming a checkpoint of {saved} processes on {now}: the state is redistributed.")


__all__ = ["CheckpointError", "check_layout", "checkpoint_problem", "count_nonfinite", "list_checkpoints",
           "load_checkpoint_state", "newest_intact_checkpoint", "resolve_checkpoint", "resume_from", "save_checkpoint"]
