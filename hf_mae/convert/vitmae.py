"""transformers ViTMAE / ViT <-> hf_mae, and BatchNorm folding for the stock-ViT probe."""

from __future__ import annotations

import torch
from torch import nn
from transformers import ViTConfig, ViTMAEForPreTraining, ViTModel

from ..models.mae.modeling_mae import MAEForPreTraining, MAEModel
from .load import load_any
from .names import (
    _SHARED_FIELDS,
    _hf_mae_to_official,
    _official_to_transformers,
    config_to_transformers,
)


def from_transformers(model_or_path) -> MAEForPreTraining:
    """A transformers `ViTMAEForPreTraining` (instance, local folder or Hub id) as an hf_mae
    `MAEForPreTraining` with the same weights (and the checkpoint's own `norm_pix_loss`, `mask_ratio` and
    `layer_norm_eps`), in eval mode. A conversion through `load_any`, strict."""
    source = model_or_path
    if not isinstance(source, ViTMAEForPreTraining):
        source = ViTMAEForPreTraining.from_pretrained(model_or_path)
    model, _ = load_any(source)
    return model


def to_transformers(model: MAEForPreTraining | MAEModel):
    """`MAEForPreTraining` -> transformers `ViTMAEForPreTraining`; `MAEModel` ->
    `ViTModel(add_pooling_layer=False)` (stock transformers, no remote code). Same weights; outputs match with
    the same noise / no masking."""
    config = model.config
    if isinstance(model, MAEModel):
        vit_config = ViTConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS}, hidden_act="gelu")
        target = ViTModel(vit_config, add_pooling_layer=False)
        target.load_state_dict(_official_to_transformers(_hf_mae_to_official(model), ""), strict=True)
        return target
    if not isinstance(model, MAEForPreTraining):
        raise TypeError(f"expected MAEForPreTraining or MAEModel, got {type(model).__name__}")
    target = ViTMAEForPreTraining(config_to_transformers(config))
    target.load_state_dict(_official_to_transformers(_hf_mae_to_official(model), "vit."), strict=True)
    return target


def fold_batchnorm(fc_norm: nn.BatchNorm1d, head: nn.Linear) -> nn.Linear:
    """One Linear equal to `head(fc_norm(x))` with `fc_norm` in eval mode (its running statistics):
    W' = W / sqrt(var + eps) (per input), b' = b - W' mean; an affine BatchNorm's scale and shift are folded
    too. Computed in the head's dtype, on its device. Used by the linear probe's cached-feature evaluation, the
    stock-ViT Hub export and the ONNX / torch.export wrappers."""
    if not isinstance(fc_norm, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fc_norm must be a BatchNorm layer, got {type(fc_norm).__name__}")
    if fc_norm.running_mean is None or fc_norm.running_var is None:
        raise ValueError("fc_norm keeps no running statistics (track_running_stats=False): nothing to fold")
    with torch.no_grad():
        scale = (fc_norm.running_var + fc_norm.eps).rsqrt()
        shift = -fc_norm.running_mean * scale
        if fc_norm.affine:
            scale, shift = scale * fc_norm.weight, shift * fc_norm.weight + fc_norm.bias
        folded = nn.Linear(head.in_features, head.out_features, device=head.weight.device,
                           dtype=head.weight.dtype)
        folded.weight.copy_(head.weight * scale)
        bias = head.bias if head.bias is not None else torch.zeros_like(folded.bias)
        folded.bias.copy_(bias + head.weight @ shift)
    return folded
