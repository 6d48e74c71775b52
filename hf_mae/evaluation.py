"""What the evaluation programs share: checkpoint -> classifier, labelled splits, frozen features, kNN, top-k.

Used by the linear probe, the kNN program, fine-tuning and the pretraining monitor. Held-out batches keep a
slot for every example (an undecodable image is a zero image marked invalid), so batches have the same shape
on every process, `gather_for_metrics` lines them up, and the invalid slots are dropped after gathering;
a split with no decodable image is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .configuration_mae import MAEConfig
from .data import EvalTransform, apply_transform, make_transform_fn
from .data_args import dataloader_workers, load_datasets_from_args
from .image_processing_mae import MAEImageProcessor
from .loop import NonFiniteGuard
from .modeling_mae import MAEForImageClassification
from .optim import LARS, lr_at_step, scaled_lr, set_lr
from .runner import positive_int

ACCURACY_TOPK_PATH = str(Path(__file__).resolve().parent / "metrics" / "accuracy_topk.py")
# The linear probe on cached features (the probe program's defaults and the pretraining monitor's): sized for
# the embedded default data, or the official recipe for any other dataset. On 4,000 digits LARS needs a far
# larger base lr than on ImageNet (BENCHMARKS.md).
PROBE_EMBEDDED_DEFAULTS = {"epochs": 90, "blr": 10.0, "warmup_epochs": 10, "per_device_batch_size": 256}
PROBE_PAPER_DEFAULTS = {"epochs": 90, "blr": 0.1, "warmup_epochs": 10, "per_device_batch_size": 512}
DEFAULT_MODEL = "outputs/pretrain"  # where scripts/pretrain.py writes by default
MAE_ARCHITECTURES = ("MAEModel", "MAEForPreTraining", "MAEForImageClassification")


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


def labelled_splits(train_data, eval_data, info, args):
    """Check that both splits carry labels; returns (num_labels, id2label, label2id). Clear errors else."""
    if eval_data is None:
        raise ValueError(f"{info.source} has no held-out split {args.eval_split!r}: evaluation needs one. "
                         f"Pass --eval_split NAME (or --eval_dir for an imagefolder).")
    for name, split in (("training", train_data), ("held-out", eval_data)):
        if "label" not in list(split.column_names or []):
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


def prepare_data(args):
    """(train, eval, info, num_labels, id2label, label2id) from the data flags, checked and limited."""
    train_data, eval_data, info = load_datasets_from_args(args)
    num_labels, id2label, label2id = labelled_splits(train_data, eval_data, info, args)
    train_data = limit_samples(train_data, args.max_train_samples, args.seed)
    eval_data = limit_samples(eval_data, args.max_eval_samples, args.seed)
    return train_data, eval_data, info, num_labels, id2label, label2id


# --------------------------------------------------------------------------------------------------------
# Checkpoint -> classifier
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' per-key load report (the programs print their own one-line summary)."""
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
        with quiet_transformers():
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
def init_head(head: nn.Linear, std: float) -> nn.Linear:
    """The official classifier-head init: truncated normal weights (std 0.01 probe, 2e-5 fine-tune), zero bias.
    (Explicit rather than the model's `_init_weights`, which skips tensors a checkpoint load marked done.)"""
    nn.init.trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
    return head


@torch.no_grad()
def reset_classifier_head(model: MAEForImageClassification) -> None:
    """Fresh `fc_norm` and `head` with the official inits."""
    norm = model.fc_norm
    if isinstance(norm, nn.BatchNorm1d):
        norm.reset_running_stats()
    else:
        nn.init.ones_(norm.weight)
        nn.init.zeros_(norm.bias)
    init_head(model.head, model.head.init_std)


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
        with quiet_transformers():
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
    try:
        processor = MAEImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        processor = MAEImageProcessor.for_config(config)
    try:
        processor.check_matches(config)
    except ValueError as error:
        raise ValueError(f"{name_or_path}: {error}") from None
    return model, processor, note


# --------------------------------------------------------------------------------------------------------
# Frozen features
# --------------------------------------------------------------------------------------------------------


def pool_tokens(last_hidden_state: torch.Tensor, pooling: str) -> torch.Tensor:
    """"cls": the CLS token after the final norm (official linear probe); "mean": mean of patch tokens."""
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        return last_hidden_state[:, 1:].mean(dim=1)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


def collate_slots(batch_list: list[dict | None], shape: tuple[int, ...]) -> dict:
    """Held-out collate: one row per example, an undecodable image as zeros with `valid` False."""
    valid = [b is not None and b.get("pixel_values") is not None for b in batch_list]
    out = {"pixel_values": torch.stack([b["pixel_values"] if ok else torch.zeros(shape)
                                        for b, ok in zip(batch_list, valid)]),
           "valid": torch.tensor(valid)}
    if any(b is not None and "labels" in b for b in batch_list):
        out["labels"] = torch.as_tensor([int(b["labels"]) if b is not None and "labels" in b else -1
                                         for b in batch_list], dtype=torch.long)
    return out


def eval_dataloader(dataset, processor, batch_size: int, num_workers: int = 0, strict: bool = False):
    """A deterministic DataLoader of `dataset` through the processor's eval transform (`collate_slots`)."""
    transform = EvalTransform(processor)
    shape = tuple(transform(Image.new("RGB", (32, 32))).shape)  # what every example becomes
    fn = make_transform_fn(transform, transform.num_channels, strict=strict)
    loader = DataLoader(apply_transform(dataset, fn), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=functools.partial(collate_slots, shape=shape))
    loader.transform_fn = fn  # its `num_bad` counts the skipped images
    return loader


class Features(NamedTuple):
    features: torch.Tensor  # (N, D) of the decodable examples
    labels: torch.Tensor  # (N,)
    skipped: int  # undecodable examples left out


def valid_rows(accelerator, batch, *values):
    """`values` (per-example tensors of `batch`) gathered over processes, undecodable examples dropped."""
    gathered = accelerator.gather_for_metrics((batch["valid"], *values))
    keep = gathered[0].bool()
    return int((~keep).sum()), [v[keep] for v in gathered[1:]]


@torch.no_grad()
def extract_pooled_features(accelerator, encoder, loader, poolings=("cls",), desc: str = "features",
                            raw_pixels: bool = False) -> dict[str, Features]:
    """Per pooling ("cls", "mean"; "raw_pixels" with `raw_pixels=True`), the features (N, D), labels (N,) and
    skipped count of a prepared `eval_dataloader`, on every process, from one pass of the encoder.

    `encoder` is an `MAEModel` (no masking); raw pixels are the baseline every learned representation must
    beat. A split with no decodable image is a ValueError.
    """
    was_training = encoder.training
    encoder.eval()
    names = ("raw_pixels",) if raw_pixels else tuple(poolings)
    features, labels, skipped = {name: [] for name in names}, [], 0
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        pixels = batch["pixel_values"]
        if raw_pixels:
            pooled = [pixels.flatten(1).float()]
        else:
            with accelerator.autocast():
                tokens = encoder(pixels).last_hidden_state
            pooled = [pool_tokens(tokens, name).float() for name in names]
        bad, gathered = valid_rows(accelerator, batch, *pooled, batch["labels"])
        skipped += bad
        for name, values in zip(names, gathered[:-1]):
            features[name].append(values.cpu())
        labels.append(gathered[-1].cpu())
    encoder.train(was_training)
    if not labels or sum(len(y) for y in labels) == 0:
        raise ValueError(f"{desc}: no decodable image in this split ({skipped} skipped): nothing to evaluate.")
    all_labels = torch.cat(labels)
    return {name: Features(torch.cat(values), all_labels, skipped) for name, values in features.items()}


def extract_features(accelerator, encoder, loader, pooling: str = "cls", desc: str = "features",
                     raw_pixels: bool = False) -> Features:
    """`extract_pooled_features` for one pooling (or the raw pixels)."""
    found = extract_pooled_features(accelerator, encoder, loader, (pooling,), desc=desc, raw_pixels=raw_pixels)
    return next(iter(found.values()))


def extract_split_features(accelerator, encoder, dataset, processor, args, desc: str) -> Features:
    """`extract_features` of a whole split with the program's flags (batch size, workers, pooling, baseline)."""
    loader = accelerator.prepare(eval_dataloader(dataset, processor, args.eval_batch_size, dataloader_workers(args),
                                                 strict=args.strict_images))
    return extract_features(accelerator, encoder, loader, args.pooling, desc=desc, raw_pixels=args.raw_pixels)


# --------------------------------------------------------------------------------------------------------
# The linear probe's head on cached features
# --------------------------------------------------------------------------------------------------------


class ProbeHead(nn.Module):
    """BatchNorm (no affine) + Linear on frozen features; holds the classifier's own modules (shared)."""

    def __init__(self, fc_norm: nn.Module, head: nn.Linear):
        super().__init__()
        self.fc_norm, self.head = fc_norm, head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(features))


def new_probe_head(dim: int, num_labels: int) -> ProbeHead:
    """A stand-alone official probe head (raw-pixel baseline): BatchNorm1d(affine=False, eps=1e-6) + Linear."""
    return ProbeHead(nn.BatchNorm1d(dim, affine=False, eps=1e-6), init_head(nn.Linear(dim, num_labels), 0.01))


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
                     disable_progress: bool = False, max_nonfinite_steps: int = 5) -> list[dict]:
    """Train `probe` on cached features with LARS and a per-step warmup + cosine schedule; in place.

    Batches are reshuffled every epoch with a generator seeded by `seed` (identical on every process);
    the last incomplete batch is dropped (as the official loader), unless there is only one. Returns one
    record per epoch (mean loss, lr, and held-out top-1 every `eval_every` epochs and at the end). A step
    with a non-finite loss is skipped and counted (`NonFiniteGuard`, as in the training loop).
    """
    if not len(features):
        raise ValueError("the probe has no training features (no decodable training image)")
    device = next(probe.parameters()).device
    features, labels = features.to(device), labels.to(device)
    count = len(features)
    batch = min(batch_size, count)
    steps_per_epoch = count // batch
    total, warmup = _head_lr_schedule(epochs, steps_per_epoch, warmup_epochs)
    optimizer = LARS(probe.head.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    records, step, nonfinite = [], 0, NonFiniteGuard(max_nonfinite_steps)
    with _cpu_threads_for(device, batch * features.shape[1] * probe.head.out_features):
        for epoch in tqdm(range(epochs), desc="probe head", disable=disable_progress, leave=False):
            probe.train()
            order = torch.randperm(count, generator=generator).to(device)
            loss_sum, finite_steps = torch.zeros((), device=device), 0
            for i in range(steps_per_epoch):
                index = order[i * batch:(i + 1) * batch]
                set_lr(optimizer, lr_at_step(step, total, warmup, lr, min_lr))
                loss = F.cross_entropy(probe(features[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                finite = bool(torch.isfinite(loss))  # a tiny head on cached features: the sync costs nothing
                nonfinite.record(not finite)
                if finite:
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach()
                    finite_steps += 1
                elif nonfinite.tripped:
                    raise nonfinite.error("The cached-features probe writes no checkpoint")
                step += 1
            record = {"epoch": epoch + 1, "step": step, "loss": (loss_sum / finite_steps).item() if finite_steps
                      else None, "lr": optimizer.param_groups[0]["lr"], "nonfinite_steps": nonfinite.total}
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


def fit_and_score_probe(train: Features, held_out: Features, num_labels: int, settings: dict, seed: int) -> float:
    """Held-out top-1 of a fresh probe head (seeded by `seed`) trained on cached features with `settings`
    (a PROBE_*_DEFAULTS dict): the pretraining monitor's probe, also the recipe sweep's."""
    with torch.random.fork_rng(devices=[]):  # the head's init draws from a seed of its own
        torch.manual_seed(seed)
        head = new_probe_head(train.features.shape[1], num_labels)
    batch = min(settings["per_device_batch_size"], len(train.features))
    train_probe_head(head, train.features, train.labels, epochs=settings["epochs"], batch_size=batch,
                     lr=scaled_lr(settings["blr"], batch), warmup_epochs=settings["warmup_epochs"], seed=seed,
                     disable_progress=True)
    return evaluate_probe(head, held_out.features, held_out.labels)["top1"]


# --------------------------------------------------------------------------------------------------------
# kNN and top-k
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, query_features: torch.Tensor,
                num_classes: int, k: int = 20, temperature: float = 0.07, chunk_size: int = 1024) -> torch.Tensor:
    """Class scores (Q, num_classes) for each query from its k most cosine-similar training features.

    Each neighbour votes for its label with weight exp(similarity / temperature) (the weighted kNN of
    Wu et al. 2018, as used by DINO).
    """
    if len(train_features) == 0:
        raise ValueError("kNN needs at least one training feature")
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, len(train))
    scores = []
    for start in range(0, len(query_features), chunk_size):
        query = F.normalize(query_features[start:start + chunk_size].float().to(train.device), dim=1)
        similarity, index = (query @ train.T).topk(k, dim=1)  # (q, k)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(len(query), num_classes, device=train.device)
        votes.scatter_add_(1, labels[index], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(train_features, train_labels, query_features, query_labels, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent of `knn_predict` on labelled queries."""
    scores = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature)
    return 100.0 * (scores.argmax(dim=1).cpu() == query_labels.long().cpu()).float().mean().item()


def load_topk_metric():
    """The shipped top-1/top-5 `evaluate` metric (loaded by path: no Hub access)."""
    import evaluate

    return evaluate.load(ACCURACY_TOPK_PATH, keep_in_memory=True)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"top1", "top5"} in percent, through the shipped `evaluate` metric. Inputs are already gathered."""
    metric = load_topk_metric()
    metric.add_batch(predictions=logits.detach().float().cpu().numpy(), references=labels.cpu().numpy())
    return metric.compute()


@torch.no_grad()
def evaluate_classifier(accelerator, model, loader) -> dict[str, float]:
    """Top-1 / top-5 (percent, the shipped `evaluate` metric) and mean cross-entropy of a classifier over a
    prepared `eval_dataloader`, gathered across processes; undecodable examples are left out."""
    was_training = model.training
    model.eval()
    metric = load_topk_metric()
    loss_sum, count, skipped = 0.0, 0, 0
    for batch in loader:
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
        bad, (logits, labels) = valid_rows(accelerator, batch, logits, batch["labels"])
        skipped += bad
        if len(labels):
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            count += len(labels)
            metric.add_batch(predictions=logits.cpu().numpy(), references=labels.cpu().numpy())
    model.train(was_training)
    if count == 0:
        raise ValueError(f"no decodable image in the held-out split ({skipped} skipped): nothing to evaluate.")
    return {**metric.compute(), "loss": loss_sum / count, "skipped_images": skipped}


__all__ = ["ACCURACY_TOPK_PATH", "DEFAULT_MODEL", "Features", "PROBE_EMBEDDED_DEFAULTS", "PROBE_PAPER_DEFAULTS",
           "ProbeHead", "add_model_arguments", "add_sample_arguments", "collate_slots", "dataset_name",
           "eval_dataloader", "evaluate_classifier", "evaluate_probe", "extract_features",
           "extract_pooled_features", "extract_split_features", "fit_and_score_probe", "init_head",
           "knn_accuracy", "knn_predict", "labelled_splits", "limit_samples", "load_classifier",
           "load_topk_metric", "new_probe_head", "pool_tokens", "prepare_data", "probe_logits",
           "read_mae_config", "reset_classifier_head", "topk_accuracy", "train_probe_head", "valid_rows"]
