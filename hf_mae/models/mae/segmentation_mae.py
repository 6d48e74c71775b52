"""UperNet semantic segmentation on MAEBackbone, as a folder that loads where hf_mae is not installed.

A saved segmenter is transformers' UperNet (model type "upernet") whose `backbone_config` has model type "hf_mae".
With hf_mae installed, `AutoModelForSemanticSegmentation.from_pretrained(folder)` builds it from the registries
hf_mae fills. Without it, transformers cannot resolve that backbone type: the folder's `auto_map` points
AutoConfig and AutoModelForSemanticSegmentation here (`trust_remote_code=True`), and importing this file
registers the backbone's config and class first. What a registry already holds (hf_mae's own classes) is kept.
"""

import shutil
from pathlib import Path

from transformers import AutoBackbone, AutoConfig, UperNetConfig, UperNetForSemanticSegmentation
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .backbone_mae import MAEBackbone
from .configuration_mae import MAEConfig
from .modeling_mae import CODE_FILES

SEGMENTATION_AUTO_MAP = {
    "AutoConfig": "segmentation_mae.MAEUperNetConfig",
    "AutoModelForSemanticSegmentation": "segmentation_mae.MAEForSemanticSegmentation",
    "AutoImageProcessor": "image_processing_mae.MAEImageProcessor",
}

if MAEConfig.model_type not in CONFIG_MAPPING:
    AutoConfig.register(MAEConfig.model_type, MAEConfig)
    AutoBackbone.register(MAEConfig, MAEBackbone)


class MAEUperNetConfig(UperNetConfig):
    """UperNetConfig; loading through this class (the folder's AutoConfig) registers the MAE backbone first."""


class MAEForSemanticSegmentation(UperNetForSemanticSegmentation):
    """UperNetForSemanticSegmentation whose saved folder carries the MAE code: a full `auto_map` and every
    `*_mae.py` file beside the weights, so that it loads with `trust_remote_code=True` without hf_mae."""

    config_class = MAEUperNetConfig

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = dict(SEGMENTATION_AUTO_MAP)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for name in CODE_FILES:
                shutil.copyfile(Path(__file__).parent / name, Path(save_directory) / name)
        return result


__all__ = ["SEGMENTATION_AUTO_MAP", "MAEForSemanticSegmentation", "MAEUperNetConfig"]
