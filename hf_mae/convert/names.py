"""One name map: official / timm / transformers keys canonicalised to hf_mae's."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from transformers import ViTMAEConfig

from ..models.mae.configuration_mae import MAEConfig
from ..models.mae.modeling_mae import MAEForPreTraining, MAEModel

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


def _training_args(recorded) -> dict:
    """Config fields from the training arguments an official checkpoint records under "args" (an argparse
    Namespace pickled by `main_pretrain.py`, or a dict)."""
    if isinstance(recorded, argparse.Namespace):
        recorded = vars(recorded)
    if not isinstance(recorded, Mapping):
        return {}
    out = {name: recorded[name] for name in ("norm_pix_loss", "mask_ratio") if name in recorded}
    if isinstance(recorded.get("input_size"), int):
        out["image_size"] = recorded["input_size"]
    return out




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


def _hf_mae_to_official(model: MAEModel | MAEForPreTraining) -> dict:
    """The model's state dict under official names (encoder keys lose their `encoder.` prefix)."""
    state = model.state_dict()
    if isinstance(model, MAEForPreTraining):
        return {key.removeprefix("encoder."): value for key, value in state.items()}
    return dict(state)
