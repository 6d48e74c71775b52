"""The shared flags of every program (with transformers' names as aliases) and the CLI wrapper that turns errors
into one line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from ..data.sources import load_image_datasets
from ..evaluation.classifier import DEFAULT_MODEL
from ..evaluation.splits import labelled_splits, limit_samples
from ..training.checkpointing import CheckpointError

# --------------------------------------------------------------------------------------------------------
# Flag types: bad values are refused at parse time with the flag's name (argparse adds it)
# --------------------------------------------------------------------------------------------------------


def _number(kind, low=None, high=None, low_open=False, high_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or kind.__name__}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if (low is not None and (value < low or (low_open and value == low))) or (
                high is not None and (value > high or (high_open and value == high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what or kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, what="an integer >= 1")


nonnegative_int = _number(int, 0, what="an integer >= 0")


positive_float = _number(float, 0, low_open=True, what="a number > 0")


nonnegative_float = _number(float, 0, what="a number >= 0")


unit_fraction = _number(float, 0, 1, what="a number in [0, 1]")


open_fraction = _number(float, 0, 1, high_open=True, what="a number in [0, 1)")


scale_fraction = _number(float, 0, 1, low_open=True, what="a number in (0, 1]")


def checkpointing_steps(text: str):
    """`--checkpointing_steps`: 'epoch' or a positive integer."""
    if text == "epoch":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 'epoch' or an integer >= 1, got {text!r}")
    return value


def add_run_arguments(parser: argparse.ArgumentParser, *, output_dir: str, mixed_precision: str = "auto",
                      training: bool = True) -> argparse._ArgumentGroup:
    """The flags every program takes (`training`: also logging, trackers, checkpoints and resume)."""
    run = parser.add_argument_group("outputs, logging and run")
    run.add_argument("--output_dir", default=output_dir, help=f"where outputs go (default {output_dir})")
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="replace the outputs of a finished run or of another program in --output_dir (its "
                          "checkpoints and logs are removed first; other files are left alone)")
    run.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    run.add_argument("--mixed_precision", choices=["auto", "no", "bf16", "fp16"], default=mixed_precision,
                     help=f"autocast (default {mixed_precision}; auto: bf16 where the hardware computes it fast, "
                          "e.g. recent CPUs and Ampere+ GPUs)")
    run.add_argument("--num_workers", "--dataloader_num_workers", type=nonnegative_int, default=None,
                     help="DataLoader workers per process (default: one per spare core, at most 4)")
    run.add_argument("--cpu_threads", type=positive_int, default=None,
                     help="torch threads per process on CPU (default: the cores shared among local processes)")
    if training:
        run.add_argument("--logging_steps", type=positive_int, default=10, help="log every N optimizer steps")
        run.add_argument("--report_to", default="none",
                         help="Accelerate trackers: tensorboard, wandb, ... , 'all' (installed ones) or 'none'")
        run.add_argument("--checkpointing_steps", "--save_steps", type=checkpointing_steps, default="epoch",
                         help="a resumable checkpoint at the end of every epoch ('epoch'), and with N also every "
                              "N optimizer steps")
        run.add_argument("--checkpoints_total_limit", "--save_total_limit", type=positive_int, default=2,
                         help="resumable checkpoints kept in <output_dir>/checkpoints (default 2: the newest "
                              "and one before it, in case the newest is damaged)")
        run.add_argument("--resume_from_checkpoint", default=None,
                         help="'latest' (the newest intact checkpoint in <output_dir>/checkpoints) or a "
                              "checkpoint folder: continue exactly where it was written")
        run.add_argument("--max_nonfinite_steps", type=positive_int, default=5,
                         help="stop after this many optimizer steps in a row with a non-finite loss (each is "
                              "skipped and counted)")
    return run


def add_push_arguments(group, what: str, repo_note: str | None = None) -> None:
    """--push_to_hub / --hub_model_id / --hub_private."""
    group.add_argument("--push_to_hub", action="store_true", help=f"push {what} at the end")
    group.add_argument("--hub_model_id", default=None,
                       help="repo id for --push_to_hub" + (f" ({repo_note})" if repo_note else ""))
    group.add_argument("--hub_private", action="store_true", help="create the Hub repo as private")


def check_push_arguments(args) -> None:
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id")


def is_embedded(args: argparse.Namespace) -> bool:
    """True when no data flag was given (the embedded default data is used)."""
    return not (args.dataset_name or args.train_dir or args.data_files)


def apply_defaults(args: argparse.Namespace, embedded: dict, paper: dict) -> argparse.Namespace:
    """Flags left unset (None) take the embedded-data values or the paper's, by the data in use."""
    for name, value in (embedded if is_embedded(args) else paper).items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


def run_cli(main, args) -> dict:
    """`main(args)` for a command line: a known failure (bad value or data, a refused folder, a damaged
    checkpoint, a non-finite run) ends with its message and exit status 1 instead of a traceback
    (HF_MAE_TRACEBACK=1 keeps the traceback)."""
    from ..data.sources import DatasetLoadError
    from ..training.loop import NonFiniteLossError

    try:
        return main(args)
    except (ValueError, CheckpointError, DatasetLoadError, NonFiniteLossError) as error:
        if os.environ.get("HF_MAE_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


# --------------------------------------------------------------------------------------------------------
# Flags and data
# --------------------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, pooling_default: str,
                        raw_pixels: bool = True) -> argparse._ArgumentGroup:
    """--model, --pooling, --random_init (and --raw_pixels): what the evaluation programs evaluate."""
    model = parser.add_argument_group("model")
    model.add_argument("--model", "--model_name_or_path", default=DEFAULT_MODEL,
                       help="hf_mae checkpoint: a local folder or Hub id holding an encoder (MAEModel), a full "
                            "pretraining model (MAEForPreTraining) or a classifier (default: outputs/pretrain)")
    model.add_argument("--pooling", choices=["cls", "mean"], default=pooling_default,
                       help=f"features: CLS token or mean of the patch tokens (default {pooling_default})")
    model.add_argument("--random_init", action="store_true",
                       help="baseline: the same architecture with random weights (from the checkpoint's config)")
    if raw_pixels:
        model.add_argument("--raw_pixels", action="store_true",
                           help="baseline: flattened, normalised pixels as features (the model only sets "
                                "the preprocessing)")
    return model


def add_sample_arguments(group) -> None:
    """--max_train_samples / --max_eval_samples / --eval_batch_size of the evaluation programs."""
    group.add_argument("--max_train_samples", type=positive_int, default=None,
                       help="random subset of the training split")
    group.add_argument("--max_eval_samples", type=positive_int, default=None,
                       help="random subset of the held-out split")
    group.add_argument("--eval_batch_size", "--per_device_eval_batch_size", type=positive_int, default=256,
                       help="images per device for feature extraction and evaluation")


def dataset_name(args):
    """The data the run used, as the user named it (for results.json and cards)."""
    return args.dataset_name or args.train_dir or (args.data_files[0] if args.data_files and
                                                   len(args.data_files) == 1 else args.data_files)


def prepare_data(args):
    """(train, eval, info, num_labels, id2label, label2id) from the data flags, checked and limited."""
    train_data, eval_data, info = load_datasets_from_args(args)
    num_labels, id2label, label2id = labelled_splits(train_data, eval_data, info, args)
    train_data = limit_samples(train_data, args.max_train_samples, args.seed)
    eval_data = limit_samples(eval_data, args.max_eval_samples, args.seed)
    return train_data, eval_data, info, num_labels, id2label, label2id


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
