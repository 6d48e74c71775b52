"""Run start-up: the Accelerator and its CPU threads, the run log and trackers, the banner; a resume checked
against the recipe its checkpoint was written with; the end of a run (results.json, the marker)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import write_json, write_text
from .checkpointing import STATE_FILE, list_checkpoints
from .distributed import check_sharding, distributed_type_name, enable_fsdp_on_cpu, parameters_per_process
from .output_dir import check_output_dir, mark_finished, take_output_dir

# --------------------------------------------------------------------------------------------------------
# Accelerator, run log, trackers, banner
# --------------------------------------------------------------------------------------------------------


# the first windows of `logging_steps` hold the warm-up (allocations, caches): estimate from the third
ESTIMATE_AFTER_WINDOWS = 3


class RunLog:
    """Append-only JSONL log on the main process, plus the Accelerate trackers; after the banner of a run with
    a known number of optimizer steps, one line that says how long the training steps take on this machine.

    It also holds what a run's checkpoints record about the run as a whole: its `recipe` (the settings that
    change the result), the flags a resume changed on purpose, and the wall time of the earlier segments."""

    def __init__(self, accelerator, path: Path, recipe: Mapping | None = None, changed_flags: Mapping | None = None):
        self.accelerator, self.path = accelerator, path
        self.expected: tuple[int, int] | None = None  # (optimizer steps, images per step) until estimated
        self.windows_seen = 0
        self.recipe, self.changed_flags = dict(recipe or {}), dict(changed_flags or {})
        self.started, self.earlier_s = time.time(), 0.0

    def elapsed_s(self) -> float:
        """Wall time of the whole run: the earlier segments (from the checkpoint resumed) and this one."""
        return round(self.earlier_s + time.time() - self.started, 1)

    def rewind(self, step: int | None, checkpoint=None) -> int:
        """Keep the records of the run up to checkpoint `step` (None: none, a fresh start) and drop what came
        after it (the resumed run writes those steps again), then record the resume. Returns the records dropped."""
        dropped = 0
        if self.accelerator.is_main_process and self.path.exists():
            lines = self.path.read_text().splitlines()
            kept = _records_up_to(lines, step) if step is not None else []
            dropped = len(lines) - len(kept)
            write_text(self.path, "".join(line + "\n" for line in kept))
        if step is not None:
            self.write({"event": "resume", "step": step, "checkpoint": str(checkpoint), "dropped_records": dropped,
                        **({"changed_flags": self.changed_flags} if self.changed_flags else {})})
        return dropped

    def write(self, record: dict, step: int | None = None) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if step is not None and numeric:
            self.accelerator.log(numeric, step=step)
        if self.expected and record.get("images_per_s"):
            self.windows_seen += 1
            if self.windows_seen == ESTIMATE_AFTER_WINDOWS:
                self.print_estimate(record["step"], record["images_per_s"])

    def print_estimate(self, step: int, images_per_s: float) -> None:
        """What the rest of the run takes on this machine, from a steady logging window's images/s."""
        total, images_per_step = self.expected
        self.expected = None
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            minutes = total * images_per_step / images_per_s / 60
            left = max(0, total - step) * images_per_step / images_per_s / 60
            tqdm.write(f"speed after {step} of {total} steps: {images_per_s:.0f} images/s on this machine -> the "
                       f"training steps take about {minutes:.1f} min in all ({left:.1f} min left), plus the "
                       f"held-out evaluations")


def _records_up_to(lines: list[str], step: int) -> list[str]:
    """The log lines written before checkpoint `step` was recorded (torn lines dropped): up to its "checkpoint"
    record, or, when the run died before writing that record, up to the first record of a later step."""
    records = []
    for line in lines:
        try:
            records.append((line, json.loads(line)))
        except ValueError:
            continue
    marks = [i for i, (_, r) in enumerate(records) if r.get("event") == "checkpoint" and r.get("step") == step]
    if marks:
        end = marks[-1] + 1
    else:
        end = next((i for i, (_, r) in enumerate(records) if isinstance(r.get("step"), int) and r["step"] > step),
                   len(records))
    return [line for line, _ in records[:end]]


class ResumeMismatchError(ValueError):
    """A resume whose settings differ from the recipe its checkpoint was written with; the message lists them."""


def _same_value(saved, now) -> bool:
    if saved == now:
        return True
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        return list(saved) == list(now)
    if isinstance(saved, str) and isinstance(now, str) and os.path.exists(saved) and os.path.exists(now):
        return Path(saved).resolve() == Path(now).resolve()  # one path, spelled two ways
    return False


def recipe_differences(saved: Mapping, now: Mapping) -> dict[str, list]:
    """{setting: [as the checkpoint recorded it, as now]} for every setting of either that differs."""
    return {name: [saved.get(name), now.get(name)] for name in sorted(set(saved) | set(now))
            if not _same_value(saved.get(name), now.get(name))}


def _checkpoint_to_resume(checkpoints_dir: Path, spec: str) -> Path | None:
    """The checkpoint `spec` names ('latest': the newest whose state file is readable), or None."""
    if spec != "latest":
        return Path(spec)
    for path in reversed(list_checkpoints(checkpoints_dir)):
        try:
            json.loads((path / STATE_FILE).read_text())
            return path
        except (OSError, ValueError):
            continue
    return None


def check_resume_recipe(checkpoints_dir: Path, spec: str, recipe: Mapping, allow_changes: bool) -> dict:
    """Refuse (`ResumeMismatchError`, listing each difference) a resume whose recipe differs from the one the
    checkpoint `spec` was written with, unless `allow_changes`; returns the differences accepted ({} for none).
    A checkpoint that cannot be read is left to the loop's resume, which names the problem."""
    path = _checkpoint_to_resume(checkpoints_dir, spec)
    try:
        saved = json.loads((path / STATE_FILE).read_text()).get("recipe") if path else None
    except (OSError, ValueError):
        return {}
    if saved is None:
        return {}
    changes = recipe_differences(saved, recipe)
    if changes and not allow_changes:
        listed = "; ".join(f"{name}: {was!r} -> {now!r}" for name, (was, now) in changes.items())
        raise ResumeMismatchError(
            f"--resume_from_checkpoint {spec}: {path} was written by a run with other settings, and a resume is the "
            f"same run (checkpoint -> now: {listed}). Resume with the checkpoint's settings, pass "
            "--allow_changed_resume to continue with the new ones on purpose (logged), or start a new run in another "
            "--output_dir.")
    return changes


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


def cpu_threads_per_process(cpu_threads: int | None, accelerator) -> int:
    """`cpu_threads` when given, else the cores this process may use shared among the local processes.

    `accelerate launch` exports OMP_NUM_THREADS=1 on machines without a GPU (one physical core per process
    by its count), which halves the speed of a 2-core machine; set the thread count from the cores instead.
    """
    if cpu_threads:
        return cpu_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return max(1, cores // max(1, local))


@dataclass(frozen=True)
class RunConfig:
    """How a program's run starts: its output folder, seed, precision, threads, trackers, and its settings (what
    training_args.json and the trackers' config record)."""

    output_dir: str | Path
    seed: int = 0
    mixed_precision: str = "auto"
    overwrite_output_dir: bool = False
    resume: bool = False  # continuing from a checkpoint: the run log is kept
    resume_from: str | None = None  # 'latest' or a checkpoint folder: its recipe is checked against `recipe`
    recipe: Mapping = field(default_factory=dict)  # the settings that change the result (checkpoints record it)
    allow_changed_resume: bool = False  # a resume may change the recipe (the changes are logged)
    report_to: str | None = None
    cpu_threads: int | None = None
    settings: Mapping = field(default_factory=dict)


def start_run(config: RunConfig, program: str, *, inputs=(), gradient_accumulation_steps: int = 1,
              save_settings: bool = False):
    """Claim the output folder, build the Accelerator (mixed precision resolved, CPU threads set), seed, and
    open the run log (fresh unless resuming); `save_settings` writes `config.settings` to training_args.json (what
    a training run's model card reads). Returns (accelerator, run_log, out_dir)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    from .allocator import keep_freed_memory
    from .precision import resolve_mixed_precision

    out = check_output_dir(config.output_dir, program, overwrite=config.overwrite_output_dir, resume=config.resume,
                           inputs=inputs)
    changed = check_resume_recipe(out / "checkpoints", config.resume_from, config.recipe,
                                  config.allow_changed_resume) if config.resume and config.resume_from else {}
    log_with = trackers_from(config.report_to)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision),
                              gradient_accumulation_steps=gradient_accumulation_steps, log_with=log_with,
                              project_dir=str(out),  # pinned batches are copied to a GPU without waiting:
                              dataloader_config=DataLoaderConfiguration(non_blocking=True))
    enable_fsdp_on_cpu(accelerator)  # the CPU testing switch (HF_MAE_FSDP_ON_CPU=1); nowhere else
    check_sharding(accelerator)  # an FSDP config that would run unsharded stops here
    set_seed(config.seed)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(config.cpu_threads, accelerator))
        keep_freed_memory()  # no page faults to reallocate each step's activations
    accelerator.wait_for_everyone()  # every process has checked the folder before one writes into it
    if accelerator.is_main_process:
        take_output_dir(out, program, overwrite=config.overwrite_output_dir)
        if not config.resume:
            (out / "log.jsonl").unlink(missing_ok=True)
        if save_settings:
            write_json(out / "training_args.json", dict(config.settings))
        if accelerator.log_with:
            accelerator.init_trackers("hf_mae_" + re.sub(r"\W+", "_", program).lower(),
                                      config={k: v for k, v in config.settings.items()
                                              if isinstance(v, (int, float, str, bool))})
    accelerator.wait_for_everyone()
    if changed:
        accelerator.print("WARNING: resuming with changed settings (--allow_changed_resume): " + ", ".join(
            f"{name} {was!r} -> {now!r}" for name, (was, now) in changed.items()))
    return accelerator, RunLog(accelerator, out / "log.jsonl", config.recipe, changed), out


def print_banner(accelerator, run_log: RunLog, title: str, banner: dict, model=None) -> None:
    """The run's settings, printed once and written as the log's "start" record, with the distributed type and
    (given the prepared `model`) the parameter count each process holds: sharding at a glance. Every process
    calls it (the counts are gathered)."""
    banner = {**banner, "distributed_type": distributed_type_name(accelerator)}
    if model is not None:
        banner["parameters_per_process"] = parameters_per_process(accelerator, model)
    width = max(len(k) for k in banner) + 2
    accelerator.print(f"hf_mae {title}\n" + "\n".join(f"  {k:>{width}}: {v}" for k, v in banner.items()))
    run_log.write({"event": "start", **banner})
    if banner.get("optimizer_steps") and banner.get("effective_batch_size"):  # the estimate follows the warm-up
        run_log.expected = (int(banner["optimizer_steps"]), int(banner["effective_batch_size"]))


def finish_run(accelerator, out_dir: Path, results: dict, run_log: RunLog | None = None) -> None:
    """Write results.json and mark the folder finished (main process), then close the trackers. With the
    `run_log`, `results["wall_time_s"]` becomes the wall time over every segment of the run. A run that stopped
    before its planned optimizer steps says so."""
    if run_log is not None:
        results["wall_time_s"] = run_log.elapsed_s()
    if results.get("stopped_early"):
        accelerator.print(f"WARNING: the run stopped after {results.get('optimizer_steps')} of its "
                          f"{results.get('planned_steps')} planned optimizer steps: the training data ran out.")
    if accelerator.is_main_process:
        write_json(out_dir / "results.json", results)
        mark_finished(out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
