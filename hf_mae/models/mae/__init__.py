"""MAE: configuration, modeling and image processing (the remote-code unit: only sibling imports)."""

from .backbone_mae import MAEBackbone
from .classification_mae import MAEForImageClassification
from .configuration_mae import PRESETS, MAEConfig
from .image_processing_mae import MAEImageProcessor, MAEImageProcessorFast
from .modeling_mae import MAEForPreTraining, MAEModel, MAEPreTrainedModel
from .segmentation_mae import MAEForSemanticSegmentation, MAEUperNetConfig

__all__ = ["PRESETS", "MAEBackbone", "MAEConfig", "MAEForImageClassification", "MAEForPreTraining",
           "MAEImageProcessor", "MAEImageProcessorFast", "MAEForSemanticSegmentation", "MAEModel", "MAEPreTrainedModel",
           "MAEUperNetConfig"]
