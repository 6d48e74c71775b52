"""The one training-loop core: pretraining, fine-tuning and the augmented linear probe run their epochs here.

A program gives a `step(batch, epoch, batch_index) -> loss` and, optionally, an `on_epoch_end`; the loop does
the rest, the same way for every program:
- **bad batches**: a batch whose images all failed to decode is replaced by a small zero-weight placeholder
  (under DDP every process must take part in each backward) and counted; an optimizer step whose micro-batches
  were all placeholders is skipped. An epoch with no decodable image at all is an error naming the data.
- **non-finite losses**: the optimizer step is skipped and counted, logged (`"loss": null` when no finite
  loss is left in a logging window, never 0.0), and after `max_nonfinite_steps` in a row the run stops with
  `NonFiniteLossError` naming the newest intact checkpoint. One host sync per optimizer step decides it.
- **checkpoints**: at the end of every epoch, of the schedule, and every `checkpointing_steps` optimizer steps,
  written only from finite weights (`checkpointing.save_checkpoint`); `resume` continues exactly where one was
  written. A checkpoint that cannot be written (a full disk) leaves no partial folder and is an error naming it.
- **durable results**: what the summary reports (last logged loss, peak lr, skipped steps, batches and images,
  the open logging window, wall time) and the run's recipe are in every checkpoint and restored on resume, so a
  run killed and resumed, or resumed once finished, reports what the uninterrupted run reports; the run log is
  rewound to the checkpoint (no step twice). A run whose data ran out before its planned steps says so.
- **the schedule**: the learning rate set every optimizer step (warmup then cosine, `optim.lr_at_step`);
  `plan_schedule` warns when the warmup is as long as the run.
- **logging**: mean loss, lr, images/s, data-wait fraction, skipped batches/images every `logging_steps`; a
  progress bar on the local main process.
- **uint8 batches**: `normalize` (e.g. `TrainTransform(output="uint8").normalizer()`) turns each batch's uint8
  pixels into the normalised float input on the device, before `step` sees it.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import temporary_sibling
from .checkpointing import CheckpointError, newest_intact_checkpoint, resume_from, save_checkpoint
from .distributed import sharding_record
from .failures import describe_failure
from .optim import lr_at_step, set_lr


class NonFiniteLossError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss; the message names the newest intact checkpoint."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (e.g. a full disk); nothing of it is left and the older ones are intact."""


class NoDecodableImagesError(ValueError):
    """A whole epoch of the training data held no decodable image."""


class WarmupWarning(UserWarning):
    """The warmup is as long as the run or longer: the learning rate never reaches its peak."""


class NonFiniteGuard:
    """The non-finite policy's counter: steps with a non-finite loss are skipped and counted; `tripped` after
    `limit` of them in a row."""

    def __init__(self, limit: int, total: int = 0):
        self.limit, self.total, self.in_a_row = limit, total, 0

    def record(self, nonfinite: bool) -> None:
        self.total += int(nonfinite)
        self.in_a_row = self.in_a_row + 1 if nonfinite else 0

    @property
    def tripped(self) -> bool:
        return self.in_a_row >= self.limit

    def error(self, checkpoint_note: str) -> NonFiniteLossError:
        return NonFiniteLossError(
            f"{self.in_a_row} optimizer steps in a row had a non-finite loss (each skipped); stopping. "
            f"{checkpoint_note}. Try a lower learning rate (--blr / --learning_rate), --max_grad_norm 1.0 or "
            "--mixed_precision no.")


@dataclass
class Schedule:
    """How many optimizer steps a run takes, in how many epochs, and how many of them warm up."""

    batches_per_epoch: int
    updates_per_epoch: int
    total_updates: int
    epochs: int
    warmup_updates: int


def plan_schedule(batches_per_epoch: int, accumulation: int, *, epochs: int | None = None,
                  max_train_steps: int | None = None, warmup_epochs: float | None = None,
                  warmup_steps: int | None = None, warmup_ratio: float | None = None) -> Schedule:
    """Optimizer steps per epoch and in all (`max_train_steps` wins over `epochs`), and the warmup in steps
    (`warmup_steps`, else `warmup_ratio` of the run, else `warmup_epochs`); warns (`WarmupWarning`) when the
    warmup is not shorter than the run."""
    updates_per_epoch = math.ceil(batches_per_epoch / accumulation)
    total = max_train_steps or epochs * updates_per_epoch
    if warmup_steps is not None:
        warmup = warmup_steps
    elif warmup_ratio is not None:
        warmup = round(warmup_ratio * total)
    else:
        warmup = round((warmup_epochs or 0) * updates_per_epoch)
    if warmup and warmup >= total:
        warnings.warn(f"the warmup ({warmup} optimizer steps) is as long as the run ({total} steps) or longer: the "
                      f"learning rate rises for the whole run and never reaches its peak (the last step gets "
                      f"{(total - 1) / warmup:.0%} of it). Shorten the warmup (--warmup_epochs, --warmup_steps or "
                      "--warmup_ratio) or train longer.", WarmupWarning, stacklevel=2)
    return Schedule(batches_per_epoch, updates_per_epoch, total, math.ceil(total / updates_per_epoch), warmup)


def placeholder_batch(config, device, labels: bool = False, size: int = 2) -> dict:
    """Zero images (and class-0 labels) standing in for a batch with no decodable image (zero weight)."""
    height, width = config.image_hw
    batch = {"pixel_values": torch.zeros(size, config.num_channels, height, width, device=device)}
    if labels:
        batch["labels"] = torch.zeros(size, dtype=torch.long, device=device)
    return batch


@dataclass(frozen=True)
class LoopConfig:
    """The loop's policies: how often it logs and writes mid-epoch checkpoints, how many checkpoints it keeps,
    and how many non-finite optimizer steps in a row stop the run."""

    logging_steps: int = 10
    checkpoint_every: int | None = None  # optimizer steps between mid-epoch checkpoints; None: epoch ends only
    checkpoints_total_limit: int = 2
    max_nonfinite_steps: int = 5


@dataclass
class _Pass:
    """What one `run` accumulates on the device (no host sync per micro-batch) and around it."""

    progress: tqdm
    extra_state: object  # () -> dict of the program's own checkpoint values
    cycle: torch.Tensor  # [bad micro-batches, micro-batches with images] of the current optimizer step
    window: torch.Tensor  # [loss sum, finite micro-batches] of the current logging window
    window_images: int = 0
    window_wait: float = 0.0
    window_start: float = field(default_factory=time.perf_counter)


class TrainingLoop:
    """Epochs of `step` over a prepared loader with accumulation, the schedule, the bad-batch and non-finite
    policies, logging, checkpoints and exact resume (see the module docstring)."""

    def __init__(self, accelerator, model, optimizer, loader, schedule: Schedule, *, lr: float,
                 checkpoints_dir: Path, processor, run_log, desc: str, placeholder, config: LoopConfig = LoopConfig(),
                 min_lr: float = 0.0, max_grad_norm: float | None = None, bad_images=lambda: 0, pretrained=None,
                 normalize=None, lr_schedule=lr_at_step):
        self.accelerator, self.model, self.optimizer, self.loader = accelerator, model, optimizer, loader
        self.lr_schedule = lr_schedule  # (step, total, warmup, lr, min_lr) -> lr: warmup-cosine unless given
        self.schedule, self.lr, self.min_lr, self.max_grad_norm = schedule, lr, min_lr, max_grad_norm
        self.config = config
        self.checkpoints_dir, self.processor, self.run_log, self.desc = checkpoints_dir, processor, run_log, desc
        self.placeholder, self.bad_images, self.pretrained = placeholder, bad_images, pretrained
        self.normalize = normalize  # batch -> batch on the device before `step`: uint8 pixels -> normalised float
        self.update_step = self.start_epoch = self.skip_batches = self.skipped_batches = 0
        self.nonfinite = NonFiniteGuard(config.max_nonfinite_steps)
        # a mid-epoch checkpoint's (loss sum, finite micro-batches, batches with images), each process's share
        self.epoch_totals = (0.0, 0.0, 0.0)
        self.last_loss, self.peak_lr, self.resumed_from = None, 0.0, None
        self.earlier_bad_images = 0  # undecodable images of the segments before a resume
        self.window_totals = (0.0, 0.0)  # a checkpoint's open logging window (loss sum, finite), each process's share
        self.checkpointed_step, self.pass_state = None, None

    # ---------------------------------------------------------------------------------------------- resume
    def resume(self, spec: str | None) -> dict:
        """Load checkpoint `spec` ('latest' or a folder) if given; returns its saved state ({} for none)."""
        if not spec:
            return {}
        self.resumed_from, state = resume_from(self.accelerator, spec, self.checkpoints_dir)
        if self.resumed_from is not None:
            self.update_step, self.start_epoch = state["update_step"], state["epoch"]
            self.skip_batches = state.get("batches_in_epoch", 0)
            self.nonfinite.total = state.get("nonfinite_steps", 0)
            self.skipped_batches = state.get("skipped_batches", 0)
            self.epoch_totals = (*state.get("epoch_totals", ()), 0.0, 0.0, 0.0)[:3]
            self.restore_results(state)
        self.run_log.rewind(self.update_step if self.resumed_from is not None else None, self.resumed_from)
        return state

    def restore_results(self, state: dict) -> None:
        """What the summary reports, as the checkpoint recorded it (a checkpoint without it: from this segment)."""
        self.last_loss, self.peak_lr = state.get("last_loss"), state.get("peak_lr", 0.0)
        self.earlier_bad_images = state.get("skipped_images", 0)
        self.window_totals = (*state.get("window_totals", ()), 0.0, 0.0)[:2]
        self.checkpointed_step = self.update_step
        self.run_log.earlier_s = state.get("wall_time_s", 0.0)

    def durable_state(self, epoch: int, batches_in_epoch: int, totals: tuple) -> dict:
        """The loop's part of a checkpoint: where it is, and what the summary reports so far."""
        window = self.pass_state.window if self.pass_state is not None else torch.zeros(2)
        window = (self.accelerator.reduce(window.clone(), "sum") / self.accelerator.num_processes).tolist()
        return {"update_step": self.update_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                "nonfinite_steps": self.nonfinite.total, "skipped_batches": self.skipped_batches,
                "epoch_totals": list(totals), "window_totals": window, "last_loss": self.last_loss,
                "peak_lr": self.peak_lr, "skipped_images": self._reduced_bad_images(),
                "planned_steps": self.schedule.total_updates, "wall_time_s": self.run_log.elapsed_s(),
                "recipe": self.run_log.recipe, "changed_flags": self.run_log.changed_flags}

    def checkpoint(self, epoch: int, batches_in_epoch: int, totals: tuple, extra: dict) -> Path | None:
        if self.checkpointed_step == self.update_step:
            return None  # this step's checkpoint is written (a mid-epoch one at the schedule's end)
        state = {**self.durable_state(epoch, batches_in_epoch, totals), **extra}
        try:
            path = save_checkpoint(self.accelerator, self.model, self.processor, self.checkpoints_dir,
                                   self.update_step, state, self.config.checkpoints_total_limit,
                                   optimizer=self.optimizer, pretrained=self.pretrained)
        except CheckpointError as error:
            self.run_log.write({"event": "stopped", "step": self.update_step, "reason": "non-finite weights"})
            raise NonFiniteLossError(f"{error}: the run diverged; stopping. {self._intact_note()}. Try a lower "
                                     "learning rate (--blr / --learning_rate) or --max_grad_norm 1.0.") from None
        except BaseException as error:  # a full disk, an interrupt: no partial checkpoint is left behind
            self._remove_partial_checkpoint()
            if not isinstance(error, Exception):
                raise
            raise CheckpointWriteError(
                f"could not write checkpoint-{self.update_step} in {self.checkpoints_dir}: {describe_failure(error)}. "
                f"{self._intact_note()}.") from error
        self.checkpointed_step = self.update_step
        self.run_log.write({"event": "checkpoint", "step": self.update_step, "path": str(path)})
        return path

    def _remove_partial_checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            partial = temporary_sibling(Path(self.checkpoints_dir) / f"checkpoint-{self.update_step}")
            shutil.rmtree(partial, ignore_errors=True)

    def _intact_note(self) -> str:
        intact = newest_intact_checkpoint(self.checkpoints_dir, lambda _: None)
        return (f"Newest intact checkpoint: {intact} (resume with --resume_from_checkpoint {intact})" if intact
                else "No checkpoint was written before this.")

    # ----------------------------------------------------------------------------------------------- run
    def run(self, step, on_epoch_end=None, extra_state=dict) -> dict:
        """Train to the end of the schedule. `step(batch, epoch, batch_index)` returns the micro-batch loss;
        `on_epoch_end(epoch_done, mean_loss, done)` runs after each epoch (before its checkpoint);
        `extra_state()` adds the program's own values to each checkpoint. Returns a summary dict."""
        device = self.accelerator.device
        progress = tqdm(total=self.schedule.total_updates, initial=self.update_step, desc=self.desc,
                        dynamic_ncols=True, disable=not self.accelerator.is_local_main_process)
        state = _Pass(progress, extra_state, torch.zeros(2, device=device),
                      torch.tensor(self.window_totals, device=device))
        self.pass_state = state
        done = self.update_step >= self.schedule.total_updates
        self.model.train()
        try:
            for epoch in range(self.start_epoch, self.schedule.epochs):
                if done:
                    break
                batches_in_epoch, epoch_sum, done = self._run_epoch(step, epoch, state)
                self._end_epoch(epoch, batches_in_epoch, epoch_sum, done, on_epoch_end, extra_state)
        finally:  # a failure's message starts on a line of its own
            progress.close()
        if self.update_step < self.schedule.total_updates:  # the data ran out (a stream) before the schedule
            self.run_log.write({"event": "stopped_early", "step": self.update_step,
                                "planned_steps": self.schedule.total_updates, "reason": "the training data ran out"})
        self.run_log.write(sharding_record(self.accelerator, self.model, self.optimizer))  # what each process held
        return self._summary()

    def _run_epoch(self, step, epoch: int, state: _Pass) -> tuple[int, torch.Tensor, bool]:
        """One epoch (the rest of one, when resumed mid-epoch). Returns (batches drawn in the epoch, its on-device
        [loss sum, finite micro-batches, batches with images], whether the schedule ended in it)."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)
        active = self.accelerator.skip_first_batches(self.loader, self.skip_batches) if self.skip_batches \
            else self.loader
        batches_in_epoch, self.skip_batches = self.skip_batches, 0
        epoch_sum = torch.tensor(self.epoch_totals, device=self.accelerator.device)
        self.epoch_totals = (0.0, 0.0, 0.0)
        wait_start = time.perf_counter()
        for batch in active:
            state.window_wait += time.perf_counter() - wait_start
            batch_index, batches_in_epoch = batches_in_epoch, batches_in_epoch + 1  # counts every batch drawn
            self._micro_batch(step, batch, epoch, batch_index, epoch_sum, state)
            if self.accelerator.sync_gradients and self._after_update(epoch, batches_in_epoch, epoch_sum, state):
                return batches_in_epoch, epoch_sum, True
            wait_start = time.perf_counter()
        return batches_in_epoch, epoch_sum, False

    def _micro_batch(self, step, batch, epoch: int, batch_index: int, epoch_sum: torch.Tensor, state: _Pass) -> None:
        """Step accounting: forward/backward of one micro-batch (a placeholder for one with no decodable image),
        the optimizer step at the end of an accumulation cycle, the on-device loss sums."""
        acc, device = self.accelerator, self.accelerator.device
        empty = len(batch["pixel_values"]) == 0
        if empty:
            batch = self.placeholder()
            self.skipped_batches += 1
        elif self.normalize is not None:
            batch = self.normalize(batch)
        with acc.accumulate(self.model):
            loss = step(batch, epoch, batch_index)
            finite = torch.isfinite(loss.detach())
            acc.backward(loss * 0.0 if empty else loss)
            state.cycle += torch.stack([(~finite).float(), torch.ones((), device=device) * (not empty)])
            if acc.sync_gradients:
                bad, with_images = acc.reduce(state.cycle, "sum").tolist()
                state.cycle.zero_()
                self._optimizer_step(bad > 0, with_images > 0)
        if not empty:
            kept, counted = torch.where(finite, loss.detach().float(), 0.0), finite.float()
            state.window += torch.stack([kept, counted])
            epoch_sum += torch.stack([kept, counted, torch.ones((), device=device)])
            state.window_images += len(batch["pixel_values"]) * acc.num_processes

    def _after_update(self, epoch: int, batches_in_epoch: int, epoch_sum: torch.Tensor, state: _Pass) -> bool:
        """The stop and checkpoint policy after an optimizer step: stop on too many non-finite steps in a row,
        log every `logging_steps`, write a mid-epoch checkpoint every `checkpoint_every`. True when the schedule
        is done."""
        total = self.schedule.total_updates
        if self.nonfinite.tripped:
            self.run_log.write({"event": "stopped", "step": self.update_step, "reason": "non-finite loss",
                                "nonfinite_steps": self.nonfinite.total})
            raise self.nonfinite.error(self._intact_note())
        self.update_step += 1
        state.progress.update(1)
        if self.update_step % self.config.logging_steps == 0 or self.update_step == total:
            self._log(epoch + batches_in_epoch / self.schedule.batches_per_epoch, state)
        every = self.config.checkpoint_every
        if every and self.update_step % every == 0 and batches_in_epoch < self.schedule.batches_per_epoch:
            # mid-epoch only: the epoch's own checkpoint follows its end
            totals = (self.accelerator.reduce(epoch_sum.clone(), "sum") / self.accelerator.num_processes).tolist()
            self.checkpoint(epoch, batches_in_epoch, tuple(totals), state.extra_state())
        return self.update_step >= total

    def _end_epoch(self, epoch: int, batches_in_epoch: int, epoch_sum: torch.Tensor, done: bool, on_epoch_end,
                   extra_state) -> None:
        """An epoch with no decodable image is an error; else the program's `on_epoch_end`, then the epoch's
        checkpoint (when the epoch ran to its end)."""
        loss_sum, finite_count, with_images = self.accelerator.reduce(epoch_sum, "sum").tolist()
        if with_images == 0 and batches_in_epoch > 0:
            raise NoDecodableImagesError(
                f"no decodable image in the training data: every one of the {batches_in_epoch} batches of "
                f"epoch {epoch + 1} was skipped ({self._reduced_bad_images()} undecodable images). Check the "
                "data (the warnings above name the files).")
        epoch_done = epoch + 1
        if on_epoch_end is not None:
            on_epoch_end(epoch_done, loss_sum / finite_count if finite_count else None, done)
        ran_out = not done and batches_in_epoch < self.schedule.batches_per_epoch  # a stream that ended early
        if ran_out and self.pass_state is not None and self.update_step % self.config.logging_steps:
            self._log(epoch + 1.0, self.pass_state)  # the last window, before the checkpoint that ends the run
        if batches_in_epoch >= self.schedule.batches_per_epoch or ran_out:
            self.checkpoint(epoch_done, 0, (0.0, 0.0, 0.0), extra_state())
        elif done:  # the schedule ended inside the epoch: its end is durable too
            totals = (self.accelerator.reduce(epoch_sum.clone(), "sum") / self.accelerator.num_processes).tolist()
            self.checkpoint(epoch, batches_in_epoch, tuple(totals), extra_state())

    def _summary(self) -> dict:
        return {"optimizer_steps": self.update_step, "epochs": self.schedule.epochs,
                "nonfinite_steps": self.nonfinite.total, "skipped_batches": self.skipped_batches,
                "skipped_images": self._reduced_bad_images(), "final_loss": self.last_loss, "peak_lr": self.peak_lr,
                "warmup_steps": self.schedule.warmup_updates, "planned_steps": self.schedule.total_updates,
                "stopped_early": self.update_step < self.schedule.total_updates,
                "resumed_from": str(self.resumed_from) if self.resumed_from else None}

    def _optimizer_step(self, nonfinite: bool, has_images: bool) -> None:
        """Step with the scheduled lr unless the cycle's loss was not finite or it had no image (skipped)."""
        if has_images or nonfinite:
            self.nonfinite.record(nonfinite)
        if has_images and not nonfinite:
            lr = self.lr_schedule(self.update_step, self.schedule.total_updates, self.schedule.warmup_updates,
                                  self.lr, self.min_lr)
            self.peak_lr = max(self.peak_lr, set_lr(self.optimizer, lr))
            if self.max_grad_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _reduced_bad_images(self) -> int:
        """Undecodable training images of the whole run: the earlier segments' and this one's (every process)."""
        return self.earlier_bad_images + int(self.accelerator.reduce(
            torch.tensor(float(self.bad_images()), device=self.accelerator.device), "sum").item())

    def _log(self, epoch: float, state: _Pass) -> None:
        """One log record of the window since the last (mean loss, lr, images/s, data-wait fraction), then a new
        window."""
        elapsed = time.perf_counter() - state.window_start
        loss_sum, finite, bad_images = self.accelerator.reduce(
            torch.cat([state.window, torch.tensor([float(self.bad_images())], device=state.window.device)]),
            "sum").tolist()
        mean_loss = loss_sum / finite if finite else None  # None: no finite loss in the window
        self.last_loss = mean_loss if mean_loss is not None else self.last_loss
        record = {"step": self.update_step, "epoch": round(epoch, 4), "loss": mean_loss,
                  "lr": max(group["lr"] for group in self.optimizer.param_groups),
                  "images_per_s": round(state.window_images / elapsed, 2),
                  "data_wait_fraction": round(state.window_wait / elapsed, 4),
                  "nonfinite_steps": self.nonfinite.total, "skipped_batches": self.skipped_batches,
                  "skipped_images": self.earlier_bad_images + int(bad_images)}
        self.run_log.write(record, step=self.update_step)
        state.progress.set_postfix(loss="non-finite" if mean_loss is None else f"{mean_loss:.4f}",
                                   lr=f"{record['lr']:.2e}")
        state.window.zero_()
        state.window_images, state.window_wait, state.window_start = 0, 0.0, time.perf_counter()


__all__ = ["CheckpointWriteError", "LoopConfig", "NoDecodableImagesError",
           "NonFiniteGuard", "NonFiniteLossError", "Schedule",
           "TrainingLoop", "WarmupWarning", "placeholder_batch", "plan_schedule"]
