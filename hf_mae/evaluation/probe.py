"""The linear probe head (BatchNorm without affine + Linear) and its training on features."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..training.loop import NonFiniteGuard
from ..training.optim import LARS, lr_at_step, scaled_lr, set_lr
from .classification import topk_accuracy
from .classifier import init_head
from .features import Features

# The linear probe on cached features (the probe program's defaults and the pretraining monitor's): sized for
# the embedded default data, or the official recipe for any other dataset. On 4,000 digits LARS needs a far
# larger base lr than on ImageNet (BENCHMARKS.md).
PROBE_EMBEDDED_DEFAULTS = {"epochs": 90, "blr": 10.0, "warmup_epochs": 10, "per_device_batch_size": 256}


PROBE_PAPER_DEFAULTS = {"epochs": 90, "blr": 0.1, "warmup_epochs": 10, "per_device_batch_size": 512}


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
    (a PROBE_*_DEFAULTS dict): the pretraining monitor's probe, also the recipe sweep's."""
    with torch.random.fork_rng(devices=[]):  # the head's init draws from a seed of its own
        torch.manual_seed(seed)
        head = new_probe_head(train.features.shape[1], num_labels)
    batch = min(settings["per_device_batch_size"], len(train.features))
    train_probe_head(head, train.features, train.labels, epochs=settings["epochs"], batch_size=batch,
                     lr=scaled_lr(settings["blr"], batch), warmup_epochs=settings["warmup_epochs"], seed=seed,
                     disable_progress=True)
    return evaluate_probe(head, held_out.features, held_out.labels)["top1"]
