"""Weights into an hf_mae model, loaded completely or refused: the one entry for saved folders and Hub ids."""

from __future__ import annotations

from .mae.backbone_mae import check_loaded_weights

HEAD_PREFIXES = ("fc_norm.", "head.")  # a classifier's head: the only tensors a load may create new


def load_weights(model_class, name_or_path, *, new_head: bool = False, **kwargs):
    """`model_class.from_pretrained(name_or_path, **kwargs)`, checked: an encoder tensor that is missing,
    unexpected or of another shape than the config says, or any NaN / inf weight, is a ValueError naming the
    tensors. `new_head=True` lets the classifier head be new (missing or of another shape). Tensors of other
    parts (a decoder, another head) are dropped. Returns `(model, info)`: transformers' loading info plus
    `new_keys` (the head tensors that were initialised, not loaded)."""
    model, info = model_class.from_pretrained(name_or_path, output_loading_info=True,
                                              ignore_mismatched_sizes=True, **kwargs)
    info = dict(info)
    info["new_keys"] = check_loaded_weights(model, info, name_or_path,
                                            new_prefixes=HEAD_PREFIXES if new_head else ())
    return model, info
