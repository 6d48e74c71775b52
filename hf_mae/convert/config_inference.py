"""The architecture read from tensor shapes."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..models.mae.configuration_mae import PRESETS, MAEConfig
from .names import ConversionError, _canonicalize, _unwrap


def _heads_for(width: int, decoder: bool = False) -> int:
    """Heads cannot be read from weights: the preset with this width, else width // 64 (made a divisor)."""
    width_field, heads_field = (("decoder_hidden_size", "decoder_num_attention_heads") if decoder
                                else ("hidden_size", "num_attention_heads"))
    for preset in PRESETS.values():
        if preset.get(width_field) == width:
            return preset[heads_field]
    heads = max(1, width // 64)
    while width % heads:
        heads -= 1
    return heads


def _grid_of(length: int, config_grid: tuple[int, int] | None = None) -> tuple[tuple[int, int], bool]:
    """Patch grid (rows, cols) of a position table with `length` rows, and whether it has a CLS row."""
    if config_grid is not None and length - 1 == config_grid[0] * config_grid[1]:
        return tuple(config_grid), True
    if config_grid is not None and length == config_grid[0] * config_grid[1]:
        return tuple(config_grid), False
    side = math.isqrt(max(length - 1, 0))
    if length > 1 and side * side == length - 1:
        return (side, side), True
    side = math.isqrt(length)
    if length > 0 and side * side == length:
        return (side, side), False
    raise ConversionError(f"{length} position embeddings do not form a square patch grid (with or without a "
                          f"CLS row); pass config= with the image_size")


def _block_count(names, stack: str) -> int:
    indices = [int(m.group(1)) for name in names if (m := re.match(rf"{stack}\.(\d+)\.", name))]
    return max(indices) + 1 if indices else 0


def _infer_fields(tensors: dict, known: Mapping = ()) -> tuple[dict, list[str]]:
    """Architecture fields read from official-named tensor shapes; `known` fields are not inferred."""
    notes = []
    weight = tensors.get("patch_embed.proj.weight")
    if weight is None:
        raise ConversionError("cannot infer the architecture: the checkpoint has no patch embedding "
                              "(patch_embed.proj.weight or its transformers name)")
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise ConversionError(
            f"patch embedding weight must be (width, channels, p, p), got {tuple(weight.shape)}")
    dim, channels, patch = weight.shape[0], weight.shape[1], weight.shape[2]
    fields = dict(hidden_size=dim, num_channels=channels, patch_size=patch,
                  num_hidden_layers=_block_count(tensors, "blocks"), num_attention_heads=_heads_for(dim),
                  qkv_bias="blocks.0.attn.qkv.bias" in tensors or "blocks.0.attn.qkv.weight" not in tensors)
    if "blocks.0.mlp.fc1.weight" in tensors:
        fields["intermediate_size"] = tensors["blocks.0.mlp.fc1.weight"].shape[0]
    if "num_attention_heads" not in known:
        notes.append(f"num_attention_heads={fields['num_attention_heads']} assumed from the width {dim} "
                     f"(heads are not stored in the weights); pass config= to set it")
    if "image_size" not in known:
        pos = tensors.get("pos_embed", tensors.get("decoder_pos_embed"))
        if pos is None:
            fields["image_size"] = 224
            notes.append("no position embeddings in the checkpoint: image_size=224 assumed")
        else:
            (rows, cols), _ = _grid_of(pos.shape[-2])
            fields["image_size"] = rows * patch if rows == cols else (rows * patch, cols * patch)
    decoder = tensors.get("decoder_embed.weight")
    decoder_dim = decoder.shape[0] if decoder is not None else (
        tensors["mask_token"].shape[-1] if "mask_token" in tensors else None)
    if decoder_dim is not None:
        fields.update(decoder_hidden_size=decoder_dim,
                      decoder_num_attention_heads=_heads_for(decoder_dim, decoder=True),
                      decoder_num_hidden_layers=_block_count(tensors, "decoder_blocks"))
        if "decoder_blocks.0.mlp.fc1.weight" in tensors:
            fields["decoder_intermediate_size"] = tensors["decoder_blocks.0.mlp.fc1.weight"].shape[0]
        if "decoder_num_attention_heads" not in known:
            notes.append(f"decoder_num_attention_heads={fields['decoder_num_attention_heads']} assumed from "
                         f"the decoder width {decoder_dim}; pass config= to set it")
    return fields, notes


def infer_config(state_dict: Mapping, overrides: Mapping | None = None) -> MAEConfig:
    """The `MAEConfig` a checkpoint of any supported layout was built with, read from tensor shapes (works on
    meta tensors). Heads (not stored in weights) come from the preset with the same width, else width // 64;
    `overrides` (config fields) win over everything inferred."""
    state, _, extras, _ = _unwrap(state_dict)
    overrides = dict(overrides or {})
    fields, _ = _infer_fields(_canonicalize(state).tensors, overrides)
    return MAEConfig(**{**fields, **extras, **overrides})
