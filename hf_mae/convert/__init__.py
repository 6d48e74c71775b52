"""Checkpoint conversion: official MAE / timm / transformers ViTMAE and ViT <-> hf_mae, through one name map.

`load_any(source)` reads any of them (file, folder or model) into an hf_mae model with a `ConversionReport`;
`export_state_dict(model, layout)` writes one back; `from_transformers` / `to_transformers` convert models.
"""

from .config_inference import infer_config
from .load import export_state_dict, load_any
from .names import EXPORT_LAYOUTS, ConversionError, config_from_transformers, config_to_transformers
from .positions import resample_position_embeddings
from .report import ConversionReport
from .vitmae import fold_batchnorm, from_transformers, to_transformers

__all__ = ["EXPORT_LAYOUTS", "ConversionError", "ConversionReport", "config_from_transformers",
           "config_to_transformers", "export_state_dict", "fold_batchnorm", "from_transformers", "infer_config",
           "load_any", "resample_position_embeddings", "to_transformers"]
