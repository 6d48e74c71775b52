"""Frozen-encoder feature extraction across processes (for kNN and linear probing)."""

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .data import EvalTransform, apply_transform, collate, make_transform_fn


def pool_tokens(last_hidden_state: torch.Tensor, pooling: str) -> torch.Tensor:
    """"cls": the CLS token after the final norm (official linear probe); "mean": mean of patch tokens."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        return last_hidden_state[:, 1:].mean(dim=1)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def eval_dataloader(dataset, processor, batch_size: int, num_workers: int = 0, strict: bool = False):
    """A deterministic DataLoader of `dataset` through the processor's eval transform."""
    transform = EvalTransform(processor)
    data = apply_transform(dataset, make_transform_fn(transform, transform.num_channels, strict=strict))
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)


@torch.no_grad()
def extract_features(accelerator, encoder, loader, pooling: str = "cls", desc: str = "features",
                     raw_pixels: bool = False):
    """Features (N, D) and labels (N,) of every example of a prepared `loader`, gathered on every process.

    `encoder` is an `MAEModel` (no masking); `raw_pixels=True` returns flattened pixels instead, as the
    baseline every learned representation must beat.
    """
    was_training = encoder.training
    encoder.eval()
    features, labels = [], []
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        pixels = batch["pixel_values"]
        if raw_pixels:
            feats = pixels.flatten(1).float()
        else:
            with accelerator.autocast():
                feats = pool_tokens(encoder(pixels).last_hidden_state, pooling).float()
        feats, batch_labels = accelerator.gather_for_metrics((feats, batch["labels"]))
        features.append(feats.cpu())
        labels.append(batch_labels.cpu())
    encoder.train(was_training)
    return torch.cat(features), torch.cat(labels)


__all__ = ["pool_tokens", "eval_dataloader", "extract_features"]
