"""The data flags every script shares (pretrain, linear_probe, finetune, knn_eval) and their loading."""

import argparse
import os

from .data import load_image_datasets


def add_data_arguments(parser: argparse.ArgumentParser, training: bool = True) -> None:
    """The data source flags; `training=False` leaves out what only a training loader uses (--streaming,
    --strict_images), e.g. for the prepared-copy program."""
    data = parser.add_argument_group("data (default: the embedded MNIST-5k digits, no download)")
    data.add_argument("--dataset_name", default=None,
                      help="Hub dataset id (e.g. ILSVRC/imagenet-1k, gated: log in or set HF_TOKEN; "
                           "timm/imagenet-1k-wds) or a local dataset folder")
    data.add_argument("--dataset_config_name", default=None, help="dataset configuration name")
    data.add_argument("--train_dir", default=None, help="imagefolder of training images (one folder per class)")
    data.add_argument("--eval_dir", "--validation_dir", default=None, help="imagefolder of held-out images")
    data.add_argument("--data_files", nargs="+", default=None,
                      help="parquet / arrow / webdataset .tar files (paths or globs) for the train split")
    data.add_argument("--train_split", default="train", help="split to train on (default train)")
    data.add_argument("--eval_split", default="validation", help="held-out split (default validation)")
    data.add_argument("--image_column", "--image_column_name", default=None,
                      help="image column (guessed: image, img, jpg, ...)")
    data.add_argument("--label_column", "--label_column_name", default=None,
                      help="label column (guessed: label, cls, ...)")
    data.add_argument("--cache_dir", default=None, help="datasets cache folder")
    if training:
        data.add_argument("--streaming", action="store_true", help="stream the dataset instead of downloading it")
        data.add_argument("--strict_images", action="store_true",
                          help="fail on the first undecodable image instead of skipping and counting it")


def dataloader_workers(args: argparse.Namespace) -> int:
    """`--num_workers`, else one worker per spare core (at most 4): decoding overlaps the model's compute."""
    if getattr(args, "num_workers", None) is not None:
        return args.num_workers
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def load_datasets_from_args(args: argparse.Namespace):
    """(train, eval or None, LoadedDataInfo) from the flags of `add_data_arguments`."""
    data_files = args.data_files[0] if args.data_files and len(args.data_files) == 1 else args.data_files
    return load_image_datasets(
        dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name, train_dir=args.train_dir,
        eval_dir=args.eval_dir, data_files=data_files, train_split=args.train_split,
        eval_split=args.eval_split, image_column=args.image_column, label_column=args.label_column,
        streaming=args.streaming, cache_dir=args.cache_dir)


__all__ = ["add_data_arguments", "dataloader_workers", "load_datasets_from_args"]
