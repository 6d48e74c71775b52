"""Semantic segmentation on an MAE encoder: checkpoint -> UperNet segmenter (transformers'
`UperNetForSemanticSegmentation` on `MAEBackbone`), its layer-decay param groups, and the scores (mean IoU,
per-class IoU, pixel accuracy over a held-out split; the shipped `evaluate` metric `metrics/mean_iou.py` does the
maths), plus a picture of image | ground truth | prediction. Scores, picture and the saved model's users (the
pipeline) all segment through the model's own forward: whole-image or sliding-window, as its config says."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.mae.backbone_mae import MAEBackbone
from ..models.mae.image_processing_mae import MAEImageProcessor
from ..models.mae.segmentation_mae import MAEForSemanticSegmentation, MAEUperNetConfig
from ..training.optim import param_groups_layer_decay, param_groups_weight_decay
from .classifier import quiet_transformers, read_mae_config
from .metrics.mean_iou import scores_from_confusion

MEAN_IOU_PATH = str(Path(__file__).resolve().parent / "metrics" / "mean_iou.py")


def load_mean_iou_metric():
    """The shipped mean-IoU `evaluate` metric (loaded by path: no Hub access)."""
    import evaluate

    return evaluate.load(MEAN_IOU_PATH, keep_in_memory=True)


def batch_confusion(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int,
                    ignore_index: int = 255) -> torch.Tensor:
    """(num_labels, num_labels) pixel counts on the device (rows: true class), ignored pixels left out."""
    keep = labels != ignore_index
    index = labels[keep] * num_labels + predictions[keep]
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


@torch.no_grad()
def evaluate_segmentation(accelerator, model, loader, num_labels: int, *, ignore_index: int = 255) -> dict:
    """mean_iou / pixel_accuracy / per_class_iou (percent) and the mean loss over this process's share of the
    held-out rows (`segmentation_eval_loader`), summed over processes; the model segments as its config's
    `inference_mode` says (whole image or sliding window)."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long, device=accelerator.device)
    loss_sum = torch.zeros(2, device=accelerator.device)
    for batch in loader:
        if len(batch["pixel_values"]) == 0:
            continue
        pixels, labels = batch["pixel_values"].to(accelerator.device), batch["labels"].to(accelerator.device)
        with accelerator.autocast():
            logits = model(pixel_values=pixels).logits.float()
        if (labels != ignore_index).any():
            loss_sum += torch.stack([F.cross_entropy(logits, labels, ignore_index=ignore_index),
                                     torch.ones((), device=logits.device)])
        confusion += batch_confusion(logits.argmax(1), labels, num_labels, ignore_index)
    confusion = accelerator.reduce(confusion, "sum")
    loss_sum = accelerator.reduce(loss_sum, "sum")
    model.train(was_training)
    scores = scores_from_confusion(confusion.cpu().numpy().astype(np.int64))
    return {**scores, "loss": (loss_sum[0] / loss_sum[1]).item() if loss_sum[1] > 0 else None}


# --------------------------------------------------------------------------------------------------------
# Checkpoint -> segmenter
# --------------------------------------------------------------------------------------------------------


def default_out_indices(depth: int) -> list[int]:
    """The neck's four encoder blocks (1-based): a third, half, two thirds and all of the depth (4/6/8/12 for
    ViT-B, mmsegmentation's out_indices 3/5/7/11)."""
    indices = sorted({max(1, round(depth / 3)), max(1, depth // 2), max(1, round(2 * depth / 3)), depth})
    if len(indices) < 4:
        raise ValueError(f"an encoder of {depth} blocks cannot feed four distinct stages: pass --out_indices")
    return indices


def build_segmenter(name_or_path: str, class_names: list[str], *, random_init: bool = False,
                    out_indices: list[int] | None = None, head_hidden_size: int = 512, auxiliary_head: bool = True,
                    drop_path_rate: float = 0.1, attn_implementation: str | None = None,
                    inference_mode: str = "whole", inference_window: int | None = None,
                    inference_stride: int | None = None):
    """UperNet (auxiliary FCN head optional) on the 4x/2x/1x/0.5x pyramid of the MAE encoder in any hf_mae
    encoder, pretraining or classifier folder; `random_init` leaves the encoder untrained; `inference_*`: how it
    segments in eval mode (`MAEUperNetConfig`). Returns (model, note)."""
    mae_config = read_mae_config(name_or_path)
    out_indices = list(out_indices or default_out_indices(mae_config.num_hidden_layers))
    overrides = {"out_indices": out_indices, "add_fpn": True, "drop_path_rate": drop_path_rate}
    if random_init:
        backbone = None
        mae_config.update(overrides)
        mae_config.out_indices, mae_config.architectures = out_indices, ["MAEBackbone"]
        backbone_config = mae_config
    else:
        with quiet_transformers():
            backbone, info = MAEBackbone.from_pretrained(name_or_path, output_loading_info=True, **overrides)
        missing = sorted(k for k in info["missing_keys"] if k.startswith("encoder."))
        if missing:
            raise ValueError(f"{name_or_path!r} is not a complete MAE encoder: {len(missing)} encoder tensors are "
                             f"missing (e.g. {', '.join(missing[:3])})")
        backbone_config = backbone.config
        backbone_config.architectures = ["MAEBackbone"]
    if attn_implementation:
        backbone_config._attn_implementation = attn_implementation
    config = MAEUperNetConfig(backbone_config=backbone_config, num_labels=len(class_names),
                              hidden_size=head_hidden_size, auxiliary_channels=head_hidden_size,
                              use_auxiliary_head=auxiliary_head, id2label=dict(enumerate(class_names)),
                              label2id={name: i for i, name in enumerate(class_names)}, loss_ignore_index=255,
                              inference_mode=inference_mode, inference_window=inference_window,
                              inference_stride=inference_stride)
    model = MAEForSemanticSegmentation(config)
    if backbone is not None:
        model.backbone.load_state_dict(backbone.state_dict())
    blocks = ", ".join(map(str, out_indices))
    note = (f"random init of the encoder of {name_or_path}" if random_init else f"encoder of {name_or_path}")
    return model, note + f"; blocks {blocks} -> 4x/2x/1x/0.5x neck -> UperNet ({head_hidden_size} channels)"


def segmentation_processor(name_or_path: str, mae_config) -> MAEImageProcessor:
    """The checkpoint's processor (normalisation, channels) without resize or crop: what the image-segmentation
    pipeline feeds the model. Images keep their own scale, as in training (crops of images at their scale x
    0.5-2.0) and in the held-out evaluation; the model pads them to the patch size and slides its window over
    larger ones."""
    try:
        base = MAEImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        base = MAEImageProcessor.for_config(mae_config)
    return MAEImageProcessor(image_mean=base.image_mean, image_std=base.image_std, patch_size=mae_config.patch_size,
                             num_channels=getattr(base, "num_channels", mae_config.num_channels),
                             do_resize=False, do_center_crop=False, resample=base.resample)


def param_groups_segmenter(model, weight_decay: float, layer_decay: float) -> list[dict]:
    """mmsegmentation's layer-wise decay: encoder blocks scaled by `layer_decay ** (depth + 1 - layer)`, the
    neck and the heads at the full lr; no decay for 1-D tensors and token / position tables."""
    heads = nn.ModuleDict({name: module for name, module in (("decode_head", model.decode_head),
                                                             ("auxiliary_head", model.auxiliary_head)) if module})
    return (param_groups_layer_decay(model.backbone, weight_decay, layer_decay)
            + param_groups_weight_decay(heads, weight_decay))


# --------------------------------------------------------------------------------------------------------
# Picture: image | ground truth | prediction
# --------------------------------------------------------------------------------------------------------


def palette(num_labels: int) -> np.ndarray:
    """(num_labels + 1, 3) uint8 colours: class 0 black, the others well apart, the last row (ignored) white."""
    rng = random.Random(0)
    colours = [(0, 0, 0)] + [tuple(rng.randrange(60, 256) for _ in range(3)) for _ in range(num_labels - 1)]
    return np.asarray(colours + [(255, 255, 255)], dtype=np.uint8)


@torch.no_grad()
def write_examples_picture(model, dataset, fn, path, count: int = 4) -> None:
    """A PNG of `count` held-out rows, one per line: image | ground truth | prediction (the same colours), the
    prediction from the model's own inference (what was scored); small images enlarged up to 4x."""
    from PIL import Image

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    colours = palette(model.config.num_labels)
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in (fn.transform.mean, fn.transform.std))
    for index in range(min(count, len(dataset))):
        item = {k: v[0] for k, v in fn(dataset[[index]], [index]).items()}
        predicted = model(pixel_values=item["pixel_values"][None].to(device)).logits.argmax(1)[0].cpu().numpy()
        labels = item["labels"].numpy()
        image = (item["pixel_values"] * std + mean).mul(255).round().clamp(0, 255).byte()
        image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        truth = colours[np.where(labels == 255, len(colours) - 1, labels)]
        rows.append(np.concatenate([image.permute(1, 2, 0).numpy(), truth, colours[predicted]], axis=1))
    model.train(was_training)
    width = max(r.shape[1] for r in rows)
    picture = np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=128)
                              for r in rows])
    scale = max(1, min(4, 768 // width))
    Image.fromarray(picture).resize((picture.shape[1] * scale, picture.shape[0] * scale), Image.NEAREST).save(path)


__all__ = ["MEAN_IOU_PATH", "batch_confusion", "build_segmenter", "default_out_indices", "evaluate_segmentation",
           "load_mean_iou_metric", "param_groups_segmenter", "segmentation_processor", "write_examples_picture"]
