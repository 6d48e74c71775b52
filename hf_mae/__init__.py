"""hf_mae: Masked Autoencoders (He et al. 2022) as Hugging Face transformers classes.

Importing the package registers model type "hf_mae" with AutoConfig, AutoModel, AutoModelForPreTraining,
AutoModelForImageClassification, AutoBackbone and AutoImageProcessor (PIL and torch backends), model type
"hf_mae_upernet" (the segmenters of scripts/segment.py) with AutoConfig and AutoModelForSemanticSegmentation, and tells
AutoVideoProcessor that hf_mae has no video processor: with hf_mae installed, no Auto class or pipeline
asks to run the code files saved beside a checkpoint.
"""

import json
import logging
from pathlib import Path

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoModelForSemanticSegmentation,
    UperNetConfig,
)
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from .models.mae.backbone_mae import MAEBackbone
from .models.mae.classification_mae import MAEForImageClassification
from .models.mae.configuration_mae import PRESETS, MAEConfig
from .models.mae.image_processing_mae import MAEImageProcessor, MAEImageProcessorFast
from .models.mae.modeling_mae import MAEForPreTraining, MAEModel, MAEPreTrainedModel
from .models.mae.segmentation_mae import MAEForSemanticSegmentation, MAEUperNetConfig

AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MAEConfig, MAEForImageClassification, exist_ok=True)
AutoBackbone.register(MAEConfig, MAEBackbone, exist_ok=True)
AutoConfig.register(MAEUperNetConfig.model_type, MAEUperNetConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(MAEUperNetConfig, MAEForSemanticSegmentation, exist_ok=True)
# AutoVideoProcessor (which pipelines try) guesses "MAEVideoProcessor" from the processor's auto_map and, with
# nothing registered locally, asks whether to run that (non-existent) remote code: a y/N prompt and a 15 s
# stall in a terminal. Registering "no video processor" for MAEConfig makes it fail fast instead.
AutoVideoProcessor.register(MAEConfig, video_processor_classes={}, exist_ok=True)
# The same for the segmenters (their processor auto_map names MAEImageProcessor), and for UperNet, as segmenters
# saved before "hf_mae_upernet" load: transformers has no UperNet video processor, so nothing else changes.
AutoVideoProcessor.register(MAEUperNetConfig, video_processor_classes={}, exist_ok=True)
AutoVideoProcessor.register(UperNetConfig, video_processor_classes={}, exist_ok=True)


class _RegisteredSegmenterFilter(logging.Filter):
    """The image-segmentation pipeline checks its model class against transformers' built-in names only (not the
    classes registered with AutoModelForSemanticSegmentation) and logs an error for MAEForSemanticSegmentation,
    which it runs correctly: that one false message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return f"'{MAEForSemanticSegmentation.__name__}' is not supported for" not in record.getMessage()


_pipeline_logger = logging.getLogger("transformers.pipelines.base")
if not any(isinstance(f, _RegisteredSegmenterFilter) for f in _pipeline_logger.filters):
    _pipeline_logger.addFilter(_RegisteredSegmenterFilter())
# "torchvision" is transformers' name for the torch backend (use_fast=True); ours needs torch only
AutoImageProcessor.register(MAEConfig, image_processor_classes={"pil": MAEImageProcessor,
                                                                "torchvision": MAEImageProcessorFast}, exist_ok=True)
MAEImageProcessor.register_for_auto_class("AutoImageProcessor")


def _is_hf_mae_folder(path) -> bool:
    config = Path(str(path)) / "config.json"
    try:
        return config.is_file() and json.loads(config.read_text()).get("model_type") == MAEConfig.model_type
    except (OSError, ValueError):
        return False


_auto_backbone_from_pretrained = AutoBackbone.from_pretrained


def _backbone_from_pretrained(pretrained_model_name_or_path, *args, **kwargs):
    """AutoBackbone.from_pretrained, with local hf_mae folders loaded as MAEBackbone: transformers 5.24 first
    asks the Hub whether the name is a repo (to route timm names), which fails for any local folder (an
    absolute path is not a repo id; offline, nothing answers). Anything else goes to transformers."""
    if _is_hf_mae_folder(pretrained_model_name_or_path):
        kwargs.pop("use_timm_backbone", None)
        kwargs.pop("trust_remote_code", None)  # the installed MAEBackbone is the local code
        return MAEBackbone.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
    return _auto_backbone_from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


if not getattr(AutoBackbone.from_pretrained, "_hf_mae", False):
    _backbone_from_pretrained._hf_mae = True
    AutoBackbone.from_pretrained = staticmethod(_backbone_from_pretrained)  # saves its code file beside the config

__version__ = "0.1.0"
__all__ = ["MAEConfig", "PRESETS", "MAEModel", "MAEForPreTraining", "MAEForImageClassification", "MAEBackbone",
           "MAEPreTrainedModel", "MAEImageProcessor", "MAEImageProcessorFast", "MAEForSemanticSegmentation",
           "MAEUperNetConfig"]
