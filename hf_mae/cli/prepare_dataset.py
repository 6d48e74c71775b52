"""A prepared copy of a training dataset: parquet or webdataset shards with the shorter side capped at N px.

Decoding a 500x375 JPEG is the largest cost per image left in the training data path (BENCHMARKS.md); stored
at a shorter side of 256-384 px, images decode several times faster (the FFCV practice). Any dataset the
training programs accept goes in (a Hub id or dataset folder, an imagefolder, parquet/arrow/webdataset files,
the embedded default), read through `datasets` (`hf_mae.data.load_image_datasets`); the copy loads back with
`--dataset_name OUT`, labels and label names kept:

    python scripts/prepare_dataset.py --train_dir data/train --eval_dir data/val --output_dir data/in1k-256 \\
        --shorter_side 256 --format parquet --quality 90
    accelerate launch scripts/pretrain.py --dataset_name data/in1k-256 ...

- Images whose shorter side is at most N are stored as they are (their original bytes: no second JPEG
  generation); larger ones are reduced (JPEG DCT scaling to at least 2x the target where possible, then
  Lanczos, as PIL does with `reducing_gap`) and written as JPEG at `--quality`. EXIF orientation is applied
  first. An image that cannot be decoded is stored as it is and counted: training skips it as it would have.
- Output: `data/<split>-<k>-of-<n>.parquet` (columns `image`, `label`) or `.tar` webdataset shards (`jpg` or
  `png` + `cls` per sample), a README.md whose `dataset_info` names the features (label names included),
  and `prepare_dataset.json` (the settings and the counts).
- Resumable: each shard is written under a temporary name and renamed when complete, so a killed run leaves
  no half-written shard visible; the same command again continues with the missing shards (other settings
  are refused). The source is only read; an output folder inside it is refused.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import tarfile
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import datasets
from PIL import Image

from ..atomic import atomic_path, write_json, write_text
from ..data.decoding import _DECODE_ERRORS, _open_image
from ..models.mae.image_processing_mae import convert_image_mode
from ..training.output_dir import check_output_dir, mark_finished, read_run_marker, take_output_dir
from .arguments import add_data_arguments, add_output_dir_arguments, load_datasets_from_args, positive_int, run_cli

PROGRAM = "prepare_dataset"
_EXTENSION = {"jpeg": "jpg", "png": "png"}
SETTINGS = "prepare_dataset.json"
_SOURCES: dict = {}  # split -> dataset, inherited by the forked shard writers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser, training=False)  # any dataset the training programs accept
    out = parser.add_argument_group("prepared copy")
    add_output_dir_arguments(out, required=True, help="folder of the prepared copy",
                             overwrite_help="replace a finished prepared copy (or one with other settings) in "
                                            "--output_dir")
    out.add_argument("--shorter_side", type=positive_int, default=256,
                     help="cap on the shorter image side in pixels (default 256); smaller images are kept as they are")
    out.add_argument("--format", choices=["parquet", "webdataset"], default="parquet", help="shard format")
    out.add_argument("--quality", type=int, choices=range(1, 101), metavar="1..100", default=90,
                     help="JPEG quality of the resized images (default 90)")
    out.add_argument("--shard_size", type=positive_int, default=2000, help="images per shard (default 2000)")
    out.add_argument("--num_proc", type=positive_int, default=None,
                     help="processes writing shards (default: the cores available)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.streaming = False  # every shard is a slice of a map-style dataset
    return args


# --------------------------------------------------------------------------------------------------------
# One image, one shard
# --------------------------------------------------------------------------------------------------------


def _raw_bytes(value) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        with open(value["path"], "rb") as f:
            return f.read()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    with open(value, "rb") as f:
        return f.read()


def capped_image(value, shorter_side: int, quality: int) -> tuple[bytes, str, str]:
    """(bytes, format "jpeg"/"png"/..., what was done: "kept" | "resized" | "undecodable") for one image."""
    data = _raw_bytes(value)
    try:
        img = _open_image(data)
        width, height = img.size
        oriented = "exif" not in getattr(img, "info", {}) or img.getexif().get(0x0112, 1) == 1
        fmt = (getattr(img, "format", None) or "PNG").lower()
        if min(width, height) <= shorter_side and oriented:
            return data, fmt, "kept"
        scale = shorter_side / min(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1 else (width, height)
        channels = 1 if img.mode in ("L", "I;16", "I", "F", "1") else 3
        if img.format == "JPEG" and scale < 0.5:
            img.draft("L" if channels == 1 else "RGB", (size[0] * 2, size[1] * 2))  # DCT scaling, then Lanczos
        img = convert_image_mode(img, channels)
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue(), "jpeg", "resized"
    except _DECODE_ERRORS:
        return data, "jpeg", "undecodable"


def shard_name(split: str, index: int, count: int, fmt: str) -> str:
    return f"{split}-{index:05d}-of-{count:05d}." + ("parquet" if fmt == "parquet" else "tar")


def write_shard(split: str, start: int, stop: int, path: str, fmt: str, shorter_side: int, quality: int,
                wds_ext: str) -> dict:
    """Write rows [start, stop) of the split into `path` (through a temporary name); returns the counts."""
    dataset = _SOURCES[split]
    rows = dataset[start:stop]
    labels = rows.get("label")
    counts = {"kept": 0, "resized": 0, "undecodable": 0}
    images = []
    for value in rows["image"]:
        data, image_format, what = capped_image(value, shorter_side, quality)
        if fmt == "webdataset" and what != "undecodable" and _EXTENSION.get(image_format) != wds_ext:
            # one image column per webdataset copy: a stray format is converted (losslessly to png)
            img = _open_image(data)
            img = convert_image_mode(img, 1 if img.mode == "L" else 3)
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG" if wds_ext == "jpg" else "PNG", quality=quality)
            data = buffer.getvalue()
        counts[what] += 1
        images.append(data)
    with atomic_path(path) as tmp:  # complete or absent: never half a shard under its final name
        if fmt == "parquet":
            features = datasets.Features({"image": datasets.Image(), **(
                {"label": dataset.features["label"]} if labels is not None else {})})
            columns = {"image": [{"bytes": b, "path": None} for b in images]}
            if labels is not None:
                columns["label"] = labels
            datasets.Dataset.from_dict(columns, features=features).to_parquet(str(tmp))
        else:
            with tarfile.open(tmp, "w") as tar:
                for offset, data in enumerate(images):
                    key = f"{split}_{start + offset:09d}"
                    members = [(f"{key}.{wds_ext}", data)]
                    if labels is not None:
                        members.append((f"{key}.cls", str(int(labels[offset])).encode()))
                    for name, payload in members:
                        info = tarfile.TarInfo(name)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
    return {**counts, "images": stop - start}


# --------------------------------------------------------------------------------------------------------
# The card and the settings
# --------------------------------------------------------------------------------------------------------


def _feature_yaml(name: str, feature) -> list[str]:
    if isinstance(feature, datasets.ClassLabel):
        lines = [f"  - name: {name}", "    dtype:", "      class_label:", "        names:"]
        return lines + [f"          '{i}': {json.dumps(label)}" for i, label in enumerate(feature.names)]
    if isinstance(feature, datasets.Image):
        return [f"  - name: {name}", "    dtype: image"]
    return [f"  - name: {name}", f"    dtype: {getattr(feature, 'dtype', 'int64')}"]


def dataset_card(splits: list[str], fmt: str, label_feature, wds_ext: str, settings: dict) -> str:
    image, label = ("image", "label") if fmt == "parquet" else (wds_ext, "cls")
    extension = "parquet" if fmt == "parquet" else "tar"
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.{extension}"]
    lines += ["dataset_info:", "  features:", *_feature_yaml(image, datasets.Image())]
    if label_feature is not None:
        lines += _feature_yaml(label, label_feature)
    lines += ["---", "", "# Prepared copy (hf_mae prepare_dataset)", "",
              f"Source: {settings['source']}. Shorter side capped at {settings['shorter_side']} px, resized images "
              f"saved as JPEG quality {settings['quality']}, {fmt} shards. Train on it with "
              "`accelerate launch scripts/pretrain.py --dataset_name <this folder>`.", ""]
    return "\n".join(lines)


def _source_paths(args) -> tuple:
    paths = [args.train_dir, args.eval_dir, *(args.data_files or [])]
    if args.dataset_name and os.path.exists(args.dataset_name):
        paths.append(args.dataset_name)
    return tuple(p for p in paths if p)


def check_target(args: argparse.Namespace) -> Path:
    """The output folder, checked: not a finished copy (unless --overwrite_output_dir), not inside the source."""
    marker = read_run_marker(args.output_dir)
    if marker and marker.get("program") == PROGRAM and marker.get("status") == "finished" and \
            not args.overwrite_output_dir:
        raise ValueError(f"--output_dir {args.output_dir} already holds a finished prepared copy: train on it with "
                         f"--dataset_name {args.output_dir}, or pass --overwrite_output_dir to make it again.")
    target = Path(args.output_dir).resolve()
    for source in _source_paths(args):
        root = Path(source).resolve()
        root = root if root.is_dir() else root.parent
        if target == root or root in target.parents:
            raise ValueError(f"--output_dir {args.output_dir} is inside the source {source}: the source is only "
                             "read, never written (a copy inside an imagefolder would join it). Pass another "
                             "--output_dir.")
    return check_output_dir(args.output_dir, PROGRAM, overwrite=args.overwrite_output_dir, resume=True,
                            inputs=_source_paths(args))


def main(args: argparse.Namespace) -> dict:
    """Write the prepared copy; returns what `prepare_dataset.json` records."""
    out = check_target(args)
    datasets.disable_progress_bars()  # one progress bar: this program's
    train, evaluation, info = load_datasets_from_args(args)
    splits = {args.train_split: train, **({args.eval_split: evaluation} if evaluation is not None else {})}
    settings = {"source": info.source, "splits": {k: len(v) for k, v in splits.items()}, "format": args.format,
                "shorter_side": args.shorter_side, "quality": args.quality, "shard_size": args.shard_size}
    previous = _read_settings(out)
    if previous is not None and previous.get("settings") != settings:
        if not args.overwrite_output_dir:
            raise ValueError(f"--output_dir {out} holds a prepared copy made with other settings "
                             f"({previous.get('settings')}); pass the same flags to continue it, another "
                             "--output_dir, or --overwrite_output_dir to start over.")
    if args.overwrite_output_dir:
        for stale in (out / "data", out / SETTINGS):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    take_output_dir(out, PROGRAM, overwrite=args.overwrite_output_dir)
    write_json(out / SETTINGS, {"settings": settings, "status": "running"})
    (out / "data").mkdir(exist_ok=True)

    wds_ext = "png" if _first_format(train, args) == "png" else "jpg"  # the format most images will have
    jobs, done_images = shard_jobs(args, splits, out, wds_ext)
    total = sum(len(d) for d in splits.values())
    counts = write_shards(jobs, total, done_images, args.num_proc)
    if counts["undecodable"]:
        warnings.warn(f"{counts['undecodable']} undecodable images were stored as they are (training skips them)",
                      stacklevel=2)
    label = train.features.get("label") if train.features else None
    write_text(out / "README.md", dataset_card(list(splits), args.format, label, wds_ext, settings))
    record = {"settings": settings, "status": "finished", "this_run": counts, "resumed_after_images": done_images}
    write_json(out / SETTINGS, record)
    mark_finished(out)
    print(f"prepared copy in {out}: {total} images ({counts['resized']} resized, {counts['kept']} kept as they "
          f"were in this run; {done_images} from an earlier run). Train on it with --dataset_name {out}")
    return record


def shard_jobs(args: argparse.Namespace, splits: dict, out: Path, wds_ext: str) -> tuple[list[tuple], int]:
    """(the `write_shard` arguments of every shard not written yet, images in the shards already written)."""
    jobs, done_images = [], 0
    for split, dataset in splits.items():
        _SOURCES[split] = dataset.cast_column("image", datasets.Image(decode=False))  # bytes/paths: no decoding
        count = max(1, math.ceil(len(dataset) / args.shard_size))
        for index in range(count):
            start, stop = index * args.shard_size, min(len(dataset), (index + 1) * args.shard_size)
            path = out / "data" / shard_name(split, index, count, args.format)
            if path.exists():
                done_images += stop - start  # written by an earlier, interrupted run
            else:
                jobs.append((split, start, stop, str(path), args.format, args.shorter_side, args.quality, wds_ext))
    for leftover in (out / "data").glob(".*.tmp"):  # the half-written shard of a killed run
        leftover.unlink()
    return jobs, done_images


def write_shards(jobs: list[tuple], total: int, done_images: int, num_proc: int | None) -> dict:
    """Run `write_shard` over the jobs (forked processes when there are several); returns the image counts."""
    from tqdm.auto import tqdm

    counts = {"kept": 0, "resized": 0, "undecodable": 0}
    progress = tqdm(total=total, initial=done_images, desc="prepare_dataset", unit="img", dynamic_ncols=True)
    workers = min(num_proc or len(os.sched_getaffinity(0)), max(1, len(jobs)))
    if workers <= 1:
        results = (write_shard(*job) for job in jobs)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"))
        results = (future.result() for future in as_completed([pool.submit(write_shard, *job) for job in jobs]))
    for result in results:
        for key in counts:
            counts[key] += result[key]
        progress.update(result["images"])
    progress.close()
    if workers > 1:
        pool.shutdown()
    return counts


def _read_settings(out: Path) -> dict | None:
    try:
        return json.loads((out / SETTINGS).read_text())
    except (OSError, ValueError):
        return None


def _first_format(dataset, args) -> str | None:
    """The stored format of the first image (after capping): webdataset copies use its extension."""
    if not len(dataset):
        return None
    value = dataset.cast_column("image", datasets.Image(decode=False))[0]["image"]
    return capped_image(value, args.shorter_side, args.quality)[1]


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


if __name__ == "__main__":
    cli()

__all__ = ["build_parser", "capped_image", "cli", "main", "parse_args"]
