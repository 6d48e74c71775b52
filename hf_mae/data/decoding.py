"""Robust decoding and collation: undecodable images are skipped, counted across workers and named in a warning."""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps

from ..models.mae.image_processing_mae import convert_image_mode
from .transforms import _target_mode

logger = logging.getLogger(__name__)

# Exceptions PIL raises for broken or unsupported files. Anything else is a bug and must surface.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError
)


class BadImageWarning(UserWarning):
    """An image could not be decoded and was skipped."""


# --------------------------------------------------------------------------------------------------------
# Robust decoding, dataset wiring, collation
# --------------------------------------------------------------------------------------------------------


def _open_image(value: Any) -> Image.Image:
    """A lazily opened PIL image from what an image column holds (Image(decode=False) dict, bytes, path)."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path and not os.path.exists(path):
            return datasets.Image().decode_example(value)  # remote path (streaming): let datasets fetch it
        value = data if data is not None else path
    if isinstance(value, (bytes, bytearray, memoryview)):
        img = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, os.PathLike)):
        img = Image.open(value)
    elif isinstance(value, np.ndarray):
        return Image.fromarray(value)
    else:
        raise ValueError(f"cannot make an image from a {type(value).__name__}")
    # Same orientation handling as datasets' own decoding; only the rare rotated photo pays a full decode.
    if "exif" in img.info and img.getexif().get(0x0112, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return img


def _describe(value: Any, index: Any) -> str:
    """How a warning names an image: its path and/or its dataset index."""
    path = value.get("path") if isinstance(value, dict) else None
    if isinstance(value, (str, os.PathLike)):
        path = value
    parts = []
    if path:
        parts.append(repr(os.fspath(path)))
    if index is not None:
        parts.append(f"(index {index})")
    return " ".join(parts) or "<image without path or index>"


_COUNTER_SLOTS = 257  # the main process + up to 256 DataLoader workers


class TransformFn:
    """Batch function for `Dataset.with_transform` / `IterableDataset.map(batched=True, with_indices=True)`.

    Decodes each image itself (the image column should be `datasets.Image(decode=False)`; `apply_transform`
    does that), converts its mode, applies `transform` and returns `{"pixel_values": [...], "labels": [...]}`
    with the same length as the input: an undecodable image gives `None` (dropped later by `collate`), is
    counted in `num_bad` and is warned about once per process, by path and/or dataset index.
    `strict=True` raises a `ValueError` naming the image instead.

    `num_bad` counts over DataLoader workers too: the counter lives in shared memory, one slot per worker,
    so the training loop reads the total from the object it built (per rank under DDP).
    """

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], num_channels: int = 3,
                 strict: bool = False):
        _target_mode(num_channels)
        self.transform = transform
        self.num_channels = num_channels
        self.strict = strict
        # Shared memory survives the copy into DataLoader workers (fork or spawn); one slot per worker, so
        # concurrent workers never race on the same counter.
        self._bad_counts = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self.bad_images: list[str] = []  # names of the images skipped in this process, each once
        self._warned: set[str] = set()
        self._convert = not getattr(transform, "accepts_any_mode", False)

    def _one(self, value: Any, index: Any) -> torch.Tensor | None:
        img = None
        try:
            img = _open_image(value)
            if self._convert:
                img = convert_image_mode(img, self.num_channels)
            return self.transform(img)
        except _DECODE_ERRORS as e:
            name = _describe(value, index)
            if self.strict:
                raise ValueError(f"Undecodable image {name}: {type(e).__name__}: {e}") from e
            worker = torch.utils.data.get_worker_info()
            self._bad_counts[0 if worker is None else 1 + worker.id % (_COUNTER_SLOTS - 1)] += 1
            if name not in self._warned:
                self._warned.add(name)
                self.bad_images.append(name)
                warnings.warn(f"Skipping undecodable image {name}: {type(e).__name__}: {e}", BadImageWarning,
                              stacklevel=2)
            if img is not None:
                img.close()
            return None

    def _seeded(self, value: Any, index: Any, seed: int) -> torch.Tensor | None:
        torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed costs ~70x more
        return self._one(value, index)

    @property
    def num_bad(self) -> int:
        """Images skipped so far, in this process and its DataLoader workers."""
        return int(self._bad_counts.sum())

    def __call__(self, batch: dict[str, list], indices: list[int] | None = None,
                 seeds: list[int] | None = None) -> dict[str, list]:
        """`seeds`: one per image, to transform each under the torch RNG seeded with it (the caller's RNG
        state is restored afterwards); otherwise the transform draws from the current RNG stream."""
        images = batch["image"]
        if indices is None:
            indices = batch.get("__index__") or [None] * len(images)
        if seeds is None:
            results = [self._one(v, i) for v, i in zip(images, indices)]
        else:
            with torch.random.fork_rng(devices=[]):
                results = [self._seeded(v, i, s) for v, i, s in zip(images, indices, seeds)]
        out = {"pixel_values": results}
        if any(isinstance(r, dict) for r in results):  # a transform's extras (the erasing drawn for uint8 output)
            out = {key: [None if r is None else r[key] for r in results] for key in next(
                r for r in results if isinstance(r, dict))}
        if "label" in batch:
            out["labels"] = list(batch["label"])
        return out


def make_transform_fn(transform: Callable[[Image.Image], torch.Tensor], num_channels: int = 3,
                      strict: bool = False) -> TransformFn:
    """A `TransformFn` (see there): robust decode + mode conversion + `transform`, on batches."""
    return TransformFn(transform, num_channels=num_channels, strict=strict)


def apply_transform(dataset, fn: TransformFn, map_batch_size: int = 16):
    """Attach `fn` to a dataset with an `image` column: lazily, nothing is decoded up front.

    Map-style: the image column is cast to `Image(decode=False)`, an `__index__` column is added (so a bad
    image is named even without a path) and `with_transform(fn)` is set. Iterable: the same cast, then a
    lazy batched `map` with indices (counted per shard) in small batches so the first batch comes quickly.
    """
    dataset = prepare_columns(dataset)
    if isinstance(dataset, datasets.IterableDataset):
        remove = [c for c in (dataset.column_names or []) if c in ("image", "label")] or None
        return dataset.map(
            fn, batched=True, batch_size=map_batch_size, with_indices=True, remove_columns=remove
        )
    return dataset.with_transform(fn)


def prepare_columns(dataset):
    """The image column undecoded (`TransformFn` decodes) and, for map-style data, an `__index__` column."""
    if dataset.features and isinstance(dataset.features.get("image"), datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    if not isinstance(dataset, datasets.IterableDataset) and "__index__" not in dataset.column_names:
        dataset = dataset.add_column("__index__", np.arange(len(dataset)))
    return dataset


def collate(batch_list: list[dict | None]) -> dict[str, Any]:
    """DataLoader `collate_fn`: drop skipped (None) examples, stack `pixel_values` and `labels`.

    Returns `{"pixel_values": (B, C, H, W), "labels": (B,)}` (labels only if the data has them): tensors
    only, so Accelerate can dispatch and slice the batch; `TrainTransform(output="uint8", erase=...)` items add
    `"erase"`, a list of the B erasing draws for `DeviceNormalize`. B may be smaller than the batch size when images
    were skipped; when every example was bad, `pixel_values` is an empty tensor (`len(...) == 0`): skip
    that step (under DDP every rank must take part in each step: do a zero-weight step there instead).
    """
    good = [b for b in batch_list if b is not None and b.get("pixel_values") is not None]
    has_labels = any(b is not None and "labels" in b for b in batch_list)
    out: dict[str, Any] = {}
    if good:
        out["pixel_values"] = torch.stack([b["pixel_values"] for b in good])
        if has_labels:
            out["labels"] = torch.as_tensor([int(b["labels"]) for b in good], dtype=torch.long)
    else:
        out["pixel_values"] = torch.empty(0)
        if has_labels:
            out["labels"] = torch.empty(0, dtype=torch.long)
    if any(b is not None and "erase" in b for b in batch_list):
        # Python tuples, not a tensor: they stay on the host (Accelerate moves tensors only), so applying them
        # on the device never waits for the device (map-style data only: the fine-tuning recipe)
        out["erase"] = [b["erase"] for b in good]
    return out
