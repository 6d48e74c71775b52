"""Conversion between hf_mae and transformers' ViTMAE / ViT models.

transformers 5.x holds separate q/k/v projections and its own names (`vit.layers.i.attention.q_proj`); hf_mae
holds the official fused `blocks.i.attn.qkv`. Loading goes through transformers' `from_pretrained`, which
renames legacy (4.x / Hub) checkpoint keys at load time.
"""

import torch
from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

from .configuration_mae import MAEConfig
from .modeling_mae import MAEForPreTraining, MAEModel

# (hf_mae block name, transformers layer name) for everything but the fused qkv
_BLOCK_NAMES = [
    ("norm1", "layernorm_before"),
    ("attn.proj", "attention.o_proj"),
    ("norm2", "layernorm_after"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
]
_SHARED_FIELDS = ["image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "layer_norm_eps", "qkv_bias", "initializer_range"]
_DECODER_FIELDS = ["decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                   "decoder_intermediate_size", "mask_ratio", "norm_pix_loss"]


def _blocks_from_transformers(sd: dict, src: str, dst: str, depth: int, qkv_bias: bool) -> dict:
    out = {}
    for i in range(depth):
        s, d = f"{src}.{i}.", f"{dst}.{i}."
        for suffix in ["weight", "bias"] if qkv_bias else ["weight"]:
            out[f"{d}attn.qkv.{suffix}"] = torch.cat(
                [sd[f"{s}attention.{name}_proj.{suffix}"] for name in "qkv"], dim=0)
        for ours, theirs in _BLOCK_NAMES:
            for suffix in ("weight", "bias"):
                out[f"{d}{ours}.{suffix}"] = sd[f"{s}{theirs}.{suffix}"]
    return out


def _blocks_to_transformers(sd: dict, src: str, dst: str, depth: int, qkv_bias: bool) -> dict:
    out = {}
    for i in range(depth):
        s, d = f"{src}.{i}.", f"{dst}.{i}."
        for suffix in ["weight", "bias"] if qkv_bias else ["weight"]:
            for name, part in zip("qkv", sd[f"{s}attn.qkv.{suffix}"].chunk(3, dim=0)):
                out[f"{d}attention.{name}_proj.{suffix}"] = part.clone()
        for ours, theirs in _BLOCK_NAMES:
            for suffix in ("weight", "bias"):
                out[f"{d}{theirs}.{suffix}"] = sd[f"{s}{ours}.{suffix}"]
    return out


def _encoder_from_transformers(sd: dict, prefix: str, depth: int, qkv_bias: bool) -> dict:
    out = {
        "cls_token": sd[f"{prefix}embeddings.cls_token"],
        "pos_embed": sd[f"{prefix}embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd[f"{prefix}embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd[f"{prefix}embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd[f"{prefix}layernorm.weight"],
        "norm.bias": sd[f"{prefix}layernorm.bias"],
    }
    out.update(_blocks_from_transformers(sd, f"{prefix}layers", "blocks", depth, qkv_bias))
    return out


def _encoder_to_transformers(sd: dict, prefix: str, depth: int, qkv_bias: bool) -> dict:
    out = {
        f"{prefix}embeddings.cls_token": sd["cls_token"],
        f"{prefix}embeddings.position_embeddings": sd["pos_embed"],
        f"{prefix}embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        f"{prefix}embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        f"{prefix}layernorm.weight": sd["norm.weight"],
        f"{prefix}layernorm.bias": sd["norm.bias"],
    }
    out.update(_blocks_to_transformers(sd, "blocks", f"{prefix}layers", depth, qkv_bias))
    return out


def config_from_transformers(config: ViTMAEConfig) -> MAEConfig:
    if config.hidden_act != "gelu":
        raise ValueError(f"hf_mae blocks use exact GELU; got hidden_act={config.hidden_act!r}")
    return MAEConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS + _DECODER_FIELDS})


def config_to_transformers(config: MAEConfig) -> ViTMAEConfig:
    return ViTMAEConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS + _DECODER_FIELDS})


def from_transformers(model_or_path) -> MAEForPreTraining:
    """A transformers `ViTMAEForPreTraining` (instance, local folder or Hub id) as an hf_mae `MAEForPreTraining`
    with the same weights (and the checkpoint's own `norm_pix_loss`, `mask_ratio` and `layer_norm_eps`)."""
    source = model_or_path
    if not isinstance(source, ViTMAEForPreTraining):
        source = ViTMAEForPreTraining.from_pretrained(model_or_path)
    config = config_from_transformers(source.config)
    sd = source.state_dict()
    depth, bias = config.num_hidden_layers, config.qkv_bias
    ours = {f"encoder.{k}": v for k, v in _encoder_from_transformers(sd, "vit.", depth, bias).items()}
    ours.update({
        "mask_token": sd["decoder.mask_token"],
        "decoder_pos_embed": sd["decoder.decoder_pos_embed"],
        "decoder_embed.weight": sd["decoder.decoder_embed.weight"],
        "decoder_embed.bias": sd["decoder.decoder_embed.bias"],
        "decoder_norm.weight": sd["decoder.decoder_norm.weight"],
        "decoder_norm.bias": sd["decoder.decoder_norm.bias"],
        "decoder_pred.weight": sd["decoder.decoder_pred.weight"],
        "decoder_pred.bias": sd["decoder.decoder_pred.bias"],
    })
    ours.update(_blocks_from_transformers(sd, "decoder.decoder_layers", "decoder_blocks",
                                          config.decoder_num_hidden_layers, bias))
    model = MAEForPreTraining(config)
    model.load_state_dict(ours, strict=True)
    return model


def to_transformers(model: MAEForPreTraining | MAEModel):
    """`MAEForPreTraining` -> transformers `ViTMAEForPreTraining`; `MAEModel` -> `ViTModel(add_pooling_layer=False)`
    (stock transformers, no remote code). Same weights; outputs match with the same noise / no masking."""
    config, sd = model.config, model.state_dict()
    depth, bias = config.num_hidden_layers, config.qkv_bias
    if isinstance(model, MAEModel):
        vit_config = ViTConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS}, hidden_act="gelu")
        target = ViTModel(vit_config, add_pooling_layer=False)
        target.load_state_dict(_encoder_to_transformers(sd, "", depth, bias), strict=True)
        return target
    if not isinstance(model, MAEForPreTraining):
        raise TypeError(f"expected MAEForPreTraining or MAEModel, got {type(model).__name__}")
    enc = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    theirs = _encoder_to_transformers(enc, "vit.", depth, bias)
    for name in ["decoder_embed", "decoder_norm", "decoder_pred"]:
        for suffix in ("weight", "bias"):
            theirs[f"decoder.{name}.{suffix}"] = sd[f"{name}.{suffix}"]
    theirs["decoder.mask_token"] = sd["mask_token"]
    theirs["decoder.decoder_pos_embed"] = sd["decoder_pos_embed"]
    theirs.update(_blocks_to_transformers(sd, "decoder_blocks", "decoder.decoder_layers",
                                          config.decoder_num_hidden_layers, bias))
    target = ViTMAEForPreTraining(config_to_transformers(config))
    target.load_state_dict(theirs, strict=True)
    return target


__all__ = ["from_transformers", "to_transformers", "config_from_transformers", "config_to_transformers"]
