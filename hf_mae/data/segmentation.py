"""Semantic-segmentation data: the embedded "digit scenes", label-map checks, paired (image, map) transforms and
seeded loaders.

A segmentation dataset has an image column and a map column (an image or a 2-D array of class ids per pixel).
`load_segmentation_datasets` finds ADE20K's `image` / `annotation` layout and the `pixel_values` / `label` layout
of transformers' segmentation example and returns both under `image` / `label`. Pixels labelled
`IGNORE_INDEX` (255) count in no loss and no score.

Digit scenes (the default with no data flag): 56x56 canvases holding 2-4 embedded MNIST digits at random places,
no two overlapping (a stroke never belongs to two digits); each stroke pixel (>= 128) is labelled with its
digit's class (ids 1-10 for "0".."9"), everything else is
"background" (id 0). Training scenes are drawn from the 4,000 training digits, held-out scenes from the 1,000
held-out ones, with fixed seeds: the same scenes on every machine, built once and cached beside the embedded
digits.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..atomic import replace_folder
from ..models.mae.image_processing_mae import convert_image_mode
from .decoding import _DECODE_ERRORS, _open_image, prepare_columns
from .sources import LoadedDataInfo, load_embedded_default, load_image_datasets
from .train_loader import EpochSeededDataset, EpochShuffleSampler

IGNORE_INDEX = 255


SCENES_NAME = "embedded_digit_scenes_v2"  # bump the suffix whenever the scenes' content changes


SCENE_LABEL_NAMES = ["background"] + [str(i) for i in range(10)]


MAP_COLUMN_CANDIDATES = ("annotation", "label", "labels", "segmentation", "mask")


# --------------------------------------------------------------------------------------------------------
# The embedded digit scenes
# --------------------------------------------------------------------------------------------------------


def digit_scenes(digits: np.ndarray, classes: np.ndarray, num_scenes: int, seed: int, size: int = 56,
                 digits_per_scene: tuple[int, int] = (2, 4), tries: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """`num_scenes` (size x size) uint8 scenes and their label maps from (N, H, W) uint8 `digits` of `classes`
    0-9. Each scene asks for 2-4 digits (drawn with replacement); each is placed by its ink's bounding box at a
    random place where that box touches no earlier digit's (up to `tries` draws, else the digit is left out), so
    every stroke belongs to one digit and its label is never ambiguous. Stroke pixels (>= 128) get their digit's
    class + 1, the rest 0 (background)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((num_scenes, size, size), dtype=np.uint8)
    maps = np.zeros((num_scenes, size, size), dtype=np.uint8)
    for scene in range(num_scenes):
        placed = []  # (top, left, bottom, right) of the boxes in this scene
        for pick in rng.integers(0, len(digits), rng.integers(digits_per_scene[0], digits_per_scene[1] + 1)):
            rows, cols = np.nonzero(digits[pick].any(1))[0], np.nonzero(digits[pick].any(0))[0]
            if not len(rows):
                continue  # a blank digit has nothing to place
            ink = digits[pick][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            height, width = ink.shape
            if height > size or width > size:
                raise ValueError(f"a digit's ink ({height}x{width}) does not fit a {size}x{size} scene")
            for _ in range(tries):
                top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
                box = (top, left, top + height, left + width)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed):
                    placed.append(box)
                    images[scene, box[0]:box[2], box[1]:box[3]] = ink
                    maps[scene, box[0]:box[2], box[1]:box[3]] = np.where(ink >= 128, classes[pick] + 1, 0)
                    break
    return images, maps


def _png(array: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def build_digit_scenes(num_train: int = 2000, num_eval: int = 500, cache_dir=None) -> datasets.DatasetDict:
    """The scenes as a `DatasetDict` (`train` from the training digits, `validation` from the held-out ones),
    columns `image` and `annotation` (both PNG images, the map's values are class ids)."""
    digits = load_embedded_default(cache_dir)
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    splits = {}
    for split, count, seed in (("train", num_train, 0), ("validation", num_eval, 1)):
        data = digits[split].with_format("numpy")
        images, maps = digit_scenes(np.stack(data["image"]), np.asarray(data["label"]), count, seed)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [_png(x) for x in images], "annotation": [_png(m) for m in maps]}, features=features)
    return datasets.DatasetDict(splits)


def load_digit_scenes(cache_dir=None) -> datasets.DatasetDict:
    """The embedded digit scenes, built once and memory-mapped from `<cache>/SCENES_NAME` after
    (the cache of the embedded digits: `cache_dir`, else `$HF_MAE_CACHE`, else `~/.cache/hf_mae`)."""
    root = cache_dir or os.environ.get("HF_MAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_mae")
    folder = os.path.join(os.fspath(root), SCENES_NAME)
    if not os.path.exists(os.path.join(folder, "dataset_dict.json")):
        # renamed whole: never half a cache; a concurrent rank that finished first keeps its copy
        with replace_folder(folder, keep_if=lambda f: (f / "dataset_dict.json").exists()) as staging:
            build_digit_scenes(cache_dir=cache_dir).save_to_disk(str(staging))
    return datasets.load_from_disk(folder)


# --------------------------------------------------------------------------------------------------------
# Loading any segmentation dataset
# --------------------------------------------------------------------------------------------------------


@dataclass
class SegmentationData:
    """What `load_segmentation_datasets` loaded: splits with `image` / `label` (the map), and the classes."""

    train: datasets.Dataset
    evaluation: datasets.Dataset | None
    source: str
    label_names: list[str] | None


def load_segmentation_datasets(*, dataset_name=None, dataset_config_name=None, data_files=None,
                               train_split="train", eval_split="validation", image_column=None, map_column=None,
                               cache_dir=None) -> SegmentationData:
    """Train / held-out splits with `image` and `label` (the map): the digit scenes when no data is named,
    else any `datasets` source `load_image_datasets` reads, with the map column `map_column` or the first of
    `annotation`, `label`, ... that the data has."""
    if dataset_name is None and data_files is None:
        scenes = load_digit_scenes(cache_dir)
        rename = {"annotation": "label"}
        return SegmentationData(scenes["train"].rename_columns(rename), scenes["validation"].rename_columns(rename),
                                "embedded default: digit scenes (2,000 train / 500 held-out, 56x56)",
                                list(SCENE_LABEL_NAMES))
    common = dict(dataset_name=dataset_name, dataset_config_name=dataset_config_name, data_files=data_files,
                  train_split=train_split, eval_split=eval_split, image_column=image_column, cache_dir=cache_dir)
    for index, candidate in enumerate([map_column] if map_column else MAP_COLUMN_CANDIDATES):
        try:
            train, evaluation, info = load_image_datasets(label_column=candidate, **common)
            break
        except ValueError as error:  # this map column is not in the data: the next candidate
            if map_column or index == len(MAP_COLUMN_CANDIDATES) - 1 or "column" not in str(error):
                raise ValueError(f"{error} (the segmentation-map column: --label_column)") from None
    return SegmentationData(train, evaluation, info.source, _class_names(info))


def _class_names(info: LoadedDataInfo) -> list[str] | None:
    return info.label_names if info.label_names and len(info.label_names) > 2 else None


# --------------------------------------------------------------------------------------------------------
# Label maps: decoding, checks, reduce_labels
# --------------------------------------------------------------------------------------------------------


def label_map_array(value) -> np.ndarray:
    """A label map as a 2-D int64 array from a PIL image (first channel of a multi-channel one), an array or
    nested lists."""
    if isinstance(value, (dict, bytes, str)):
        value = _open_image(value)
    array = np.asarray(value)
    if array.ndim == 3:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D label map, got shape {array.shape}")
    return array.astype(np.int64)


def reduce_label_ids(labels: np.ndarray) -> np.ndarray:
    """ADE20K's convention: id 0 ("other") becomes ignored, every other id moves down by one."""
    return np.where((labels == 0) | (labels == IGNORE_INDEX), IGNORE_INDEX, labels - 1)


def check_label_map(labels: np.ndarray, image_size: tuple[int, int], num_labels: int, row) -> None:
    """A ValueError naming `row` when the map's (height, width) differs from the image's or it holds an id
    outside [0, num_labels) other than the ignore index."""
    if labels.shape != tuple(image_size):
        raise ValueError(f"label map of row {row} is {labels.shape[1]}x{labels.shape[0]} (width x height), its "
                         f"image {image_size[1]}x{image_size[0]}: maps must match their images pixel for pixel")
    bad = (labels < 0) | ((labels >= num_labels) & (labels != IGNORE_INDEX))
    if bad.any():
        values = np.unique(labels[bad])
        raise ValueError(f"label map of row {row} holds class id(s) {values[:5].tolist()} outside [0, {num_labels}) "
                         f"(ignore index {IGNORE_INDEX}); pass the right class count, or --reduce_labels if 0 "
                         "means 'other'")


# --------------------------------------------------------------------------------------------------------
# Paired transforms: the same geometry for the image and its map
# --------------------------------------------------------------------------------------------------------


def _normalize(image: Image.Image, mean, std) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array[..., None] if array.ndim == 2 else array
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


@dataclass
class PairedTrainTransform:
    """mmsegmentation's training pipeline: random resize by a factor in `ratio_range` (bilinear image, nearest
    map), pad to `crop_size` (image 0, map ignored), random crop, random horizontal flip, normalise. Draws from
    the torch RNG (seeded per sample by the loader)."""

    crop_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True

    def __call__(self, image: Image.Image, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.ratio_range
        ratio = low + (high - low) * torch.rand(()).item()
        size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
        image = image.resize(size, Image.BILINEAR)
        label_image = Image.fromarray(labels.astype(np.int32)).resize(size, Image.NEAREST)
        crop_h, crop_w = self.crop_size
        pad_h, pad_w = max(crop_h - size[1], 0), max(crop_w - size[0], 0)
        pixels = np.asarray(image)
        pixels = np.pad(pixels, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (pixels.ndim - 2))
        labels = np.pad(np.asarray(label_image), ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
        top = torch.randint(0, labels.shape[0] - crop_h + 1, ()).item()
        left = torch.randint(0, labels.shape[1] - crop_w + 1, ()).item()
        pixels = pixels[top:top + crop_h, left:left + crop_w]
        labels = labels[top:top + crop_h, left:left + crop_w]
        if self.hflip and torch.rand(()).item() < 0.5:
            pixels, labels = pixels[:, ::-1], labels[:, ::-1]
        tensor = _normalize(Image.fromarray(np.ascontiguousarray(pixels)), self.mean, self.std)
        return tensor, torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))


@dataclass
class PairedEvalTransform:
    """Held-out images at their own size, normalised; maps unchanged."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, image: Image.Image, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _normalize(image, self.mean, self.std), torch.from_numpy(labels)


class SegmentationTransformFn:
    """Batch function of (image, map) rows for `EpochSeededDataset`: decodes, converts the image mode, checks
    each map (size, ids: a ValueError naming the row), applies `reduce_labels` and the paired `transform`.
    An undecodable image gives None (dropped by `collate_segmentation`) and is counted in `num_bad`."""

    def __init__(self, transform, num_channels: int, num_labels: int, reduce_labels: bool = False,
                 strict: bool = False):
        self.transform, self.num_channels, self.num_labels = transform, num_channels, num_labels
        self.reduce_labels, self.strict = reduce_labels, strict
        self._bad = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def num_bad(self) -> int:
        return int(self._bad.sum())

    def one(self, image_value, map_value, row):
        try:
            image = convert_image_mode(_open_image(image_value), self.num_channels)
        except _DECODE_ERRORS as error:
            if self.strict:
                raise ValueError(f"undecodable image in row {row}: {error}") from error
            self._bad += 1
            return None
        labels = label_map_array(map_value)
        if self.reduce_labels:
            labels = reduce_label_ids(labels)
        check_label_map(labels, (image.height, image.width), self.num_labels, row)
        return self.transform(image, labels)

    def __call__(self, batch: dict, indices=None, seeds=None) -> dict:
        rows = indices if indices is not None else batch.get("__index__", [None] * len(batch["image"]))
        results = []
        with torch.random.fork_rng(devices=[]):
            for i, (image, labels, row) in enumerate(zip(batch["image"], batch["label"], rows)):
                if seeds is not None:
                    torch.default_generator.manual_seed(seeds[i])
                results.append(self.one(image, labels, row))
        return {"pixel_values": [None if r is None else r[0] for r in results],
                "labels": [None if r is None else r[1] for r in results]}


def collate_segmentation(items: list[dict], pad_to_multiple: int = 1) -> dict:
    """Stack (image, map) pairs, padded at the bottom/right to the batch's largest size rounded up to
    `pad_to_multiple` (image 0, map ignored); skipped (None) items dropped: an empty `pixel_values` then."""
    good = [item for item in items if item["pixel_values"] is not None]
    if not good:
        return {"pixel_values": torch.empty(0), "labels": torch.empty(0, dtype=torch.long)}
    height = max(item["pixel_values"].shape[1] for item in good)
    width = max(item["pixel_values"].shape[2] for item in good)
    height, width = (-(-height // pad_to_multiple) * pad_to_multiple, -(-width // pad_to_multiple) * pad_to_multiple)
    pixels = torch.zeros(len(good), good[0]["pixel_values"].shape[0], height, width)
    labels = torch.full((len(good), height, width), IGNORE_INDEX, dtype=torch.long)
    for i, item in enumerate(good):
        h, w = item["labels"].shape
        pixels[i, :, :h, :w] = item["pixel_values"]
        labels[i, :h, :w] = item["labels"]
    return {"pixel_values": pixels, "labels": labels}


def segmentation_train_loader(dataset, fn: SegmentationTransformFn, batch_size: int, num_workers: int = 0,
                              seed: int = 0) -> DataLoader:
    """Shuffled, per-sample-seeded training batches (see `train_loader`): exact resume mid-epoch."""
    seeded = EpochSeededDataset(dataset, fn, seed)
    return DataLoader(seeded, batch_size=batch_size, sampler=EpochShuffleSampler(len(seeded), seed), drop_last=True,
                      num_workers=num_workers, collate_fn=collate_segmentation, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


class _Rows(torch.utils.data.Dataset):
    def __init__(self, dataset, fn, rows):
        self.dataset, self.fn, self.rows = prepare_columns(dataset), fn, list(rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        batch = self.fn(self.dataset[[row]], [row])
        return {name: values[0] for name, values in batch.items()}


def segmentation_eval_loader(dataset, fn: SegmentationTransformFn, batch_size: int, pad_to_multiple: int,
                             process_index: int = 0, num_processes: int = 1, num_workers: int = 0) -> DataLoader:
    """This process's share of the held-out rows (every `num_processes`-th: no row twice, none dropped), in
    order, padded to a multiple of the patch size."""
    rows = range(process_index, len(dataset), num_processes)
    return DataLoader(_Rows(dataset, fn, rows), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=functools.partial(collate_segmentation, pad_to_multiple=pad_to_multiple))


__all__ = ["IGNORE_INDEX", "SCENE_LABEL_NAMES", "PairedEvalTransform", "PairedTrainTransform", "SegmentationData",
           "SegmentationTransformFn", "build_digit_scenes", "check_label_map", "collate_segmentation",
           "digit_scenes", "label_map_array", "load_digit_scenes", "load_segmentation_datasets", "reduce_label_ids",
           "segmentation_eval_loader", "segmentation_train_loader"]
