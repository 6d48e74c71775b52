"""Atomic, rotated, resumable training checkpoints (Accelerate state + a `from_pretrained` folder).

A checkpoint is written under a hidden temporary name and renamed into place only when complete, so a run
killed at any moment (SIGKILL included) leaves either the previous checkpoints or a new complete one.
"""

import json
import os
import re
import shutil
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "training_state.json"


def write_json_atomic(path, data) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def save_pretrained_atomic(model, processor, folder) -> None:
    """`save_pretrained` model + processor into `folder`, replacing it only once the new one is complete."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if processor is not None:
        processor.save_pretrained(tmp)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


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


def save_checkpoint(accelerator, model, processor, checkpoints_dir, step: int, state: dict,
                    total_limit: int | None = None) -> Path:
    """Write checkpoint-{step}: Accelerate state (model, optimizer, RNG, sampler), the model as a
    `from_pretrained` folder in `model/`, and `training_state.json`; then keep the newest `total_limit`."""
    root = Path(checkpoints_dir)
    final, tmp = root / f"checkpoint-{step}", root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every process: each one's RNG state
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(tmp / "model")
        processor.save_pretrained(tmp / "model")
        write_json_atomic(tmp / STATE_FILE, state)  # written last: its presence marks a complete checkpoint
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if total_limit:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint_state(path) -> dict:
    return json.loads((Path(path) / STATE_FILE).read_text())


def resume_from(accelerator, spec: str, checkpoints_dir) -> tuple[Path | None, dict]:
    """Load the Accelerate state of checkpoint `spec` ('latest' or a folder) into the prepared objects;
    returns (its path, its training state), or (None, {}) when 'latest' finds none (a fresh start)."""
    path = resolve_checkpoint(spec, checkpoints_dir)
    if path is None:
        accelerator.print(f"No checkpoint in {checkpoints_dir}: starting from scratch.")
        return None, {}
    accelerator.load_state(str(path))
    return path, load_checkpoint_state(path)


__all__ = ["save_checkpoint", "resolve_checkpoint", "resume_from", "list_checkpoints", "load_checkpoint_state",
           "save_pretrained_atomic", "write_json_atomic"]
