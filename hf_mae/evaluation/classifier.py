"""Checkpoint -> classifier: any hf_mae folder (or a Hub id) as MAEForImageClassification."""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ..models.loading import HEAD_PREFIXES, load_weights
from ..models.mae.classification_mae import MAEForImageClassification
from ..models.mae.configuration_mae import MAEConfig
from ..models.mae.image_processing_mae import MAEImageProcessor

DEFAULT_MODEL = "outputs/pretrain"  # where scripts/pretrain.py writes by default


MAE_ARCHITECTURES = ("MAEModel", "MAEForPreTraining", "MAEForImageClassification")


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
            model, info = load_weights(MAEForImageClassification, name_or_path, config=config,
                                       new_head=not keep_head)
        if not keep_head:
            reset_classifier_head(model)
        dropped = len([k for k in info["unexpected_keys"] if not k.startswith(HEAD_PREFIXES)])
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
