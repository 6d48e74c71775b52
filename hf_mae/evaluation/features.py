"""Frozen features: eval loaders and pooled encoder features, gathered across processes."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.decoding import apply_transform, make_transform_fn
from ..data.transforms import EvalTransform

# --------------------------------------------------------------------------------------------------------
# Frozen features
# --------------------------------------------------------------------------------------------------------


def pool_tokens(last_hidden_state: torch.Tensor, pooling: str) -> torch.Tensor:
    """"cls": the CLS token after the final norm (official linear probe); "mean": mean of patch tokens."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        return last_hidden_state[:, 1:].mean(dim=1)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def collate_slots(batch_list: list[dict | None], shape: tuple[int, ...]) -> dict:
    """Held-out collate: one row per example, an undecodable image as zeros with `valid` False."""
    valid = [b is not None and b.get("pixel_values") is not None for b in batch_list]
    out = {"pixel_values": torch.stack([b["pixel_values"] if ok else torch.zeros(shape)
                                        for b, ok in zip(batch_list, valid)]),
           "valid": torch.tensor(valid)}
    if any(b is not None and "labels" in b for b in batch_list):
        out["labels"] = torch.as_tensor([int(b["labels"]) if b is not None and "labels" in b else -1
                                         for b in batch_list], dtype=torch.long)
    return out


def eval_dataloader(dataset, processor, batch_size: int, num_workers: int = 0, strict: bool = False):
    """A deterministic DataLoader of `dataset` through the processor's eval transform (`collate_slots`)."""
    transform = EvalTransform(processor)
    shape = tuple(transform(Image.new("RGB", (32, 32))).shape)  # what every example becomes
    fn = make_transform_fn(transform, transform.num_channels, strict=strict)
    loader = DataLoader(apply_transform(dataset, fn), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=functools.partial(collate_slots, shape=shape))
    loader.transform_fn = fn  # its `num_bad` counts the skipped images
    return loader


class Features(NamedTuple):
    features: torch.Tensor  # (N, D) of the decodable examples
    labels: torch.Tensor  # (N,)
    skipped: int  # undecodable examples left out


def valid_rows(accelerator, batch, *values):
    """`values` (per-example tensors of `batch`) gathered over processes, undecodable examples dropped."""
    gathered = accelerator.gather_for_metrics((batch["valid"], *values))
    keep = gathered[0].bool()
    return int((~keep).sum()), [v[keep] for v in gathered[1:]]


@torch.no_grad()
def extract_pooled_features(accelerator, encoder, loader, poolings=("cls",), desc: str = "features",
                            raw_pixels: bool = False) -> dict[str, Features]:
    """Per pooling ("cls", "mean"; "raw_pixels" with `raw_pixels=True`), the features (N, D), labels (N,) and
    skipped count of a prepared `eval_dataloader`, on every process, from one pass of the encoder.

    `encoder` is an `MAEModel` (no masking); raw pixels are the baseline every learned representation must
    beat. A split with no decodable image is a ValueError.
    """
    was_training = encoder.training
    encoder.eval()
    names = ("raw_pixels",) if raw_pixels else tuple(poolings)
    features, labels, skipped = {name: [] for name in names}, [], 0
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        pixels = batch["pixel_values"]
        if raw_pixels:
            pooled = [pixels.flatten(1).float()]
        else:
            with accelerator.autocast():
                tokens = encoder(pixels).last_hidden_state
            pooled = [pool_tokens(tokens, name).float() for name in names]
        bad, gathered = valid_rows(accelerator, batch, *pooled, batch["labels"])
        skipped += bad
        for name, values in zip(names, gathered[:-1]):
            features[name].append(values.cpu())
        labels.append(gathered[-1].cpu())
    encoder.train(was_training)
    if not labels or sum(len(y) for y in labels) == 0:
        raise ValueError(f"{desc}: no decodable image in this split ({skipped} skipped): nothing to evaluate.")
    all_labels = torch.cat(labels)
    return {name: Features(torch.cat(values), all_labels, skipped) for name, values in features.items()}


def extract_features(accelerator, encoder, loader, pooling: str = "cls", desc: str = "features",
                     raw_pixels: bool = False) -> Features:
    """`extract_pooled_features` for one pooling (or the raw pixels)."""
    found = extract_pooled_features(accelerator, encoder, loader, (pooling,), desc=desc, raw_pixels=raw_pixels)
    return next(iter(found.values()))


def extract_split_features(accelerator, encoder, dataset, processor, *, batch_size: int, num_workers: int = 0,
                           pooling: str = "cls", raw_pixels: bool = False, strict: bool = False,
                           desc: str = "features") -> Features:
    """`extract_features` of a whole split through the processor's eval transform (`eval_dataloader`)."""
    loader = accelerator.prepare(eval_dataloader(dataset, processor, batch_size, num_workers, strict=strict))
    return extract_features(accelerator, encoder, loader, pooling, desc=desc, raw_pixels=raw_pixels)
