"""The linear probe head (BatchNorm without affine + Linear) and its training on features."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.decoding import make_transform_fn
from ..data.train_loader import train_dataloader
from ..data.transforms import TrainTransform
from ..training.loop import LoopConfig, NonFiniteGuard, TrainingLoop, placeholder_batch, plan_schedule
from ..training.optim import LARS, lr_at_step, scaled_lr, set_lr
from .classification import topk_accuracy
from .classifier import init_head
from .features import Features, pool_tokens

# --------------------------------------------------------------------------------------------------------
# The linear probe's head on cached features
# --------------------------------------------------------------------------------------------------------


class ProbeHead(nn.Module):
    """BatchNorm (no affine) + Linear on frozen features; holds the classifier's own modules (shared)."""

    def __init__(self, fc_norm: nn.Module, head: nn.Linear):
        super().__init__()
        self.fc_norm, self.head = fc_norm, head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(features))


def new_probe_head(dim: int, num_labels: int) -> ProbeHead:
    """A stand-alone official probe head (raw-pixel baseline): BatchNorm1d(affine=False, eps=1e-6) + Linear."""
    return ProbeHead(nn.BatchNorm1d(dim, affine=False, eps=1e-6), init_head(nn.Linear(dim, num_labels), 0.01))


@contextlib.contextmanager
def _cpu_threads_for(device: torch.device, work: float):
    """One CPU thread for tiny head problems: thread hand-offs cost more than the math (8x slower with 2
    threads on a shared 2-core machine, measured at 256 x 784 -> 10)."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and work < 5e7:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _head_lr_schedule(epochs: int, steps_per_epoch: int, warmup_epochs: float):
    total = epochs * steps_per_epoch
    return total, min(total, round(warmup_epochs * steps_per_epoch))


def train_probe_head(probe: ProbeHead, features: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                     batch_size: int, lr: float, warmup_epochs: float = 10, min_lr: float = 0.0,
                     weight_decay: float = 0.0, seed: int = 0, eval_features: torch.Tensor | None = None,
                     eval_labels: torch.Tensor | None = None, eval_every: int = 0, log=None,
                     disable_progress: bool = False, max_nonfinite_steps: int = 5) -> list[dict]:
    """Train `probe` on cached features with LARS and a per-step warmup + cosine schedule; in place.

    Batches are reshuffled every epoch with a generator seeded by `seed` (identical on every process);
    the last incomplete batch is dropped (as the official loader), unless there is only one. Returns one
    record per epoch (mean loss, lr, and held-out top-1 every `eval_every` epochs and at the end). A step
    with a non-finite loss is skipped and counted (`NonFiniteGuard`, as in the training loop).
    """
    if not len(features):
        raise ValueError("the probe has no training features (no decodable training image)")
    device = next(probe.parameters()).device
    features, labels = features.to(device), labels.to(device)
    count = len(features)
    batch = min(batch_size, count)
    steps_per_epoch = count // batch
    total, warmup = _head_lr_schedule(epochs, steps_per_epoch, warmup_epochs)
    optimizer = LARS(probe.head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    records, step, nonfinite = [], 0, NonFiniteGuard(max_nonfinite_steps)
    with _cpu_threads_for(device, batch * features.shape[1] * probe.head.out_features):
        for epoch in tqdm(range(epochs), desc="probe head", disable=disable_progress, leave=False):
            probe.train()
            order = torch.randperm(count, generator=generator).to(device)
            loss_sum, finite_steps = torch.zeros((), device=device), 0
            for i in range(steps_per_epoch):
                index = order[i * batch:(i + 1) * batch]
                set_lr(optimizer, lr_at_step(step, total, warmup, lr, min_lr))
                loss = F.cross_entropy(probe(features[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))  # a tiny head on cached features: the sync costs nothing
                nonfinite.record(not finite)
                if finite:
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach()
                    finite_steps += 1
                elif nonfinite.tripped:
                    raise nonfinite.error("The cached-features probe writes no checkpoint")
                step += 1
            record = {"epoch": epoch + 1, "step": step, "loss": (loss_sum / finite_steps).item() if finite_steps
                      else None, "lr": optimizer.param_groups[0]["lr"], "nonfinite_steps": nonfinite.total}
            if eval_features is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                record["eval_top1"] = evaluate_probe(probe, eval_features, eval_labels)["top1"]
            records.append(record)
            if log is not None:
                log(record)
    probe.eval()
    return records


@torch.no_grad()
def probe_logits(probe: ProbeHead, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of `probe` in eval mode (BatchNorm with its running statistics) on cached features, on CPU."""
    modes = [(module, module.training) for module in probe.modules()]  # the modules may be shared: restore each
    probe.eval()
    device = next(probe.parameters()).device
    logits = torch.cat([probe(features[i:i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(features), batch_size)])
    for module, mode in modes:
        module.training = mode
    return logits


def evaluate_probe(probe: ProbeHead, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return topk_accuracy(probe_logits(probe, features), labels)


def fit_and_score_probe(train: Features, held_out: Features, num_labels: int, settings: dict, seed: int) -> float:
    """Held-out top-1 of a fresh probe head (seeded by `seed`) trained on cached features with `settings`
    ({"epochs", "blr", "warmup_epochs", "per_device_batch_size"}, the probe program's recipe): the pretraining
    monitor's probe, also the recipe sweep's."""
    with torch.random.fork_rng(devices=[]):  # the head's init draws from a seed of its own
        torch.manual_seed(seed)
        head = new_probe_head(train.features.shape[1], num_labels)
    batch = min(settings["per_device_batch_size"], len(train.features))
    train_probe_head(head, train.features, train.labels, epochs=settings["epochs"], batch_size=batch,
                     lr=scaled_lr(settings["blr"], batch), warmup_epochs=settings["warmup_epochs"], seed=seed,
                     disable_progress=True)
    return evaluate_probe(head, held_out.features, held_out.labels)["top1"]


# --------------------------------------------------------------------------------------------------------
# The official protocol: augmented images through the frozen encoder every epoch
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentedProbeConfig:
    """The augmented probe's recipe: crops and flips drawn every epoch, LARS on the (effective) batch."""

    epochs: int
    lr: float
    per_device_batch_size: int
    gradient_accumulation_steps: int = 1
    min_lr: float = 0.0
    warmup_epochs: float = 10
    weight_decay: float = 0.0
    crop_min_scale: float = 0.08
    hflip: bool = True
    pooling: str = "cls"
    raw_pixels: bool = False  # the baseline: the head on flattened pixels, no encoder
    eval_every: int = 10  # held-out top-1 every N epochs and at the end; 0: never during training
    seed: int = 0
    num_workers: int = 0
    strict_images: bool = False
    resume_from_checkpoint: str | None = None


def _augmented_loader(accelerator, config: AugmentedProbeConfig, model_config, processor, train_data):
    """(loader, transform fn, transform) of the RandomResizedCrop + flip images, uint8 until the device."""
    transform = TrainTransform(model_config.image_size, scale=(config.crop_min_scale, 1.0), hflip=config.hflip,
                               mean=processor.image_mean, std=processor.image_std,
                               num_channels=model_config.num_channels, output="uint8")
    train_fn = make_transform_fn(transform, model_config.num_channels, strict=config.strict_images)
    loader = train_dataloader(train_data, train_fn, config.per_device_batch_size, config.num_workers, config.seed,
                              pin_memory=accelerator.device.type == "cuda")
    return loader, train_fn, transform


def train_probe_augmented(accelerator, model, probe: ProbeHead, processor, train_data, held_out: Features, *,
                          config: AugmentedProbeConfig, loop_config: LoopConfig, run_log, checkpoints_dir: Path,
                          log) -> tuple[list[dict], int]:
    """Official protocol: fresh RandomResizedCrop + flip every epoch through the frozen encoder of `model` (a
    classifier); LARS on the head with the accumulated (effective) batch, through the shared training loop
    (checkpoints, resume, bad batches, non-finite steps). `log(record)` gets each epoch's record. Returns (one
    record per epoch, undecodable training images)."""
    loader, train_fn, transform = _augmented_loader(accelerator, config, model.config, processor, train_data)
    optimizer = LARS(probe.head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    probe, optimizer, loader = accelerator.prepare(probe, optimizer, loader)
    if len(loader) == 0:
        raise ValueError(f"{len(train_data)} training images are fewer than one batch of "
                         f"{config.per_device_batch_size} x {accelerator.num_processes} processes")
    schedule = plan_schedule(len(loader), config.gradient_accumulation_steps, epochs=config.epochs,
                             warmup_epochs=config.warmup_epochs)
    loop = TrainingLoop(accelerator, probe, optimizer, loader, schedule, lr=config.lr, min_lr=config.min_lr,
                        config=loop_config, checkpoints_dir=checkpoints_dir, processor=processor, run_log=run_log,
                        desc="probe (augment)",
                        placeholder=lambda: placeholder_batch(model.config, accelerator.device, True),
                        bad_images=lambda: train_fn.num_bad, pretrained=None if config.raw_pixels else model,
                        normalize=transform.normalizer())
    records = loop.resume(config.resume_from_checkpoint).get("history", [])
    encoder = model.encoder.eval()
    unwrapped = accelerator.unwrap_model(probe)

    def step(batch, epoch, batch_index):
        pixels = batch["pixel_values"]
        if config.raw_pixels:
            features = pixels.flatten(1).float()
        else:
            with torch.no_grad(), accelerator.autocast():
                features = pool_tokens(encoder(pixels).last_hidden_state, config.pooling).float()
        return F.cross_entropy(probe(features), batch["labels"])

    def epoch_end(epoch_done, mean_loss, done):
        record = {"event": "epoch", "epoch": epoch_done, "step": loop.update_step, "loss": mean_loss,
                  "lr": optimizer.param_groups[0]["lr"]}
        if config.eval_every and (epoch_done % config.eval_every == 0 or epoch_done == config.epochs):
            record["eval_top1"] = evaluate_probe(unwrapped, held_out.features, held_out.labels)["top1"]
            probe.train()
        records.append(record)
        log(record)

    summary = loop.run(step, on_epoch_end=epoch_end, extra_state=lambda: {"history": records})
    unwrapped.eval()
    return records, summary["skipped_images"]
