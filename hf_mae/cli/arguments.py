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
from typing import NamedTuple

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

_RECIPE_FLAGS = {  # flag -> (option strings, type; None for a switch)
    "epochs": (("--epochs", "--num_train_epochs"), positive_int),
    "max_train_steps": (("--max_train_steps", "--max_steps"), positive_int),
    "per_device_batch_size": (("--per_device_batch_size", "--per_device_train_batch_size"), positive_int),
    "gradient_accumulation_steps": (("--gradient_accumulation_steps",), positive_int),
    "blr": (("--blr", "--base_learning_rate"), positive_float),
    "lr": (("--lr", "--learning_rate"), positive_float),
    "min_lr": (("--min_lr",), nonnegative_float),
    "warmup_epochs": (("--warmup_epochs",), nonnegative_float),
    "warmup_steps": (("--warmup_steps",), nonnegative_int),
    "warmup_ratio": (("--warmup_ratio",), unit_fraction),
    "weight_decay": (("--weight_decay",), nonnegative_float),
    "max_grad_norm": (("--max_grad_norm",), positive_float),
    "crop_min_scale": (("--crop_min_scale",), scale_fraction),
    "no_hflip": (("--no_hflip",), None),
}


class _Flag(NamedTuple):
    help: str
    default: object = None  # None: the program's RECIPE_DEFAULTS value for the data in use
    type: object = None  # the program's own type, in place of the shared one


_WARMUP_RATIO = "warmup as a fraction of all optimizer steps (overrides --warmup_epochs)"
_CLIP = "clip gradients (official: off)"
_ACCUMULATION = "effective batch = per_device_batch_size x processes x this"

RECIPE_FLAGS = {  # program -> the recipe flags it takes, with its help text and fixed defaults
    "pretrain": {
        "epochs": _Flag("training epochs (embedded: 75, else 800)"),
        "max_train_steps": _Flag("stop after this many optimizer steps (overrides --epochs; needed for streaming)"),
        "per_device_batch_size": _Flag("images per device per step (embedded and paper: 64)"),
        "gradient_accumulation_steps": _Flag(_ACCUMULATION, 1),
        "blr": _Flag("base learning rate: lr = blr * effective_batch / 256 (paper 1.5e-4; embedded 3e-3)"),
        "lr": _Flag("absolute learning rate (overrides --blr)"),
        "min_lr": _Flag("cosine floor", 0.0),
        "warmup_epochs": _Flag("linear warmup in epochs (paper 40; embedded 5)"),
        "warmup_steps": _Flag("warmup in optimizer steps (overrides --warmup_epochs)"),
        "warmup_ratio": _Flag(_WARMUP_RATIO),
        "weight_decay": _Flag("AdamW weight decay (0.05)", 0.05),
        "max_grad_norm": _Flag(_CLIP),
        "crop_min_scale": _Flag("RandomResizedCrop scale lower bound, in (0, 1]; 1 keeps the whole image (paper "
                                "0.2; embedded 1)"),
        "no_hflip": _Flag("disable the random horizontal flip"),
    },
    "finetune": {
        "epochs": _Flag("official 100 (ViT-B); embedded 30"),
        "per_device_batch_size": _Flag("images per device per step (official 64 x 16 GPUs; embedded 128)"),
        "gradient_accumulation_steps": _Flag(f"{_ACCUMULATION} (official 1024)", 1),
        "blr": _Flag("base lr: lr = blr x effective_batch / 256 (official 5e-4; embedded 2e-3)"),
        "lr": _Flag("absolute lr (overrides --blr)"),
        "min_lr": _Flag("cosine floor (official 1e-6)", 1e-6),
        "warmup_epochs": _Flag("linear warmup epochs (official 5; embedded 2)"),
        "warmup_ratio": _Flag(_WARMUP_RATIO),
        "weight_decay": _Flag("AdamW weight decay (0.05)", 0.05),
        "crop_min_scale": _Flag("RandomResizedCrop scale lower bound (official 0.08; embedded 0.35)"),
        "max_grad_norm": _Flag(_CLIP),
    },
    "linear_probe": {
        "epochs": _Flag("head training epochs (default 90; 0 evaluates a saved probe given as --model)",
                        type=nonnegative_int),
        "per_device_batch_size": _Flag("images per device per step (embedded default 256, else 512)"),
        "gradient_accumulation_steps": _Flag(f"{_ACCUMULATION} (official 16384); in the fast mode the head takes "
                                             "one step on an effective batch of cached features", 1),
        "blr": _Flag("base lr: lr = blr x effective_batch / 256 (official 0.1; embedded default 10: 4,000 images "
                     "give LARS ~300x less lr x steps than ImageNet's 1.28M)"),
        "lr": _Flag("absolute lr (overrides --blr)"),
        "min_lr": _Flag("cosine floor", 0.0),
        "warmup_epochs": _Flag("linear warmup epochs (default 10)"),
        "weight_decay": _Flag("LARS weight decay (official 0)", 0.0),
        "crop_min_scale": _Flag("--augment: RandomResizedCrop scale lower bound (official 0.08)", 0.08),
        "no_hflip": _Flag("--augment: no horizontal flip"),
    },
    "segment": {
        "max_train_steps": _Flag("optimizer steps (mmsegmentation 160000; embedded 300)"),
        "per_device_batch_size": _Flag("images per device per step (mmsegmentation 16 in all; embedded 16)"),
        "gradient_accumulation_steps": _Flag(_ACCUMULATION, 1),
        "lr": _Flag("peak lr (mmsegmentation 1e-4; embedded 1e-3)"),
        "min_lr": _Flag("poly decay floor (0)", 0.0),
        "warmup_steps": _Flag("linear warmup steps (mmsegmentation 1500; embedded 30)"),
        "weight_decay": _Flag("AdamW weight decay (0.05)", 0.05),
        "max_grad_norm": _Flag("clip gradients (default off)"),
    },
}

# What a flag left unset takes, by program and by the data in use: "embedded" (no data flag: the embedded default
# digits) or "paper" (any named dataset: the paper's recipe).
# - pretrain, embedded: chosen by the recipe sweep on validation folds of the training digits (docs): batch 64
#   doubles the steps of batch 128 at nearly the same cost per epoch, mask 0.6 lifts CLS features, whole digits
#   (crop scale 1) and plain pixel targets (per-patch normalisation stretches a digit's faint edge patches to
#   full contrast) lift both poolings, and 75 epochs take ~7.5 minutes on 2 cores. preset, mask_ratio and
#   norm_pix_loss belong to the model: a --model_config or --init_from model keeps its own.
# - finetune, embedded: 4,000 28x28 digits, sized for a few minutes on 2 cores (BENCHMARKS.md); paper: ViT-B.
# - linear_probe (also the pretraining monitor's probe): on 4,000 digits LARS needs a far larger base lr than on
#   ImageNet (BENCHMARKS.md).
RECIPE_DEFAULTS = {
    "pretrain": {
        "embedded": {"preset": "mae-vit-mnist-patch4", "mask_ratio": 0.6, "norm_pix_loss": False, "epochs": 75,
                     "warmup_epochs": 5, "blr": 3e-3, "per_device_batch_size": 64, "crop_min_scale": 1.0},
        "paper": {"preset": "mae-vit-base-patch16", "epochs": 800, "warmup_epochs": 40, "blr": 1.5e-4,
                  "per_device_batch_size": 64, "crop_min_scale": 0.2},
    },
    "finetune": {
        "embedded": {"epochs": 30, "blr": 2e-3, "warmup_epochs": 2, "per_device_batch_size": 128,
                     "layer_decay": 0.75, "drop_path": 0.1, "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.1,
                     "crop_min_scale": 0.35, "hflip": False, "aa": "none", "reprob": 0.0},
        "paper": {"epochs": 100, "blr": 5e-4, "warmup_epochs": 5, "per_device_batch_size": 64,
                  "layer_decay": 0.65, "drop_path": 0.1, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1,
                  "crop_min_scale": 0.08, "hflip": True, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25},
    },
    "linear_probe": {
        "embedded": {"epochs": 90, "blr": 10.0, "warmup_epochs": 10, "per_device_batch_size": 256},
        "paper": {"epochs": 90, "blr": 0.1, "warmup_epochs": 10, "per_device_batch_size": 512},
    },
    "segment": {  # embedded: the digit scenes (2,000 training scenes of 56x56); paper: mmsegmentation's ViT-B ADE20K
        "embedded": {"max_train_steps": 300, "per_device_batch_size": 16, "lr": 1e-3, "warmup_steps": 30,
                     "crop_size": 56, "hflip": False, "eval_mode": "whole", "head_hidden_size": 64},
        "paper": {"max_train_steps": 160_000, "per_device_batch_size": 16, "lr": 1e-4, "warmup_steps": 1500,
                  "crop_size": 512, "hflip": True, "eval_mode": "slide", "head_hidden_size": 512},
    },
}


def add_recipe_arguments(group, program: str) -> None:
    """The recipe flags `program` takes (RECIPE_FLAGS), with its help text and fixed defaults."""
    for name, flag in RECIPE_FLAGS[program].items():
        names, kind = _RECIPE_FLAGS[name]
        if kind is None:
            group.add_argument(*names, action="store_true", help=flag.help)
        else:
            group.add_argument(*names, type=flag.type or kind, default=flag.default, help=flag.help)


def is_embedded(args: argparse.Namespace) -> bool:
    """True when no data flag was given (the embedded default data is used)."""
    return not (args.dataset_name or getattr(args, "train_dir", None) or args.data_files)


def recipe_of(args: argparse.Namespace) -> str:
    """"embedded" or "paper": which column of RECIPE_DEFAULTS the data in use selects."""
    return "embedded" if is_embedded(args) else "paper"


def apply_defaults(args: argparse.Namespace, program: str, skip: tuple[str, ...] = ()) -> argparse.Namespace:
    """Flags left unset (None) take `program`'s RECIPE_DEFAULTS for the data in use (those in `skip` stay unset)."""
    for name, value in RECIPE_DEFAULTS[program][recipe_of(args)].items():
        if name not in skip and getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


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
