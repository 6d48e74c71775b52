"""Reading checkpoints: safetensors, torch files (weights only), folders; file-type sniffing."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping

import torch
from transformers import ViTConfig, ViTMAEConfig

from ..models.mae.configuration_mae import MAEConfig
from .names import _SHARED_FIELDS, ConversionError, config_from_transformers
from .report import _first


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
