"""Checkpoint conversion: official MAE, timm, transformers ViTMAE / ViT (5.x and legacy 4.x names) <-> hf_mae.

- `load_any(source, config=None, strict=True) -> (model, report)`: any supported checkpoint (file, folder,
  state dict or module) as an hf_mae `MAEForPreTraining` (decoder present) or `MAEModel` (encoder only), with
  a `ConversionReport` of mapped, unmapped, ignored and missing keys. Files are read with
  `torch.load(weights_only=True)` or safetensors only: pickled code is never run.
- `export_state_dict(model, layout)`: the weights under `official`, `timm` or `transformers` names.
- `infer_config(state_dict)`: the architecture read from tensor shapes.
- `from_transformers` / `to_transformers`: transformers model objects. transformers 5.x holds separate q/k/v
  projections and its own names (`vit.layers.i.attention.q_proj`); hf_mae holds the official fused
  `blocks.i.attn.qkv`. `from_transformers` goes through transformers' `from_pretrained`, which renames legacy
  (4.x / Hub) checkpoint keys at load time; `load_any` renames them itself. One name map
  (`_TRANSFORMERS_NAMES`) serves both directions.
- `fold_batchnorm(fc_norm, head)`: a linear probe's eval-mode BatchNorm folded into its Linear head.
- The command line (`build_parser` / `parse_args` / `main`): `python scripts/convert_checkpoint.py IN OUT`
  (or `python -m hf_mae.convert IN OUT`); see `--help`.
"""

import argparse
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

from .configuration_mae import PRESETS, MAEConfig
from .modeling_mae import MAEForImageClassification, MAEForPreTraining, MAEModel, sincos_pos_embed

# The transformers 5.x names, official name -> transformers name: the one map both directions use. Encoder
# entries are relative to the encoder (`vit.` in front inside ViTMAEForPreTraining, nothing in ViTModel);
# decoder entries are ViTMAEForPreTraining's. The fused `attn.qkv` is held as three projections
# (`attention.q_proj` / `k_proj` / `v_proj`).
_TRANSFORMERS_NAMES = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    **{f"decoder_{layer}.{suffix}": f"decoder.decoder_{layer}.{suffix}"
       for layer in ("embed", "norm", "pred") for suffix in ("weight", "bias")},
}
_TRANSFORMERS_STACKS = {"blocks": "layers", "decoder_blocks": "decoder.decoder_layers"}
_TRANSFORMERS_BLOCK_NAMES = {  # inside one block; attn.qkv is split into q/k/v projections
    "norm1": "layernorm_before",
    "attn.proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_SHARED_FIELDS = ["image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "layer_norm_eps", "qkv_bias",
                  "initializer_range"]
_DECODER_FIELDS = ["decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                   "decoder_intermediate_size", "mask_ratio", "norm_pix_loss"]
_OFFICIAL_BLOCK_KEY = re.compile(r"(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)")


def _official_to_transformers(tensors: Mapping, encoder_prefix: str) -> dict:
    """Official-named tensors (encoder and/or decoder) under transformers 5.x names; `encoder_prefix` is "vit."
    for ViTMAEForPreTraining and "" for ViTModel."""
    out = {}
    for name, value in tensors.items():
        prefix = encoder_prefix if _ENCODER_NAME.fullmatch(name) else ""
        if name in _TRANSFORMERS_NAMES:
            out[prefix + _TRANSFORMERS_NAMES[name]] = value
            continue
        match = _OFFICIAL_BLOCK_KEY.fullmatch(name)
        if match is None or (match.group(3) != "attn.qkv" and match.group(3) not in _TRANSFORMERS_BLOCK_NAMES):
            raise KeyError(f"{name!r} has no transformers name")
        stack, index, inner, suffix = match.groups()
        block = f"{prefix}{_TRANSFORMERS_STACKS[stack]}.{index}"
        if inner == "attn.qkv":
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{block}.attention.{part}_proj.{suffix}"] = chunk.clone()
        else:
            out[f"{block}.{_TRANSFORMERS_BLOCK_NAMES[inner]}.{suffix}"] = value
    return out


def config_from_transformers(config: ViTMAEConfig) -> MAEConfig:
    if config.hidden_act != "gelu":
        raise ValueError(f"hf_mae blocks use exact GELU; got hidden_act={config.hidden_act!r}")
    return MAEConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS + _DECODER_FIELDS})


def config_to_transformers(config: MAEConfig) -> ViTMAEConfig:
    return ViTMAEConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS + _DECODER_FIELDS})


def from_transformers(model_or_path) -> MAEForPreTraining:
    """A transformers `ViTMAEForPreTraining` (instance, local folder or Hub id) as an hf_mae
    `MAEForPreTraining` with the same weights (and the checkpoint's own `norm_pix_loss`, `mask_ratio` and
    `layer_norm_eps`), in eval mode. A conversion through `load_any`, strict."""
    source = model_or_path
    if not isinstance(source, ViTMAEForPreTraining):
        source = ViTMAEForPreTraining.from_pretrained(model_or_path)
    model, _ = load_any(source)
    return model


def _hf_mae_to_official(model: MAEModel | MAEForPreTraining) -> dict:
    """The model's state dict under official names (encoder keys lose their `encoder.` prefix)."""
    state = model.state_dict()
    if isinstance(model, MAEForPreTraining):
        return {key.removeprefix("encoder."): value for key, value in state.items()}
    return dict(state)


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


# ------------------------------------------------------------------------------------------------------------
# Any checkpoint -> hf_mae (`load_any`), hf_mae -> any layout (`export_state_dict`)

EXPORT_LAYOUTS = ("official", "timm", "transformers", "hf_mae")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked: unreadable file, unknown keys, shape mismatch..."""


_BLOCK_PARAM = r"(?:norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(?:weight|bias)"
# official / timm names: the encoder (hf_mae `MAEModel` names) and the decoder (identical in hf_mae)
_ENCODER_NAME = re.compile(
    rf"cls_token|pos_embed|patch_embed\.proj\.(?:weight|bias)|norm\.(?:weight|bias)|blocks\.\d+\.{_BLOCK_PARAM}")
_DECODER_NAME = re.compile(
    rf"mask_token|decoder_pos_embed|decoder_(?:embed|norm|pred)\.(?:weight|bias)"
    rf"|decoder_blocks\.\d+\.{_BLOCK_PARAM}")
# recognised but not part of an encoder or pretraining model: classifier heads and poolers (reported, ignored)
_HEAD_NAME = re.compile(r"(?:head|fc_norm|pre_logits|head_dist|classifier|(?:vit\.)?pooler)\..+"
                        r"|(?:vit\.)?embeddings\.mask_token")
# transformers 4.x / Hub names -> 5.x names (as transformers' own load-time renaming does). transformers 5
# `save_pretrained` writes these legacy names too, with decoder layers as `decoder.decoder_encoder.layer.i`.
_LEGACY_RENAMES = [
    (re.compile(r"^(vit\.)?encoder\.layer\.(\d+)\."), r"\1layers.\2."),
    (re.compile(r"^decoder\.decoder_encoder\.layer\.(\d+)\."), r"decoder.decoder_layers.\1."),
    (re.compile(r"\.attention\.attention\.query\."), ".attention.q_proj."),
    (re.compile(r"\.attention\.attention\.key\."), ".attention.k_proj."),
    (re.compile(r"\.attention\.attention\.value\."), ".attention.v_proj."),
    (re.compile(r"\.attention\.output\.dense\."), ".attention.o_proj."),
    (re.compile(r"\.intermediate\.dense\."), ".mlp.fc1."),
    (re.compile(r"\.output\.dense\."), ".mlp.fc2."),
]
_FROM_TRANSFORMERS = {theirs: ours for ours, theirs in _TRANSFORMERS_NAMES.items()}
_FROM_TRANSFORMERS_BLOCK = {theirs: ours for ours, theirs in _TRANSFORMERS_BLOCK_NAMES.items()}
_TRANSFORMERS_BLOCK_KEY = re.compile(r"((?:vit\.)?layers|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)")
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "module")
_KEY_PREFIXES = ("module.", "_orig_mod.", "model.")
_POSITION_NAMES = ("pos_embed", "decoder_pos_embed")


def _rename(key: str) -> tuple[str, str | None, str] | None:
    """(official name, q/k/v part or None, naming scheme) of a checkpoint key, or None when unrecognised."""
    if _ENCODER_NAME.fullmatch(key) or _DECODER_NAME.fullmatch(key):
        return key, None, "official"
    if key.startswith("encoder.") and _ENCODER_NAME.fullmatch(key[len("encoder."):]):
        return key[len("encoder."):], None, "hf_mae"
    renamed = key
    for pattern, replacement in _LEGACY_RENAMES:
        renamed = pattern.sub(replacement, renamed)
    scheme = "transformers-legacy" if renamed != key else "transformers"
    name = renamed.removeprefix("vit.")  # the encoder inside ViTMAEForPreTraining
    ours = _FROM_TRANSFORMERS.get(name)
    if ours is not None and (name == renamed or _ENCODER_NAME.fullmatch(ours)):
        return ours, None, scheme
    if match := _TRANSFORMERS_BLOCK_KEY.fullmatch(renamed):
        stack, index, inner, suffix = match.groups()
        blocks = "decoder_blocks" if stack.startswith("decoder") else "blocks"
        if qkv := re.fullmatch(r"attention\.([qkv])_proj", inner):
            return f"{blocks}.{index}.attn.qkv.{suffix}", qkv.group(1), scheme
        if inner in _FROM_TRANSFORMERS_BLOCK:
            return f"{blocks}.{index}.{_FROM_TRANSFORMERS_BLOCK[inner]}.{suffix}", None, scheme
    return None


@dataclass
class _Canonical:
    """A checkpoint under official names, with where each tensor came from."""

    tensors: dict = field(default_factory=dict)  # official name -> tensor (q/k/v fused)
    sources: dict = field(default_factory=dict)  # official name -> checkpoint keys
    schemes: set = field(default_factory=set)
    unmapped: dict = field(default_factory=dict)  # checkpoint key -> why it was not recognised
    ignored: dict = field(default_factory=dict)  # checkpoint key -> why it is deliberately not loaded

    @property
    def has_decoder(self) -> bool:
        return any(_DECODER_NAME.fullmatch(name) for name in self.tensors)


def _canonicalize(state_dict: Mapping) -> _Canonical:
    out, qkv_parts = _Canonical(), {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            out.ignored[key] = f"not a tensor ({type(value).__name__})"
            continue
        renamed = _rename(key)
        if renamed is None:
            if _HEAD_NAME.fullmatch(key):
                out.ignored[key] = "classifier head / pooler (not part of MAEModel or MAEForPreTraining)"
            else:
                out.unmapped[key] = "unrecognised name"
            continue
        name, part, scheme = renamed
        out.schemes.add(scheme)
        if part is not None:
            qkv_parts.setdefault(name, {})[part] = (key, value)
            continue
        if name in out.tensors:
            raise ConversionError(
                f"checkpoint keys {out.sources[name][0]!r} and {key!r} both map to {name!r}")
        out.tensors[name], out.sources[name] = value, [key]
    for name, parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"} or name in out.tensors:
            for key, _ in parts.values():
                out.unmapped[key] = f"q/k/v projection for {name!r} without all three parts (or also fused)"
            continue
        out.tensors[name] = torch.cat([parts[p][1] for p in "qkv"], dim=0)
        out.sources[name] = [parts[p][0] for p in "qkv"]
    return out


def _unwrap(obj, description: str = "the checkpoint") -> tuple[dict, list[str], dict, dict]:
    """The flat state dict inside a checkpoint object, notes, training arguments found beside it, and the keys
    dropped as outside a `backbone.` prefix."""
    notes, extras, dropped = [], {}, {}
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{description} holds a {type(obj).__name__}, not a state dict (a mapping of "
                              f"names to tensors)")
    while not any(isinstance(value, torch.Tensor) for value in obj.values()):
        extras.update(_training_args(obj.get("args")))
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            entries = ", ".join(repr(key) for key in list(obj)[:10]) or "none"
            wrappers = " / ".join(repr(k) for k in _WRAPPER_KEYS)
            raise ConversionError(f"no state dict found: {description} has no tensors and no {wrappers} "
                                  f"entry (top-level entries: {entries})")
        notes.append(f"state dict taken from the checkpoint's {wrapper!r} entry")
        obj = obj[wrapper]
    state = dict(obj)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                notes.append(f"key prefix {prefix!r} stripped")
                stripped = True
    if any(key.startswith("backbone.") for key in state):  # a detector / segmenter: keep its backbone
        notes.append("key prefix 'backbone.' stripped")
        dropped = {key: "outside the backbone" for key in state if not key.startswith("backbone.")}
        state = {key[len("backbone."):]: value for key, value in state.items() if key.startswith("backbone.")}
    return state, notes, extras, dropped


def _training_args(args) -> dict:
    """Config fields from the official training arguments (`args` in official training checkpoints)."""
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if not isinstance(args, Mapping):
        return {}
    out = {name: args[name] for name in ("norm_pix_loss", "mask_ratio") if name in args}
    if isinstance(args.get("input_size"), int):
        out["image_size"] = args["input_size"]
    return out


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


def resample_position_embeddings(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]):
    """(1, 1 + R*C, D) position table on an (R, C) patch grid -> the new grid, bicubically; CLS row kept."""
    dim = pos.shape[-1]
    patches = pos[:, 1:].reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat([pos[:, :1], patches], dim=1)


def _adapt_positions(name: str, tensor: torch.Tensor, dim: int, grid: tuple[int, int], sources: list[str],
                     notes: list[str]) -> torch.Tensor:
    """Position table for the target grid: fixed sin-cos regenerated, learned values kept (and resampled)."""
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] != 1 or tensor.shape[2] != dim:
        raise ConversionError(f"shape mismatch: checkpoint {sources[0]!r} has shape {tuple(tensor.shape)}, "
                              f"hf_mae {name!r} expects (1, num_positions, {dim})")
    source_grid, has_cls = _grid_of(tensor.shape[1], grid)
    tolerance = 1e-5 if tensor.dtype in (torch.float32, torch.float64) else 1e-2
    tensor = tensor.float()
    if not has_cls:
        tensor = torch.cat([tensor.new_zeros(1, 1, dim), tensor], dim=1)
        notes.append(f"{name}: no CLS row in the checkpoint; a zero row added (the CLS token gets no "
                     f"position, as before)")
    fixed = sincos_pos_embed(dim, source_grid)
    target = sincos_pos_embed(dim, grid)  # what a fixed table becomes on the target grid
    size = f"{grid[0]}x{grid[1]}"
    if torch.allclose(tensor, fixed, atol=tolerance):
        if source_grid == grid:
            notes.append(f"{name}: fixed 2-D sin-cos (matches hf_mae's)")
            return tensor
        notes.append(f"{name}: fixed 2-D sin-cos (matches hf_mae's), regenerated for the {size} grid "
                     f"(checkpoint {source_grid[0]}x{source_grid[1]})")
        return target
    if not tensor.any():
        notes.append(f"{name}: ALL ZERO in the checkpoint (a transformers ViTMAE trained from scratch never "
                     f"sets them): kept, so the model has no position information")
    else:
        notes.append(f"{name}: learned position embeddings (differ from fixed sin-cos by up to "
                     f"{(tensor - fixed).abs().max().item():.3g}) kept and loaded into the buffer; at other "
                     f"resolutions than the config's the model regenerates sin-cos")
    if source_grid != grid:
        tensor = resample_position_embeddings(tensor, source_grid, grid)
        notes.append(f"{name}: resampled bicubically from {source_grid[0]}x{source_grid[1]} to {size} "
                     f"(CLS row kept)")
    return tensor


@dataclass
class ConversionReport:
    """What `load_any` did with each key. Checkpoint keys are as found after unwrapping (`model` /
    `state_dict` entries) and stripping prefixes (`module.`, `backbone.`, ...); hf_mae keys are the returned
    model's."""

    source: str
    layout: str  # detected, e.g. "official (encoder + decoder)", "transformers ... (legacy 4.x names)"
    model_class: str  # "MAEForPreTraining" or "MAEModel"
    config_source: str  # "inferred from shapes", "given", "from the source's config" (+ overrides)
    config: MAEConfig | None = None
    mapped: dict = field(default_factory=dict)  # checkpoint key -> hf_mae key (q/k/v: three keys, one target)
    unmapped: dict = field(default_factory=dict)  # checkpoint key -> reason (unrecognised / not in the model)
    ignored: dict = field(default_factory=dict)  # checkpoint key -> reason (recognised, deliberately dropped)
    missing: list = field(default_factory=list)  # hf_mae keys the checkpoint lacks (left at initial values)
    notes: list = field(default_factory=list)  # position embeddings, assumed fields, wrappers, ...

    def to_dict(self) -> dict:
        return {"source": self.source, "layout": self.layout, "model_class": self.model_class,
                "config_source": self.config_source,
                "config": self.config.to_diff_dict() if self.config else None,
                "mapped": dict(self.mapped), "unmapped": dict(self.unmapped), "ignored": dict(self.ignored),
                "missing": list(self.missing), "notes": list(self.notes)}

    def format(self, max_keys: int | None = 8) -> str:
        """Readable summary; at most `max_keys` keys per list (None: all)."""
        def listing(keys) -> str:
            keys = list(keys)
            shown = keys if max_keys is None else keys[:max_keys]
            more = f", ... ({len(keys) - len(shown)} more)" if len(keys) > len(shown) else ""
            return ", ".join(shown) + more

        c = self.config
        lines = [f"source:   {self.source}", f"layout:   {self.layout}",
                 f"model:    {self.model_class}, config {self.config_source}"]
        if c is not None:
            arch = (f"image {c.image_size}, patch {c.patch_size}, {c.num_channels} channels, encoder "
                    f"{c.hidden_size} x {c.num_hidden_layers} blocks, {c.num_attention_heads} heads")
            if self.model_class == "MAEForPreTraining":
                arch += (f"; decoder {c.decoder_hidden_size} x {c.decoder_num_hidden_layers} blocks, "
                         f"{c.decoder_num_attention_heads} heads; norm_pix_loss={c.norm_pix_loss}")
            lines.append(f"          {arch}")
        targets = len(set(self.mapped.values()))
        lines.append(f"mapped:   {len(self.mapped)} checkpoint keys -> {targets} hf_mae keys")
        for label, items in (("ignored", self.ignored), ("unmapped", self.unmapped)):
            lines.append(f"{label + ':':<9} {len(items)}")
            by_reason = {}
            for key, reason in items.items():
                by_reason.setdefault(reason, []).append(key)
            lines += [f"          {reason}: {listing(keys)}" for reason, keys in by_reason.items()]
        lines.append(f"missing:  {len(self.missing)}" + (f": {listing(self.missing)}" if self.missing else ""))
        lines += [f"note:     {note}" for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _first(items, count: int = 5) -> str:
    items = list(items)
    more = f", ... ({len(items) - count} more)" if len(items) > count else ""
    return ", ".join(repr(item) for item in items[:count]) + more


def _config_from_vit(config: ViTConfig) -> MAEConfig:
    if config.hidden_act != "gelu":
        raise ValueError(f"hf_mae blocks use exact GELU; got hidden_act={config.hidden_act!r}")
    return MAEConfig(**{name: getattr(config, name) for name in _SHARED_FIELDS})


def _config_of(config) -> MAEConfig | None:
    """An `MAEConfig` from an hf_mae, transformers ViTMAE or ViT config object (None for anything else)."""
    if isinstance(config, MAEConfig):
        return MAEConfig.from_dict(config.to_dict())
    if isinstance(config, ViTMAEConfig):
        return config_from_transformers(config)
    if isinstance(config, ViTConfig):
        return _config_from_vit(config)
    return None


def _read_safetensors(path: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as error:  # SafetensorError and friends: a short or garbled file
        raise ConversionError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from None


def _read_torch(path: str):
    """torch.load with weights_only=True (and argparse.Namespace, held by official training checkpoints)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*Detected pickle protocol")  # the error says more
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        needs = re.search(r"Unsupported (?:global|class): (?:GLOBAL )?([\w.]+)", message)
        if needs:
            raise ConversionError(
                f"{path} is a pickle that needs code to load ({needs.group(1)}); hf_mae reads checkpoints with "
                f"torch.load(weights_only=True) only and never runs code from a file. If you trust it, "
                f"re-save just its tensors (torch.save(state_dict, new_path) or safetensors) and convert "
                f"that file") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        raise ConversionError(f"{path} is a pickle that torch.load(weights_only=True) cannot read, not a "
                              f"torch.save checkpoint of tensors (truncated or corrupt?): "
                              f"{_first_line(detail.group(1) if detail else message)}") from None
    except Exception as error:  # noqa: BLE001 - any failure to read the file means "not a checkpoint"
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{type(error).__name__}: {_first_line(str(error))}") from None


def _first_line(message: str) -> str:
    return next((line.strip() for line in message.splitlines() if line.strip()), message)[:300]


_CHECKPOINT_KINDS = ("a checkpoint is a .safetensors file, a torch.save file (.pth / .pt / .bin) or a "
                     "save_pretrained folder")


def _sniff(head: bytes) -> str | None:
    """What a file that is none of the checkpoint formats holds, from its first bytes (None: a checkpoint
    format: safetensors, a torch.save zip archive or a legacy pickle)."""
    if head[8:9] == b"{" or head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return "a JSON or text file"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a multi-byte character cut by the 64-byte read is still text
        decoded = head[:error.start].decode("utf-8") if error.start >= len(head) - 3 else ""
    if decoded and all(char.isprintable() or char in "\t\r\n" for char in decoded):
        return "a text file"
    return "unrecognised binary data (neither safetensors, a torch.save zip archive nor a pickle)"


def _read_file(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is not a regular file or a folder; {_CHECKPOINT_KINDS}")
    size = os.path.getsize(path)
    if size == 0:
        raise ConversionError(f"{path} is empty (0 bytes): an interrupted download or save?")
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise ConversionError(f"{path} cannot be read: {error}") from None
    if path.endswith(".safetensors") or head[8:9] == b"{":
        return _read_safetensors(path)
    what = _sniff(head)
    if what is not None:
        raise ConversionError(f"{path} is not a checkpoint: {what}, {size:,} bytes; {_CHECKPOINT_KINDS}")
    return _read_torch(path)


def _config_from_json(raw: Mapping) -> MAEConfig | None:
    """An `MAEConfig` from a saved hf_mae, transformers ViTMAE or ViT config.json (None for other types)."""
    model_type = raw.get("model_type")
    if model_type == "hf_mae":
        return MAEConfig.from_dict(dict(raw))
    if model_type == "vit_mae":
        return config_from_transformers(ViTMAEConfig.from_dict(dict(raw)))
    if model_type == "vit":
        return _config_from_vit(ViTConfig.from_dict(dict(raw)))
    return None


def read_json_file(path: str, what: str) -> dict:
    try:
        with open(path) as handle:
            raw = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} ({what}) is not readable JSON: {_first_line(str(error))}") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"{path} ({what}) holds a JSON {type(raw).__name__}, not an object")
    return raw


def _read_folder(path: str) -> tuple[dict, MAEConfig | None, str]:
    """Weights and config of a `save_pretrained` folder (hf_mae, transformers ViTMAE or ViT)."""
    config, kind = None, "folder"
    config_path = os.path.join(path, "config.json")
    if os.path.isfile(config_path):
        raw = read_json_file(config_path, "the folder's config")
        kind = f"{raw.get('model_type', 'unknown')} folder"
        try:
            config = _config_from_json(raw)
        except (ValueError, TypeError, KeyError) as error:
            raise ConversionError(f"{config_path} is not a usable {raw.get('model_type')} config: "
                                  f"{_first_line(str(error))}") from None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return _read_file(os.path.join(path, name)), config, kind
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = os.path.join(path, index)
        if os.path.isfile(index_path):
            weight_map = read_json_file(index_path, "a sharded checkpoint's index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index_path} has no weight_map: not a sharded checkpoint index")
            state = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                shard_path = os.path.join(path, shard)
                if not os.path.isfile(shard_path):
                    raise ConversionError(f"{index_path} lists the shard {shard}, which is missing from {path} "
                                          f"(an interrupted download?)")
                state.update(_read_file(shard_path))
            return state, config, kind
    raise ConversionError(f"{path} holds no model.safetensors / pytorch_model.bin (or sharded index); files: "
                          f"{_first(sorted(os.listdir(path)), 10)}")


def _read_source(source) -> tuple[object, MAEConfig | None, str]:
    """(checkpoint object, config found beside the weights, description) for a path, mapping or module."""
    if isinstance(source, torch.nn.Module):
        config = _config_of(getattr(source, "config", None))
        return source.state_dict(), config, f"{type(source).__name__} instance"
    if isinstance(source, Mapping):
        return source, None, "state dict"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            state, config, kind = _read_folder(path)
            return state, config, f"{path} ({kind})"
        return _read_file(path), None, path
    raise TypeError(f"source must be a path, a state dict or a module, got {type(source).__name__}")


def _layout_name(canon: _Canonical, wrapper_notes: list[str], folder_kind: str) -> str:
    decoder = canon.has_decoder
    if "hf_mae" in canon.schemes or folder_kind.startswith("hf_mae"):
        return "hf_mae"
    if canon.schemes & {"transformers", "transformers-legacy"}:
        names = "legacy 4.x names" if "transformers-legacy" in canon.schemes else "5.x names"
        return f"transformers {'ViTMAEForPreTraining' if decoder else 'ViT / ViTMAE encoder'} ({names})"
    if decoder:
        return "official (encoder + decoder)"
    if any("'model' entry" in note for note in wrapper_notes):
        return "official (encoder)"
    return "timm (encoder)"


def _resolve_config(config, found: MAEConfig | None, canon: _Canonical,
                    extras: dict) -> tuple[MAEConfig, str, list]:
    """The target config: a full config (preset name, MAEConfig) as given, else the folder's config or the
    inferred one, with a dict / JSON file of fields on top."""
    if isinstance(config, (str, os.PathLike)) and os.fspath(config).endswith(".json"):
        config = read_json_file(os.fspath(config), "config fields")
    if isinstance(config, str):
        return MAEConfig.from_preset(config), f"given (preset {config})", []
    if isinstance(config, MAEConfig):
        return MAEConfig.from_dict(config.to_dict()), "given", []
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be an MAEConfig, a preset name, a JSON path or a dict of fields, got "
                        f"{type(config).__name__}")
    if isinstance(config, Mapping) and config.get("model_type") in ("hf_mae", "vit_mae", "vit"):
        return _config_from_json(config), f"given ({config['model_type']} config.json)", []
    overrides = dict(config or {})
    suffix = f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else ""
    if len(overrides) > 4:
        suffix = f" with {len(overrides)} given fields"
    if found is not None:
        return MAEConfig(**{**found.to_dict(), **overrides}), f"from the source's config{suffix}", []
    fields, notes = _infer_fields(canon.tensors, {**extras, **overrides})
    if extras:
        notes.append(f"from the training arguments in the checkpoint: {extras}")
    elif canon.has_decoder and "norm_pix_loss" not in overrides:
        notes.append("norm_pix_loss is not stored in the weights: True assumed (the official 'visualize' "
                     "checkpoints and facebook/vit-mae-* were trained on raw pixels: pass "
                     "config={'norm_pix_loss': False} for them)")
    return MAEConfig(**{**fields, **extras, **overrides}), f"inferred from shapes{suffix}", notes


def load_any(source, config=None, strict: bool = True):
    """Load an MAE / ViT checkpoint of any supported layout as an hf_mae model.

    source: a file (`.safetensors`; `.pth` / `.pt` / `.bin` read with `torch.load(weights_only=True)` only), a
        `save_pretrained` folder (hf_mae, transformers ViTMAE or ViT), a state dict (possibly wrapped as
        `{"model": ...}` / `{"state_dict": ...}`) or a module (its state dict and config are used).
        Layouts: official MAE, timm ViT, transformers ViTMAE / ViTModel (5.x and legacy 4.x names), hf_mae;
        prefixes `module.`, `model.`, `_orig_mod.` and `backbone.` are stripped.
    config: None (architecture inferred from shapes, or the folder's config.json), a dict of config fields on
        top of that (e.g. `{"num_attention_heads": 8}`: heads are not stored in weights), a JSON file of such
        fields, a preset name, a full `MAEConfig` (or a saved hf_mae / ViTMAE / ViT config.json). The position
        embeddings follow the config's image size.
    strict: unknown keys (or keys beyond the config) and missing keys raise a `ConversionError`; with
        `strict=False` they are skipped / left at their initial values and listed in the report.

    Returns `(model, report)`: an `MAEForPreTraining` when the checkpoint has a decoder, else an `MAEModel`,
    in eval mode and float32; and a `ConversionReport` (print it). Shape mismatches always raise. Fixed
    sin-cos position embeddings are regenerated for the target grid; learned ones are kept and resampled
    bicubically when the grid differs.
    """
    raw, found, description = _read_source(source)
    state, notes, extras, dropped = _unwrap(raw, description)
    canon = _canonicalize(state)
    canon.ignored.update(dropped)
    if not canon.tensors:
        raise ConversionError(f"no MAE / ViT weights recognised in {description}; keys: {_first(state, 8)}")
    if strict and canon.unmapped:
        raise ConversionError(
            f"{len(canon.unmapped)} unknown key(s) in {description}: {_first(canon.unmapped)}. Pass "
            f"strict=False (convert_checkpoint.py --allow_unknown_keys) to skip them")
    target_config, config_source, config_notes = _resolve_config(config, found, canon, extras)
    layout = _layout_name(canon, notes, description.rsplit("(", 1)[-1])
    model_class = MAEForPreTraining if canon.has_decoder else MAEModel
    model = model_class(target_config)
    report = ConversionReport(source=description, layout=layout, model_class=model_class.__name__,
                              config_source=config_source, config=target_config,
                              unmapped=dict(canon.unmapped), ignored=dict(canon.ignored),
                              notes=notes + config_notes)
    prefix = "encoder." if canon.has_decoder else ""
    expected = model.state_dict()
    dims = {"pos_embed": target_config.hidden_size, "decoder_pos_embed": target_config.decoder_hidden_size}
    to_load = {}
    for name, tensor in canon.tensors.items():
        target = prefix + name if _ENCODER_NAME.fullmatch(name) else name
        sources = canon.sources[name]
        if target not in expected:
            for key in sources:
                report.unmapped[key] = f"maps to {target!r}, not in {model_class.__name__} with this config"
            continue
        if name in _POSITION_NAMES:
            tensor = _adapt_positions(name, tensor, dims[name], target_config.grid_size, sources,
                                      report.notes)
        elif tuple(tensor.shape) != tuple(expected[target].shape):
            raise ConversionError(
                f"shape mismatch for {target!r}: checkpoint {' + '.join(repr(k) for k in sources)} has shape "
                f"{tuple(tensor.shape)}, {model_class.__name__} expects {tuple(expected[target].shape)} "
                f"(config {config_source})")
        to_load[target] = tensor
        report.mapped.update({key: target for key in sources})
    for name in _POSITION_NAMES:  # fixed positions need no checkpoint values
        target = prefix + name if name == "pos_embed" else name
        if target in expected and target not in to_load:
            to_load[target] = sincos_pos_embed(dims[name], target_config.grid_size)
            report.notes.append(f"{name}: not in the checkpoint; fixed 2-D sin-cos generated")
    report.missing = [key for key in expected if key not in to_load]
    if strict and len(report.unmapped) > len(canon.unmapped):
        raise ConversionError(
            f"{len(report.unmapped)} checkpoint key(s) do not fit {model_class.__name__} with config "
            f"{config_source}: {_first(f'{k}: {v}' for k, v in report.unmapped.items())}. Pass strict=False "
            f"(convert_checkpoint.py --allow_unknown_keys) to skip them")
    if strict and report.missing:
        hint = ""
        if any(k.startswith("fc_norm.") for k in canon.ignored) and f"{prefix}norm.weight" in report.missing:
            hint = (" (a fine-tuned checkpoint with global pooling: its fc_norm, applied after pooling, replaces "
                    "the final norm)")
        raise ConversionError(
            f"{description} lacks {len(report.missing)} key(s) of {model_class.__name__}: "
            f"{_first(report.missing)}{hint}. Pass strict=False (convert_checkpoint.py --allow_unknown_keys) "
            f"to keep their initial values")
    result = model.load_state_dict(to_load, strict=False)
    assert not result.unexpected_keys and sorted(result.missing_keys) == sorted(report.missing), result
    return model.eval(), report


def export_state_dict(model: MAEModel | MAEForPreTraining, layout: str = "official") -> dict:
    """The model's weights under another project's names (tensors share memory with the model).

    - `official`: facebookresearch/mae names (wrap as `{"model": sd}` for their `.pth` files); the decoder is
      included for an `MAEForPreTraining`.
    - `timm`: timm `VisionTransformer` encoder names (`pos_embed` with its CLS row), also what detectron2
      ViTDet and mmseg / mmpretrain conversion scripts read; encoder only (no timm counterpart to the
      decoder).
    - `transformers`: transformers 5.x names, `ViTMAEForPreTraining` for an `MAEForPreTraining` and
      `ViTModel(add_pooling_layer=False)` for an `MAEModel` (what `to_transformers` loads).
    - `hf_mae`: the model's own state dict.
    `load_any(export_state_dict(model, layout), config=model.config)` gives back the same weights.
    """
    if isinstance(model, MAEForImageClassification):
        raise TypeError("export_state_dict takes an MAEModel or MAEForPreTraining; for a classifier export "
                        "its encoder (model.encoder)")
    if not isinstance(model, (MAEModel, MAEForPreTraining)):
        raise TypeError(f"expected MAEModel or MAEForPreTraining, got {type(model).__name__}")
    if layout not in EXPORT_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(EXPORT_LAYOUTS)}, got {layout!r}")
    pretraining = isinstance(model, MAEForPreTraining)
    official = _hf_mae_to_official(model)
    if layout == "hf_mae":
        out = model.state_dict()
    elif layout == "transformers":
        out = _official_to_transformers(official, "vit." if pretraining else "")
    elif layout == "official":
        out = official
    else:  # timm: the encoder only
        out = {name: value for name, value in official.items() if _ENCODER_NAME.fullmatch(name)}
    return {key: value.detach().contiguous() for key, value in out.items()}


__all__ = ["load_any", "export_state_dict", "fold_batchnorm", "infer_config", "resample_position_embeddings",
           "ConversionReport", "ConversionError", "EXPORT_LAYOUTS", "from_transformers", "to_transformers",
           "config_from_transformers", "config_to_transformers"]
