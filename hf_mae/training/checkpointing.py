"""Atomic, rotated, resumable training checkpoints (Accelerate state + a `from_pretrained` folder).

A checkpoint is written under a hidden temporary name and renamed into place only when complete, so a run
killed at any moment (SIGKILL included) leaves either the previous checkpoints or a new complete one. It is
written only from finite weights and optimizer state. Resuming checks the checkpoint first (files present,
readable, finite); `latest` falls back to the newest intact one and says which it skipped.
"""

import json
import re
import shutil
from pathlib import Path

import torch

from ..atomic import move_into_place, temporary_sibling, write_json

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
    """Tensors of the model's parameters and the optimizer's state holding NaN or inf (one host sync)."""
    tensors = [p.detach() for p in model.parameters()]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values()
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
    if not any(w.name.startswith(("model", "pytorch_model")) for w in weights):
        return "its model weights are missing"
    if not any(w.name.startswith("optimizer") for w in weights) and not (path / "optimizer.bin").exists():
        return "its optimizer state (optimizer.bin) is missing"
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
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: each one's RNG state
    if accelerator.is_main_process:
        pretrained = pretrained if pretrained is not None else accelerator.unwrap_model(model)
        if hasattr(pretrained, "save_pretrained"):
            pretrained.save_pretrained(tmp / "model")
            processor.save_pretrained(tmp / "model")
        write_json(tmp / STATE_FILE, state)  # written last: its presence marks a complete checkpoint
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
    try:
        accelerator.load_state(str(path))
    except Exception as error:  # what the checks above cannot see (e.g. a state from another model)
        raise CheckpointError(f"cannot resume from {path}: {type(error).__name__}: {error}") from error
    return path, load_checkpoint_state(path)


__all__ = ["CheckpointError", "checkpoint_problem", "count_nonfinite", "list_checkpoints", "load_checkpoint_state",
           "newest_intact_checkpoint", "resolve_checkpoint", "resume_from", "save_checkpoint"]
