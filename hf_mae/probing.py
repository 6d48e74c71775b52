"""Linear probing and kNN evaluation of a frozen MAE encoder, with Accelerate.

Linear probe (official `main_linprobe.py`): frozen encoder in eval mode, CLS token after the final norm (or
the mean of the patch tokens with `--pooling mean`), head = BatchNorm1d without affine (eps 1e-6) + Linear
(init std 0.01), LARS (momentum 0.9, trust coefficient 0.001), weight decay 0, lr = blr x batch / 256,
linear warmup then half-cycle cosine set every step, top-1 / top-5 on the held-out split.

Two modes:
- default, fast: features are extracted once with the eval transform (resize + center crop), kept in
  memory (and in `<output_dir>/features.pt` with `--cache_features`), and the head is trained on them:
  seconds on the embedded data, minutes on ImageNet after one pass of feature extraction.
- `--augment`: the official protocol: RandomResizedCrop + flip drawn every epoch, each batch through the
  frozen encoder; the large batch (official 16384) through `--gradient_accumulation_steps`.

The probe is saved as an `MAEForImageClassification` (encoder + BatchNorm with the running statistics the
head was trained with + Linear, `id2label`) with its image processor, loadable with
`AutoModelForImageClassification.from_pretrained(output_dir)`, beside `results.json` (`top1`, `top5` in
percent and the settings). Baselines: `--raw_pixels` (the same head on flattened pixels) and
`--random_init` (the same architecture, untrained).

    accelerate launch scripts/linear_probe.py --model outputs/pretrain              # embedded data, seconds
    accelerate launch scripts/linear_probe.py --model outputs/pretrain --raw_pixels --output_dir outputs/probe_pixels
    accelerate launch scripts/linear_probe.py --model outputs/pretrain --random_init --output_dir outputs/probe_random
    accelerate launch --config_file scripts/configs/multi_gpu.yaml scripts/linear_probe.py \\
        --model me/mae-vit-b-encoder --dataset_name ILSVRC/imagenet-1k --augment \\
        --per_device_batch_size 512 --gradient_accumulation_steps 4      # 8 GPUs x 512 x 4 = 16384
    python scripts/knn_eval.py --model outputs/pretrain                             # cosine kNN, k=20, T=0.07
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm

from .checkpointing import save_pretrained_atomic, write_json_atomic
from .configuration_mae import MAEConfig
from .data import TrainTransform, make_transform_fn
from .data_args import add_data_arguments, dataloader_workers, load_datasets_from_args
from .features import eval_dataloader, extract_features, pool_tokens
from .image_processing_mae import MAEImageProcessor
from .knn import knn_accuracy
from .modeling_mae import MAEForImageClassification
from .optim import LARS, lr_at_step, scaled_lr, set_lr
from .precision import resolve_mixed_precision
from .pretraining import add_push_arguments, check_push_arguments, start_run
from .train_loader import train_dataloader

ACCURACY_TOPK_PATH = str(Path(__file__).resolve().parent / "metrics" / "accuracy_topk.py")
DEFAULT_MODEL = "outputs/pretrain"  # where scripts/pretrain.py writes by default
MAE_ARCHITECTURES = ("MAEModel", "MAEForPreTraining", "MAEForImageClassification")

# Flags left unset take these values: sized for the embedded default data, or the official linear-probe recipe
# for any other dataset. LARS moves each weight matrix by at most ~lr x 0.001 / (1 - momentum) of its norm per
# step, so what it can learn scales with blr x epochs x N / 256: 4,000 digits give ~300x less than ImageNet.
# Measured on cached features of the embedded data (90 epochs, batch 256; held-out top-1, blr 1 / 3 / 10 / 30):
# MAE CLS (20 pretraining epochs) 80.7 / 87.2 / 88.7 / 87.5, random-init CLS 64.7 / 78.1 / 81.9 / 83.2,
# raw pixels 90.6 / 90.6 / 87.8 / 86.7 (784 mostly near-constant inputs: they prefer a lower lr).
EMBEDDED_DEFAULTS = {"epochs": 90, "blr": 10.0, "warmup_epochs": 10, "per_device_batch_size": 256}  # ~1.5 s
PAPER_DEFAULTS = {"epochs": 90, "blr": 0.1, "warmup_epochs": 10, "per_device_batch_size": 512}


# --------------------------------------------------------------------------------------------------------
# Pieces shared by the probe, kNN and fine-tuning programs
# --------------------------------------------------------------------------------------------------------


def load_topk_metric():
    """The shipped top-1/top-5 `evaluate` metric (loaded by path: no Hub access)."""
    import evaluate

    return evaluate.load(ACCURACY_TOPK_PATH, keep_in_memory=True)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"top1", "top5"} in percent, through the shipped `evaluate` metric. Inputs are already gathered."""
    metric = load_topk_metric()
    metric.add_batch(predictions=logits.detach().float().cpu().numpy(), references=labels.cpu().numpy())
    return metric.compute()


def is_embedded(args: argparse.Namespace) -> bool:
    """True when no data flag was given (the embedded default data is used)."""
    return not (args.dataset_name or args.train_dir or args.data_files)


def apply_defaults(args: argparse.Namespace, embedded: dict, paper: dict) -> argparse.Namespace:
    for name, value in (embedded if is_embedded(args) else paper).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def labelled_splits(train_data, eval_data, info, args):
    """Check that both splits carry labels; returns (num_labels, id2label, label2id). Clear errors else."""
    if eval_data is None:
        raise ValueError(f"{info.source} has no held-out split {args.eval_split!r}: evaluation needs one. "
                         f"Pass --eval_split NAME (or --eval_dir for an imagefolder).")
    for name, split in (("training", train_data), ("held-out", eval_data)):
        columns = list(split.column_names or [])
        if "label" not in columns:
            hint = (f"the label column {args.label_column!r} is missing" if args.label_column
                    else "no label column was found (looked for label, labels, cls, class, target)")
            raise ValueError(f"The {name} split of {info.source} has no labels: {hint}. Classification needs "
                             f"labelled data: pass --label_column NAME, or a labelled dataset.")
    if not info.num_labels:
        raise ValueError(f"Could not tell the number of classes of {info.source} (no ClassLabel feature and no "
                         f"readable integer labels).")
    names = info.label_names or [str(i) for i in range(info.num_labels)]
    id2label = {i: str(name) for i, name in enumerate(names)}
    return info.num_labels, id2label, {name: i for i, name in id2label.items()}


def limit_samples(dataset, max_samples: int | None, seed: int):
    """A random subset of `max_samples` examples (all when None): random, so sorted folders keep every class."""
    if not max_samples:
        return dataset
    if hasattr(dataset, "select"):
        return dataset if len(dataset) <= max_samples else dataset.shuffle(seed=seed).select(range(max_samples))
    return dataset.shuffle(seed=seed, buffer_size=10_000).take(max_samples)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' per-key load report (we print our own one-line summary)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def read_mae_config(name_or_path: str) -> MAEConfig:
    """The checkpoint's config, with clear errors when it is missing or not an hf_mae MAE."""
    from transformers import AutoConfig

    try:
        with _quiet_transformers():
            config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as e:
        where = "local folder" if os.path.isdir(name_or_path) else "local folder nor a reachable Hub repo"
        if os.path.isdir(name_or_path) and not os.path.exists(os.path.join(name_or_path, "config.json")):
            detail = "it has no config.json (expected a save_pretrained folder)"
        elif os.path.isdir(name_or_path):
            detail = f"{type(e).__name__}: {e}"
        else:
            detail = f"it is neither a {where} ({type(e).__name__}: {str(e).splitlines()[0]})"
            if name_or_path == DEFAULT_MODEL:
                detail += "; pretrain first (accelerate launch scripts/pretrain.py) or pass --model"
        raise ValueError(f"Cannot load an MAE checkpoint from {name_or_path!r}: {detail}. Give an hf_mae "
                         f"encoder or pretraining folder (e.g. outputs/pretrain) or Hub id.") from e
    if not isinstance(config, MAEConfig):
        raise ValueError(
            f"{name_or_path!r} is a {getattr(config, 'model_type', type(config).__name__)!r} checkpoint, not an "
            f"hf_mae MAE encoder. Convert it first (official, timm, transformers ViTMAE / ViT): python "
            f"scripts/convert_checkpoint.py {name_or_path} converted_folder")
    architecture = (config.architectures or ["MAEModel"])[0]
    if architecture not in MAE_ARCHITECTURES:
        raise ValueError(f"{name_or_path!r} holds a {architecture}, not an MAE encoder (expected one of "
                         f"{', '.join(MAE_ARCHITECTURES)})")
    return config


@torch.no_grad()
def reset_classifier_head(model: MAEForImageClassification) -> None:
    """Fresh `fc_norm` and `head` with the official inits (std 0.01 probe, 2e-5 fine-tune; bias 0)."""
    norm = model.fc_norm
    if isinstance(norm, nn.BatchNorm1d):
        norm.reset_running_stats()
    else:
        nn.init.ones_(norm.weight)
        nn.init.zeros_(norm.bias)
    nn.init.trunc_normal_(model.head.weight, std=model.head.init_std)
    nn.init.zeros_(model.head.bias)


def load_classifier(name_or_path: str, *, classifier_head: str, num_labels: int, id2label: dict | None = None,
                    label2id: dict | None = None, pooling: str = "cls", random_init: bool = False,
                    reinit_head: bool = False, **config_overrides):
    """An `MAEForImageClassification` built on an hf_mae checkpoint, its image processor and a note.

    `name_or_path` may hold an encoder (`MAEModel`), a full pretraining model (`MAEForPreTraining`: the
    decoder is dropped) or a classifier (`MAEForImageClassification`). A classifier of the same kind
    (`classifier_head` and `pooling`) keeps its head, so training continues from it (or `--epochs 0`
    evaluates it), and then its number of classes must match the data's; `reinit_head=True` starts a
    fresh head instead. `random_init=True` builds the same architecture untrained (the baseline).
    `config_overrides` (e.g. `drop_path_rate`, `attn_implementation`) go to the config.
    """
    config = read_mae_config(name_or_path)
    architecture = (config.architectures or ["MAEModel"])[0]
    same_kind = (architecture == "MAEForImageClassification" and config.classifier_head == classifier_head
                 and config.pooling == pooling)
    keep_head = same_kind and not reinit_head and not random_init
    if keep_head and config.num_labels != num_labels:
        raise ValueError(
            f"{name_or_path!r} is a {classifier_head} classifier for {config.num_labels} classes, but the data has "
            f"{num_labels}. Give the encoder or pretraining folder it was trained from, or pass --reinit_head to "
            f"train a new head on its encoder.")
    attn = config_overrides.pop("attn_implementation", None)
    config.update({"classifier_head": classifier_head, "pooling": pooling, **config_overrides})
    config.num_labels = num_labels
    if id2label is not None:
        config.id2label, config.label2id = dict(id2label), dict(label2id or {v: k for k, v in id2label.items()})
    config.architectures = ["MAEForImageClassification"]
    if attn:
        config._attn_implementation = attn
    if random_init:
        model = MAEForImageClassification(config)
        note = f"random init of the {architecture} architecture of {name_or_path}"
    else:
        with _quiet_transformers():
            model, info = MAEForImageClassification.from_pretrained(
                name_or_path, config=config, output_loading_info=True, ignore_mismatched_sizes=not keep_head)
        missing = sorted(k for k in info["missing_keys"] if k.startswith("encoder."))
        if missing:
            raise ValueError(f"{name_or_path!r} is not a complete MAE encoder: {len(missing)} encoder tensors are "
                             f"missing from its weights (e.g. {', '.join(missing[:3])}).")
        if not keep_head:
            reset_classifier_head(model)
        dropped = len([k for k in info["unexpected_keys"] if not k.startswith(("fc_norm.", "head."))])
        note = (f"encoder of {architecture} {name_or_path}" + (f" ({dropped} decoder tensors dropped)" if dropped
                                                                 else "")
                + ("; head loaded from the checkpoint" if keep_head else "; new head"))
    if model.is_linear_probe:  # from_pretrained materialises parameters with requires_grad=True: freeze again
        model.encoder.requires_grad_(False)
    try:
        processor = MAEImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        processor = MAEImageProcessor.for_config(config)
    return model, processor, note


def save_model_into(folder: Path, model, processor) -> None:
    """`save_pretrained` model + processor into `folder` without touching its other files: staged beside, then
    one rename per file (each file is either complete-new or complete-old)."""
    staging = folder / ".model_staging"
    save_pretrained_atomic(model, processor, staging)
    for item in staging.iterdir():
        os.replace(item, folder / item.name)
    staging.rmdir()


class ProbeHead(nn.Module):
    """BatchNorm (no affine) + Linear on frozen features; holds the classifier's own modules (shared)."""

    def __init__(self, fc_norm: nn.Module, head: nn.Linear):
        super().__init__()
        self.fc_norm, self.head = fc_norm, head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(features))


def new_probe_head(dim: int, num_labels: int) -> ProbeHead:
    """A stand-alone official probe head (raw-pixel baseline): BatchNorm1d(affine=False, eps=1e-6) + Linear."""
    head = nn.Linear(dim, num_labels)
    nn.init.trunc_normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return ProbeHead(nn.BatchNorm1d(dim, affine=False, eps=1e-6), head)


@torch.no_grad()
def fold_batchnorm(fc_norm: nn.BatchNorm1d, head: nn.Linear) -> nn.Linear:
    """One Linear equal to `head(fc_norm(x))` with `fc_norm` in eval mode: W' = W / sqrt(var + eps) (per input),
    b' = b - W' mean (with affine BatchNorm, its scale and shift are folded too)."""
    scale = (fc_norm.running_var + fc_norm.eps).rsqrt()
    shift = -fc_norm.running_mean * scale
    if fc_norm.affine:
        scale, shift = scale * fc_norm.weight, shift * fc_norm.weight + fc_norm.bias
    folded = nn.Linear(head.in_features, head.out_features, device=head.weight.device, dtype=head.weight.dtype)
    folded.weight.copy_(head.weight * scale)
    folded.bias.copy_(head.bias + head.weight @ shift)
    return folded


@contextlib.contextmanager
def _cpu_threads_for(device: torch.device, work: float):
    """One CPU thread for tiny head problems: thread hand-offs cost more than the math (8x slower with 2
    threads on a shared 2-core machine, measured at 256 x 784 -> 10)."""
    previous = torch.get_num_threads()
    if device.type == "cpu" and work < 5e7:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _head_lr_schedule(epochs: int, steps_per_epoch: int, warmup_epochs: float):
    total = epochs * steps_per_epoch
    return total, min(total, round(warmup_epochs * steps_per_epoch))


def train_probe_head(probe: ProbeHead, features: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                     batch_size: int, lr: float, warmup_epochs: float = 10, min_lr: float = 0.0,
                     weight_decay: float = 0.0, seed: int = 0, eval_features: torch.Tensor | None = None,
                     eval_labels: torch.Tensor | None = None, eval_every: int = 0, log=None,
                     disable_progress: bool = False) -> list[dict]:
    """Train `probe` on cached features with LARS and a per-step warmup + cosine schedule; in place.

    Batches are reshuffled every epoch with a generator seeded by `seed` (identical on every process);
    the last incomplete batch is dropped (as the official loader), unless there is only one. Returns one
    record per epoch (mean loss, lr, and held-out top-1 every `eval_every` epochs and at the end).
    """
    device = next(probe.parameters()).device
    features, labels = features.to(device), labels.to(device)
    count = len(features)
    batch = min(batch_size, count)
    steps_per_epoch = count // batch
    total, warmup = _head_lr_schedule(epochs, steps_per_epoch, warmup_epochs)
    optimizer = LARS(probe.head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    records, step = [], 0
    with _cpu_threads_for(device, batch * features.shape[1] * probe.head.out_features):
        for epoch in tqdm(range(epochs), desc="probe head", disable=disable_progress, leave=False):
            probe.train()
            order = torch.randperm(count, generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            for i in range(steps_per_epoch):
                index = order[i * batch:(i + 1) * batch]
                set_lr(optimizer, lr_at_step(step, total, warmup, lr, min_lr))
                loss = F.cross_entropy(probe(features[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
            record = {"epoch": epoch + 1, "step": step, "loss": (loss_sum / max(steps_per_epoch, 1)).item(),
                      "lr": optimizer.param_groups[0]["lr"]}
            if eval_features is not None and eval_every and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                record["eval_top1"] = evaluate_probe(probe, eval_features, eval_labels)["top1"]
            records.append(record)
            if log is not None:
                log(record)
    probe.eval()
    return records


@torch.no_grad()
def probe_logits(probe: ProbeHead, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of `probe` in eval mode (BatchNorm with its running statistics) on cached features, on CPU."""
    modes = [(module, module.training) for module in probe.modules()]  # the modules may be shared: restore each
    probe.eval()
    device = next(probe.parameters()).device
    logits = torch.cat([probe(features[i:i + batch_size].to(device)).float().cpu()
                        for i in range(0, len(features), batch_size)])
    for module, mode in modes:
        module.training = mode
    return logits


def evaluate_probe(probe: ProbeHead, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return topk_accuracy(probe_logits(probe, features), labels)


# --------------------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------------------


def _weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _feature_cache_key(args, model, processor, info, num_train: int, num_eval: int) -> dict:
    return {"weights": _weights_digest(model.encoder), "pooling": args.pooling, "raw_pixels": args.raw_pixels,
            "processor": processor.to_dict(), "data": info.source, "num_train": num_train, "num_eval": num_eval,
            "max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
            "seed": args.seed, "train_split": args.train_split, "eval_split": args.eval_split}


# --------------------------------------------------------------------------------------------------------
# Linear probe program
# --------------------------------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser, pooling_default: str,
                        raw_pixels: bool = True) -> argparse._ArgumentGroup:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL,
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


def add_common_run_arguments(parser: argparse.ArgumentParser, output_dir: str,
                             mixed_precision: str = "no") -> argparse._ArgumentGroup:
    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", default=output_dir)
    run.add_argument("--max_train_samples", type=int, default=None, help="random subset of the training split")
    run.add_argument("--max_eval_samples", type=int, default=None, help="random subset of the held-out split")
    run.add_argument("--eval_batch_size", type=int, default=256, help="images per device for feature extraction")
    run.add_argument("--num_workers", type=int, default=None, help="DataLoader workers per process")
    run.add_argument("--mixed_precision", choices=["auto", "no", "bf16", "fp16"], default=mixed_precision,
                     help=f"autocast (default {mixed_precision}; auto: bf16 where the hardware computes it fast, "
                          "e.g. recent CPUs and Ampere+ GPUs)")
    run.add_argument("--seed", type=int, default=0)
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    model = add_model_arguments(parser, "cls")
    model.add_argument(
        "--reinit_head", action="store_true",
        help="when --model is a saved linear probe: start a new head instead of continuing from its head")
    recipe = parser.add_argument_group("recipe (official linear probe: LARS, blr 0.1, batch 16384, 90 epochs, "
                                       "10 warmup, wd 0)")
    recipe.add_argument("--augment", action="store_true",
                        help="official protocol: RandomResizedCrop + flip every epoch through the frozen encoder "
                             "(default: features extracted once with the eval transform and cached)")
    recipe.add_argument("--epochs", type=int, default=None, help="head training epochs (default 90)")
    recipe.add_argument("--per_device_batch_size", type=int, default=None,
                        help="images per device per step (embedded default 256, else 512)")
    recipe.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="effective batch = per_device_batch_size x processes x this (official 16384); in the "
                             "fast mode the head takes one step on an effective batch of cached features")
    recipe.add_argument("--blr", type=float, default=None,
                        help="base lr: lr = blr x effective_batch / 256 (official 0.1; embedded default 10: "
                             "4,000 images give LARS ~300x less lr x steps than ImageNet's 1.28M)")
    recipe.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    recipe.add_argument("--min_lr", type=float, default=0.0, help="cosine floor")
    recipe.add_argument("--warmup_epochs", type=float, default=None, help="linear warmup epochs (default 10)")
    recipe.add_argument("--weight_decay", type=float, default=0.0)
    recipe.add_argument("--crop_min_scale", type=float, default=0.08,
                        help="--augment: RandomResizedCrop scale lower bound (official 0.08)")
    recipe.add_argument("--no_hflip", action="store_true", help="--augment: no horizontal flip")
    run = add_common_run_arguments(parser, "outputs/probe")
    run.add_argument("--cache_features", action="store_true",
                     help="also keep the extracted features in <output_dir>/features.pt and reuse them when "
                          "the encoder, data and preprocessing match")
    run.add_argument("--eval_every", type=int, default=10, help="log held-out top-1 every N epochs (0: end only)")
    add_push_arguments(run, "the probe (model + card)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_push_arguments(args)
    if args.push_to_hub and args.raw_pixels:
        raise SystemExit("--raw_pixels saves no model: nothing to push")
    if args.raw_pixels and args.random_init:
        raise SystemExit("--raw_pixels and --random_init are two different baselines: give one")
    if args.gradient_accumulation_steps < 1:
        raise SystemExit("--gradient_accumulation_steps must be >= 1")
    return apply_defaults(args, EMBEDDED_DEFAULTS, PAPER_DEFAULTS)


def prepare_data(args):
    """(train, eval, info, num_labels, id2label, label2id) from the data flags, checked and limited."""
    train_data, eval_data, info = load_datasets_from_args(args)
    num_labels, id2label, label2id = labelled_splits(train_data, eval_data, info, args)
    train_data = limit_samples(train_data, args.max_train_samples, args.seed)
    eval_data = limit_samples(eval_data, args.max_eval_samples, args.seed)
    return train_data, eval_data, info, num_labels, id2label, label2id


def extract_split_features(accelerator, encoder, dataset, processor, args, desc: str):
    loader = accelerator.prepare(eval_dataloader(dataset, processor, args.eval_batch_size, dataloader_workers(args),
                                                 strict=args.strict_images))
    return extract_features(accelerator, encoder, loader, args.pooling, desc=desc, raw_pixels=args.raw_pixels)


def _dataset_name(args):
    return args.dataset_name or args.train_dir or (args.data_files[0] if args.data_files and
                                                   len(args.data_files) == 1 else args.data_files)


def main(args: argparse.Namespace) -> dict:
    """Run the linear probe; returns the results dict (also in `<output_dir>/results.json`)."""

    wall_start = time.time()
    out_dir = Path(args.output_dir)
    accelerator, run_log = start_run(args, out_dir, fresh_log=True)

    read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, info, num_labels, id2label, label2id = prepare_data(args)
    if args.augment and info.streaming:
        raise SystemExit("--augment needs epochs over a map-style dataset: drop --streaming")
    model, processor, note = load_classifier(
        args.model, classifier_head="linear_probe", num_labels=num_labels, id2label=id2label, label2id=label2id,
        pooling=args.pooling, random_init=args.random_init, reinit_head=args.reinit_head)
    model.to(accelerator.device).eval()
    config = model.config
    encoder = model.encoder
    if args.raw_pixels:
        height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
        probe = new_probe_head(config.num_channels * height * width, num_labels).to(accelerator.device)
    else:
        probe = ProbeHead(model.fc_norm, model.head)

    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    features_from = "raw pixels" if args.raw_pixels else note
    banner = {"event": "start", "mode": "augment" if args.augment else "cached features", "features": features_from,
              "pooling": None if args.raw_pixels else args.pooling, "dataset": info.source,
              "num_train": info.num_train if not args.max_train_samples else len(train_data),
              "num_eval": len(eval_data) if hasattr(eval_data, "__len__") else info.num_eval,
              "num_labels": num_labels, "processes": accelerator.num_processes,
              "effective_batch_size": effective_batch, "blr": args.blr, "lr": lr, "epochs": args.epochs,
              "warmup_epochs": args.warmup_epochs, "device": str(accelerator.device)}
    accelerator.print("hf_mae linear probe\n" + "\n".join(f"  {k:>22}: {v}" for k, v in banner.items()
                                                          if k != "event"))
    run_log.write(banner)

    # Features: the held-out split always once (the eval transform is deterministic); the training split
    # once too in the fast mode.
    timings, cache_path, cached = {}, out_dir / "features.pt", None
    start = time.perf_counter()
    if args.cache_features and not args.augment:
        key = _feature_cache_key(args, model, processor, info, len(train_data) if hasattr(train_data, "__len__")
                                 else -1, len(eval_data) if hasattr(eval_data, "__len__") else -1)
        if cache_path.exists():
            stored = torch.load(cache_path, weights_only=False)
            if stored.get("key") == key:
                cached = stored
                accelerator.print(f"features loaded from {cache_path}")
    if cached is not None:
        eval_features, eval_labels = cached["eval"]
        train_features, train_labels = cached["train"]
    else:
        eval_features, eval_labels = extract_split_features(accelerator, encoder, eval_data, processor, args,
                                                            "held-out features")
        train_features = train_labels = None
        if not args.augment:
            train_features, train_labels = extract_split_features(accelerator, encoder, train_data, processor,
                                                                  args, "training features")
            if args.cache_features and accelerator.is_main_process:
                torch.save({"key": key, "train": (train_features, train_labels),
                            "eval": (eval_features, eval_labels)}, cache_path)
    timings["features_s"] = round(time.perf_counter() - start, 2)

    def log_epoch(record):
        run_log.write(record, step=record["step"])
        if "eval_top1" in record:
            accelerator.print(f"epoch {record['epoch']}: loss {record['loss']:.4f}, held-out top-1 "
                              f"{record['eval_top1']:.2f}%")

    start = time.perf_counter()
    if not args.augment:
        batch = effective_batch  # one head step per effective batch of cached features
        history = train_probe_head(
            probe, train_features, train_labels, epochs=args.epochs, batch_size=batch, lr=lr,
            warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, weight_decay=args.weight_decay, seed=args.seed,
            eval_features=eval_features, eval_labels=eval_labels, eval_every=args.eval_every, log=log_epoch,
            disable_progress=not accelerator.is_local_main_process)
    else:
        history = train_probe_augmented(accelerator, args, model, probe, processor, train_data, lr,
                                        eval_features, eval_labels, log_epoch)
    timings["train_s"] = round(time.perf_counter() - start, 2)

    metrics = evaluate_probe(probe, eval_features, eval_labels)
    results = {
        "top1": metrics["top1"], "top5": metrics["top5"],
        "train_top1": (evaluate_probe(probe, train_features, train_labels)["top1"]
                       if train_features is not None else None),
        "model": args.model, "features": "raw_pixels" if args.raw_pixels else
        ("random_init" if args.random_init else "pretrained"), "pooling": None if args.raw_pixels else args.pooling,
        "mode": "augment" if args.augment else "cached_features", "feature_dim": int(eval_features.shape[1]),
        "num_labels": num_labels, "num_train": int(len(train_features)) if train_features is not None
        else len(train_data), "num_eval": int(len(eval_features)),
        "dataset": _dataset_name(args), "data_source": info.source, "eval_split": args.eval_split,
        "epochs": args.epochs, "effective_batch_size": effective_batch, "blr": args.blr, "lr": lr,
        "warmup_epochs": args.warmup_epochs, "weight_decay": args.weight_decay, "optimizer": "LARS",
        "optimizer_steps": history[-1]["step"] if history else 0, "seed": args.seed,
        **timings, "wall_time_s": round(time.time() - wall_start, 1), "args": vars(args),
    }
    if accelerator.is_main_process:
        if not args.raw_pixels:
            save_model_into(out_dir, model, processor)
        write_json_atomic(out_dir / "results.json", results)
        what = "raw pixels" if args.raw_pixels else f"{results['features']} {args.pooling} features"
        accelerator.print(f"linear probe on {what}: held-out top-1 {results['top1']:.2f}%, top-5 "
                          f"{results['top5']:.2f}% ({results['num_eval']} images); features "
                          f"{timings['features_s']:.1f} s, head {timings['train_s']:.1f} s\n  results: "
                          f"{out_dir / 'results.json'}" + ("" if args.raw_pixels else
                                                           f"\n  probe (AutoModelForImageClassification): {out_dir}"))
        if args.push_to_hub:
            from .hub import push_probe

            source = Path(args.model)
            checkpoint = source if (source / "training_args.json").is_file() else None
            push_probe(out_dir, args.hub_model_id, checkpoint=checkpoint, private=args.hub_private)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


def train_probe_augmented(accelerator, args, model, probe, processor, train_data, lr, eval_features,
                          eval_labels, log) -> list[dict]:
    """Official protocol: fresh RandomResizedCrop + flip every epoch through the frozen encoder; LARS on the
    head with the accumulated (effective) batch; lr set every optimizer step."""
    config = model.config
    transform = TrainTransform(config.image_size, scale=(args.crop_min_scale, 1.0), hflip=not args.no_hflip,
                               mean=processor.image_mean, std=processor.image_std, num_channels=config.num_channels)
    train_fn = make_transform_fn(transform, config.num_channels, strict=args.strict_images)
    workers = dataloader_workers(args)
    loader = train_dataloader(train_data, train_fn, args.per_device_batch_size, workers, args.seed)
    optimizer = LARS(probe.head.parameters(), lr=lr, weight_decay=args.weight_decay)
    probe, optimizer, loader = accelerator.prepare(probe, optimizer, loader)
    if len(loader) == 0:
        raise SystemExit(f"{len(train_data)} training images are fewer than one batch of "
                         f"{args.per_device_batch_size} x {accelerator.num_processes} processes")
    updates_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    total, warmup = _head_lr_schedule(args.epochs, updates_per_epoch, args.warmup_epochs)
    encoder = model.encoder.eval()
    unwrapped = accelerator.unwrap_model(probe)

    def batch_features(pixels):
        if args.raw_pixels:
            return pixels.flatten(1).float()
        with torch.no_grad(), accelerator.autocast():
            return pool_tokens(encoder(pixels).last_hidden_state, args.pooling).float()

    records, step, last_good = [], 0, None
    progress = tqdm(total=total, desc="probe (augment)", disable=not accelerator.is_local_main_process)
    for epoch in range(args.epochs):
        probe.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        loss_sum, micro = torch.zeros((), device=accelerator.device), 0
        for batch in loader:
            pixels, labels, weight = batch["pixel_values"], batch.get("labels"), 1.0
            if len(pixels) == 0:  # every image undecodable: a zero-weight step keeps processes in step
                if last_good is None:
                    continue
                (pixels, labels), weight = last_good, 0.0
            last_good = (pixels, labels)
            with accelerator.accumulate(probe):
                loss = F.cross_entropy(probe(batch_features(pixels)), labels)
                accelerator.backward(loss * weight if weight != 1.0 else loss)
                if accelerator.sync_gradients:
                    set_lr(optimizer, lr_at_step(step, total, warmup, lr, args.min_lr))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            micro += 1
            if accelerator.sync_gradients:
                step += 1
                progress.update(1)
        mean_loss = (accelerator.reduce(loss_sum, "sum") / max(micro * accelerator.num_processes, 1)).item()
        record = {"epoch": epoch + 1, "step": step, "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"]}
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            record["eval_top1"] = evaluate_probe(unwrapped, eval_features, eval_labels)["top1"]
        records.append(record)
        log(record)
    progress.close()
    unwrapped.eval()
    return records


# --------------------------------------------------------------------------------------------------------
# kNN program
# --------------------------------------------------------------------------------------------------------


def build_knn_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Weighted kNN (cosine similarity, k=20, temperature 0.07: the DINO / Wu et al. protocol) of "
                    "frozen features of any hf_mae checkpoint: training split -> held-out split.\n\n"
                    "    python scripts/knn_eval.py --model outputs/pretrain\n"
                    "    python scripts/knn_eval.py --model outputs/pretrain --raw_pixels\n"
                    "    accelerate launch scripts/knn_eval.py --model me/mae-vit-b-encoder --dataset_name "
                    "ILSVRC/imagenet-1k",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    add_model_arguments(parser, "cls")
    knn = parser.add_argument_group("kNN")
    knn.add_argument("--k", type=int, default=20, help="neighbours that vote (default 20)")
    knn.add_argument("--temperature", type=float, default=0.07, help="vote weight exp(similarity / T)")
    add_common_run_arguments(parser, "outputs/knn")
    return parser


def parse_knn_args(argv=None) -> argparse.Namespace:
    args = build_knn_parser().parse_args(argv)
    if args.raw_pixels and args.random_init:
        raise SystemExit("--raw_pixels and --random_init are two different baselines: give one")
    if args.k < 1 or args.temperature <= 0:
        raise SystemExit("--k must be >= 1 and --temperature > 0")
    return args


def knn_main(args: argparse.Namespace) -> dict:
    """Extract train/held-out features, run `hf_mae.knn.knn_accuracy`, print and write results.json."""

    wall_start = time.time()
    out_dir = Path(args.output_dir)
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision))
    set_seed(args.seed)
    read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, info, num_labels, id2label, label2id = prepare_data(args)
    model, processor, _ = load_classifier(args.model, classifier_head="linear_probe", num_labels=num_labels,
                                             id2label=id2label, label2id=label2id, pooling=args.pooling,
                                             random_init=args.random_init, reinit_head=True)
    encoder = model.encoder.to(accelerator.device).eval()
    start = time.perf_counter()
    train_f, train_y = extract_split_features(accelerator, encoder, train_data, processor, args, "training features")
    eval_f, eval_y = extract_split_features(accelerator, encoder, eval_data, processor, args, "held-out features")
    features_s = time.perf_counter() - start
    top1 = knn_accuracy(train_f, train_y, eval_f, eval_y, num_labels, k=args.k, temperature=args.temperature)
    features = "raw_pixels" if args.raw_pixels else ("random_init" if args.random_init else "pretrained")
    results = {"knn_top1": top1, "k": args.k, "temperature": args.temperature, "model": args.model,
               "features": features, "pooling": None if args.raw_pixels else args.pooling,
               "feature_dim": int(train_f.shape[1]), "num_labels": num_labels, "num_train": int(len(train_f)),
               "num_eval": int(len(eval_f)), "dataset": _dataset_name(args), "data_source": info.source,
               "eval_split": args.eval_split, "seed": args.seed, "features_s": round(features_s, 2),
               "wall_time_s": round(time.time() - wall_start, 1), "args": vars(args)}
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out_dir / "results.json", results)
        what = "raw pixels" if args.raw_pixels else (f"{'random-init ' if args.random_init else ''}{args.model}, "
                                                     f"{args.pooling} features")
        accelerator.print(f"kNN (k={args.k}, T={args.temperature}) on {what}: held-out top-1 {top1:.2f}% "
                          f"({len(eval_f)} images, {len(train_f)} neighbours)\n  results: {out_dir / 'results.json'}")
    accelerator.wait_for_everyone()
    return results


__all__ = ["ACCURACY_TOPK_PATH", "ProbeHead", "build_knn_parser", "build_parser", "evaluate_probe",
           "fold_batchnorm", "knn_main", "labelled_splits", "load_classifier", "load_topk_metric", "main",
           "new_probe_head", "parse_args", "parse_knn_args", "probe_logits", "read_mae_config",
           "reset_classifier_head", "topk_accuracy", "train_probe_head"]
