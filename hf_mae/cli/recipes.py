"""The recipe flags of every training program, declared once, and their defaults: one table of program x data in
use ("embedded": the embedded default digits; "paper": any named dataset, the paper's recipe)."""

from __future__ import annotations

import argparse
from typing import NamedTuple

from .arguments import nonnegative_float, nonnegative_int, positive_float, positive_int, scale_fraction, unit_fraction

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
        "max_train_steps": _Flag("optimizer steps (mmsegmentation 160000; embedded 1200)"),
        "per_device_batch_size": _Flag("images per device per step (mmsegmentation 16 in all; embedded 32)"),
        "gradient_accumulation_steps": _Flag(_ACCUMULATION, 1),
        "lr": _Flag("peak lr (mmsegmentation 1e-4; embedded 1e-3)"),
        "min_lr": _Flag("poly decay floor (0)", 0.0),
        "warmup_steps": _Flag("linear warmup steps (mmsegmentation 1500; embedded 120)"),
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
    # - segment, embedded: the digit scenes (2,000 training scenes of 56x56), chosen on a validation split carved from
    #   them (docs/experiments.md): 28-px crops at the digits' own scale with sliding-window evaluation keep the
    #   encoder on the 7x7 grid it was pretrained on (whole 56-px scenes: half the mIoU); 1,200 steps, as 600 stop
    #   on the loss's way down (45 -> 81 mIoU); paper: mmsegmentation's ViT-B on ADE20K.
    "segment": {
        "embedded": {"max_train_steps": 1200, "per_device_batch_size": 32, "lr": 1e-3, "warmup_steps": 120,
                     "crop_size": 28, "ratio_range": (1.0, 1.0), "hflip": False, "eval_mode": "slide",
                     "head_hidden_size": 64},
        "paper": {"max_train_steps": 160_000, "per_device_batch_size": 16, "lr": 1e-4, "warmup_steps": 1500,
                  "crop_size": 512, "ratio_range": (0.5, 2.0), "hflip": True, "eval_mode": "slide",
                  "head_hidden_size": 512},
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
