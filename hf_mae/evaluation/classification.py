"""Top-k accuracy through `evaluate` (a metric module shipped in the package)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .features import valid_rows

ACCURACY_TOPK_PATH = str(Path(__file__).resolve().parent / "metrics" / "accuracy_topk.py")


def load_topk_metric():
    """The shipped top-1/top-5 `evaluate` metric (loaded by path: no Hub access)."""
    import evaluate

    return evaluate.load(ACCURACY_TOPK_PATH, keep_in_memory=True)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"top1", "top5"} in percent, through the shipped `evaluate` metric. Inputs are already gathered."""
    metric = load_topk_metric()
    metric.add_batch(predictions=logits.detach().float().cpu().numpy(), references=labels.cpu().numpy())
    return metric.compute()


@torch.no_grad()
def evaluate_classifier(accelerator, model, loader) -> dict[str, float]:
    """Top-1 / top-5 (percent, the shipped `evaluate` metric) and mean cross-entropy of a classifier over a
    prepared `eval_dataloader`, gathered across processes; undecodable examples are left out."""
    was_training = model.training
    model.eval()
    metric = load_topk_metric()
    loss_sum, count, skipped = 0.0, 0, 0
    for batch in loader:
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
        bad, (logits, labels) = valid_rows(accelerator, batch, logits, batch["labels"])
        skipped += bad
        if len(labels):
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            count += len(labels)
            metric.add_batch(predictions=logits.cpu().numpy(), references=labels.cpu().numpy())
    model.train(was_training)
    if count == 0:
        raise ValueError(f"no decodable image in the held-out split ({skipped} skipped): nothing to evaluate.")
    return {**metric.compute(), "loss": loss_sum / count, "skipped_images": skipped}
