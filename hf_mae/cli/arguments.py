"""The shared flags of every program (with transformers' names as aliases) and the CLI wrapper that turns errors
into one line.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path

from ..data.sources import DatasetLoadError, load_image_datasets
from ..evaluation.classifier import DEFAULT_MODEL
from ..evaluation.features import Features, extract_split_features
from ..evaluation.splits import labelled_splits, limit_samples
from ..training.checkpointing import CheckpointError, list_checkpoints
from ..training.failures import RunInterrupted, describe_failure
from ..training.loop import LoopConfig, NonFiniteLossError
from ..training.output_dir import mark_stopped, taken_count
from ..training.run import RunConfig

# Errors whose message is written for the user (it names the value or file and what to do): shown as they are
_KNOWN_ERRORS = (ValueError, OSError, CheckpointError, DatasetLoadError, NonFiniteLossError)

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
    add_output_dir_arguments(run, default=output_dir, help=f"where outputs go (default {output_dir})",
                             overwrite_help="replace the outputs of a finished run or of another program in "
                                            "--output_dir (its checkpoints and logs are removed first; other files "
                                            "are left alone)")
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
        run.add_argument("--allow_changed_resume", action="store_true",
                         help="resume even though settings that change the result (lr, epochs, mask ratio, data, "
                              "...) differ from the checkpoint's: without it such a resume is refused, listing them")
        run.add_argument("--max_nonfinite_steps", type=positive_int, default=5,
                         help="stop after this many optimizer steps in a row with a non-finite loss (each is "
                              "skipped and counted)")
    return run


def add_output_dir_arguments(group, *, help: str, overwrite_help: str, default: str | None = None,
                             required: bool = False, short_names: bool = False) -> None:
    """--output_dir and --overwrite_output_dir (`short_names`: --output / --overwrite first, the values stored as
    `output` / `overwrite`)."""
    output, overwrite = (("--output",), ("--overwrite",)) if short_names else ((), ())
    group.add_argument(*output, "--output_dir", default=default, required=required, help=help)
    group.add_argument(*overwrite, "--overwrite_output_dir", action="store_true", help=overwrite_help)


def add_model_argument(group, *, help: str, default: str | None = None, required: bool = False,
                       aliases: tuple[str, ...] = ("--model_name_or_path",)) -> None:
    """--model: the checkpoint a program reads (a local folder or a Hub id)."""
    group.add_argument("--model", *aliases, default=default, required=required, help=help)


def add_attn_implementation_argument(group, *, help: str, default: str | None = None,
                                     choices: list[str] | None = None) -> None:
    group.add_argument("--attn_implementation", default=default, choices=choices, help=help)


def add_eval_batch_size_argument(group, help: str = "images per device for feature extraction and evaluation",
                                 default: int = 256):
    group.add_argument("--eval_batch_size", "--per_device_eval_batch_size", type=positive_int, default=default,
                       help=help)


# Flags that do not change what a run computes (where it writes, how often it logs or saves, how fast it goes):
# a resume may change them. Every other flag, of every program, is the run's recipe.
NOT_RECIPE = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "allow_changed_resume", "logging_steps",
    "report_to", "num_workers", "cpu_threads", "checkpointing_steps", "checkpoints_total_limit", "max_nonfinite_steps",
    "push_to_hub", "hub_model_id", "hub_private", "cache_dir", "eval_batch_size", "image_log_every",
    "recon_statistics", "monitor_every", "compile", "attn_implementation"})


def recipe_settings(args: argparse.Namespace) -> dict:
    """The flags that change the result (every flag but NOT_RECIPE): what a checkpoint records about its run."""
    return {name: value for name, value in vars(args).items() if name not in NOT_RECIPE
            and (value is None or isinstance(value, (int, float, str, bool, list, tuple)))}


def card_datasets(args: argparse.Namespace) -> list[str] | None:
    """The `datasets:` a saved model's card names: the training data's Hub id, or the Hub's MNIST for the embedded
    default digits; none for local data."""
    from ..hub.cards import card_dataset_id

    found = card_dataset_id(getattr(args, "dataset_name", None), train_dir=getattr(args, "train_dir", None),
                            data_files=getattr(args, "data_files", None))
    return [found] if found else None


def write_cards(args: argparse.Namespace, *saved: tuple[object, Path]) -> None:
    """Each saved (model, folder)'s short card, naming the training data (`card_datasets`)."""
    from ..models.mae.card_mae import write_model_card

    for model, folder in saved:
        write_model_card(model, folder, datasets=card_datasets(args))


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run start-up settings from the flags of `add_run_arguments`; every flag is recorded as a setting, and
    those that change the result as the recipe a resume is checked against."""
    resume_from = getattr(args, "resume_from_checkpoint", None)
    return RunConfig(output_dir=args.output_dir, seed=args.seed, mixed_precision=args.mixed_precision,
                     overwrite_output_dir=args.overwrite_output_dir, resume=bool(resume_from), resume_from=resume_from,
                     recipe=recipe_settings(args), allow_changed_resume=getattr(args, "allow_changed_resume", False),
                     report_to=getattr(args, "report_to", None), cpu_threads=args.cpu_threads,
                     settings=dict(vars(args)))


def loop_config(args: argparse.Namespace) -> LoopConfig:
    """The training loop's policies from the flags of `add_run_arguments(training=True)`."""
    every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)
    return LoopConfig(logging_steps=args.logging_steps, checkpoint_every=every,
                      checkpoints_total_limit=args.checkpoints_total_limit,
                      max_nonfinite_steps=args.max_nonfinite_steps)


def add_push_arguments(group, what: str, repo_note: str | None = None) -> None:
    """--push_to_hub / --hub_model_id / --hub_private."""
    group.add_argument("--push_to_hub", action="store_true", help=f"push {what} at the end")
    group.add_argument("--hub_model_id", default=None,
                       help="repo id for --push_to_hub" + (f" ({repo_note})" if repo_note else ""))
    group.add_argument("--hub_private", action="store_true", help="create the Hub repo as private")


def check_push_arguments(args) -> None:
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id")


# --------------------------------------------------------------------------------------------------------
# The recipe: its flags, declared once, and the defaults of each program on the embedded data and elsewhere
# --------------------------------------------------------------------------------------------------------


def _raise_interrupt(signum, _frame):
    raise RunInterrupted(signum)


def _stopped(status: str, message: str, since: int) -> str:
    """Mark the folders this call took as `status`; the sentence that says how to go on from them."""
    folders = mark_stopped(status, message, since)
    resumable = [f for f in folders if list_checkpoints(f / "checkpoints")]
    if resumable:
        return (f" The run in {resumable[0]} is marked {status}; its checkpoints are intact: run the same command "
                "with --resume_from_checkpoint latest to continue it.")
    return f" {folders[0]} is marked {status}." if folders else ""


def run_cli(main, args):
    """`main(args)` for a command line: every failure ends with one line (`error: ...`, naming the file or value
    and what to do) and exit status 1; Ctrl-C, SIGTERM and SIGHUP end with a line and status 130. A run folder the
    program took is marked "failed" or "interrupted" with the message. HF_MAE_TRACEBACK=1 keeps the traceback."""
    since = taken_count()
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, _raise_interrupt)
        except ValueError:  # not the main thread: the default handlers stay
            break
    try:
        return main(args)
    except KeyboardInterrupt as interrupt:
        by = str(interrupt) if isinstance(interrupt, RunInterrupted) else "Ctrl-C"
        what = f"stopped by {by}" if isinstance(interrupt, RunInterrupted) else "interrupted (Ctrl-C)"
        note = _stopped("interrupted", by, since)
        if os.environ.get("HF_MAE_TRACEBACK"):
            raise
        print(f"error: {what}.{note}", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as error:
        message = describe_failure(error)
        if not isinstance(error, _KNOWN_ERRORS):
            message = f"{type(error).__name__}: {message} (HF_MAE_TRACEBACK=1 shows where it happened)"
        note = _stopped("failed", message, since)
        if os.environ.get("HF_MAE_TRACEBACK"):
            raise
        print(f"error: {message}{note}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------------------
# Flags and data
# --------------------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, pooling_default: str,
                        raw_pixels: bool = True) -> argparse._ArgumentGroup:
    """--model, --pooling, --random_init (and --raw_pixels): what the evaluation programs evaluate."""
    model = parser.add_argument_group("model")
    add_model_argument(model, default=DEFAULT_MODEL,
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
    add_eval_batch_size_argument(group)


def dataset_name(args):
    """The data the run used, as the user named it (for results.json and cards)."""
    return args.dataset_name or args.train_dir or (args.data_files[0] if args.data_files and
                                                   len(args.data_files) == 1 else args.data_files)


def prepare_data(args):
    """(train, eval, info, num_labels, id2label, label2id) from the data flags, checked and limited."""
    train_data, eval_data, info = load_datasets_from_args(args)
    num_labels, id2label, label2id = labelled_splits(train_data, eval_data, info, eval_split=args.eval_split,
                                                     label_column=args.label_column)
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


def split_features(accelerator, encoder, dataset, processor, args: argparse.Namespace, desc: str) -> Features:
    """`extract_split_features` with the evaluation programs' flags (batch size, workers, pooling, baseline)."""
    return extract_split_features(accelerator, encoder, dataset, processor, batch_size=args.eval_batch_size,
                                  num_workers=dataloader_workers(args), pooling=args.pooling,
                                  raw_pixels=args.raw_pixels, strict=args.strict_images, desc=desc)


def load_datasets_from_args(args: argparse.Namespace):
    """(train, eval or None, LoadedDataInfo) from the flags of `add_data_arguments`."""
    data_files = args.data_files[0] if args.data_files and len(args.data_files) == 1 else args.data_files
    return load_image_datasets(
        dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name, train_dir=args.train_dir,
        eval_dir=args.eval_dir, data_files=data_files, train_split=args.train_split,
        eval_split=args.eval_split, image_column=args.image_column, label_column=args.label_column,
        streaming=args.streaming, cache_dir=args.cache_dir)
