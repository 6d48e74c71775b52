"""`load_any` (any MAE checkpoint -> hf_mae model) and `export_state_dict` (hf_mae -> a layout)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..models.mae.classification_mae import MAEForImageClassification
from ..models.mae.configuration_mae import MAEConfig
from ..models.mae.modeling_mae import MAEForPreTraining, MAEModel, sincos_pos_embed
from .config_inference import _infer_fields
from .files import _config_from_json, _read_source, read_json_file
from .names import (
    _ENCODER_NAME,
    _POSITION_NAMES,
    EXPORT_LAYOUTS,
    ConversionError,
    _Canonical,
    _canonicalize,
    _hf_mae_to_official,
    _official_to_transformers,
    _unwrap,
)
from .positions import _adapt_positions
from .report import ConversionReport, _first


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
    not_finite = [key for key, tensor in to_load.items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if not_finite:
        raise ConversionError(f"{description}: {len(not_finite)} tensor(s) hold NaN or inf: {_first(not_finite)}; "
                              f"refusing to convert weights that are not finite")
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
