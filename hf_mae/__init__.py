"""hf_mae: Masked Autoencoders (He et al. 2022) as Hugging Face transformers classes.

Importing the package registers model type "hf_mae" with AutoConfig, AutoModel, AutoModelForPreTraining,
AutoModelForImageClassification and AutoImageProcessor.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_mae import PRESETS, MAEConfig
from .image_processing_mae import MAEImageProcessor
from .modeling_mae import MAEForImageClassification, MAEForPreTraining, MAEModel, MAEPreTrainedModel

AutoConfig.register(MAEConfig.model_type, MAEConfig, exist_ok=True)
AutoModel.register(MAEConfig, MAEModel, exist_ok=True)
AutoModelForPreTraining.register(MAEConfig, MAEForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(MAEConfig, MAEForImageClassification, exist_ok=True)
AutoImageProcessor.register(MAEConfig, image_processor_classes={"pil": MAEImageProcessor}, exist_ok=True)
MAEImageProcessor.register_for_auto_class("AutoImageProcessor")  # saves its code file beside the config

__version__ = "0.1.0"
__all__ = ["MAEConfig", "PRESETS", "MAEModel", "MAEForPreTraining", "MAEForImageClassification",
           "MAEPreTrainedModel", "MAEImageProcessor"]
