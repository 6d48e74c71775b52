"""UperNet semantic segmentation on MAEBackbone that segments as it was scored, in a folder that loads where
hf_mae is not installed.

A saved segmenter is transformers' UperNet whose `backbone_config` has model type "hf_mae", under its own model
type "hf_mae_upernet": its config also says how an image is segmented at inference (mmsegmentation's `test_cfg`:
the whole image at once, or windows of the training crop), and `MAEForSemanticSegmentation.forward` does that
in eval mode, so `pipeline("image-segmentation")` and any `model(pixel_values=...)` call give the predictions the
held-out mIoU was measured on. With hf_mae installed, `AutoModelForSemanticSegmentation.from_pretrained(folder)`
builds it from the registries hf_mae fills. Without it, the folder's `auto_map` points AutoConfig and
AutoModelForSemanticSegmentation here (`trust_remote_code=True`), and importing this file registers the
backbone's config and class first. What a registry already holds (hf_mae's own classes) is kept.
"""

import math
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from transformers import AutoBackbone, AutoConfig, UperNetConfig, UperNetForSemanticSegmentation
from transformers.modeling_outputs import SemanticSegmenterOutput
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


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    return sorted({min(i * stride, length - window) for i in range(math.ceil((length - window) / stride) + 1)})


def slide_logits(forward, pixel_values: torch.Tensor, num_labels: int, window: tuple[int, int],
                 stride: tuple[int, int]) -> torch.Tensor:
    """mmsegmentation's `slide_inference`: `forward(crop)` logits of overlapping `window` crops every `stride`
    pixels, averaged where they overlap (float32). Images smaller than the window are run whole."""
    batch, _, height, width = pixel_values.shape
    total = pixel_values.new_zeros(batch, num_labels, height, width, dtype=torch.float32)
    count = pixel_values.new_zeros(1, 1, height, width, dtype=torch.float32)
    for top in _window_starts(height, window[0], stride[0]):
        for left in _window_starts(width, window[1], stride[1]):
            crop = pixel_values[:, :, top:top + window[0], left:left + window[1]]
            total[:, :, top:top + crop.shape[2], left:left + crop.shape[3]] += forward(crop).float()
            count[:, :, top:top + crop.shape[2], left:left + crop.shape[3]] += 1
    return total / count


@strict
class MAEUperNetConfig(UperNetConfig):
    """UperNetConfig plus the inference of mmsegmentation's `test_cfg`: `inference_mode` "whole" (each image at
    once) or "slide" (`inference_window`-pixel windows every `inference_stride` pixels, default two thirds of the
    window; logits averaged where windows overlap). Loading through this class (the folder's AutoConfig)
    registers the MAE backbone first."""

    model_type = "hf_mae_upernet"

    inference_mode: str = "whole"
    inference_window: int | None = None
    inference_stride: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.inference_mode not in ("whole", "slide"):
            raise ValueError(f"inference_mode must be 'whole' or 'slide', got {self.inference_mode!r}")
        if self.inference_mode == "slide" and not (self.inference_window or 0) >= 1:
            raise ValueError(f"inference_mode 'slide' needs an inference_window >= 1, got {self.inference_window}")
        if self.inference_stride is not None and self.inference_stride < 1:
            raise ValueError(f"inference_stride must be >= 1, got {self.inference_stride}")
        if self.inference_window and self.inference_stride is None:  # mmsegmentation's 341 for 512
            self.inference_stride = max(1, self.inference_window * 2 // 3)


class MAEForSemanticSegmentation(UperNetForSemanticSegmentation):
    """UperNetForSemanticSegmentation that takes images of any size and, in eval mode, segments them the way its
    config says (`inference_mode`); its saved folder carries the MAE code (a full `auto_map` and every `*_mae.py`
    file beside the weights), so that it loads with `trust_remote_code=True` without hf_mae."""

    config_class = MAEUperNetConfig

    def forward(self, pixel_values=None, output_attentions=None, output_hidden_states=None, labels=None,
                return_dict=None, **kwargs):
        """UperNet's forward (its loss: main + auxiliary head), on inputs padded at the bottom / right to the patch
        size (maps padded with the ignore index) and cropped back. In eval mode with `inference_mode="slide"`, an
        image larger than the window is segmented window by window; its loss is then the main head's."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        height, width = pixel_values.shape[-2:]
        window = self.config.inference_window
        if self.training or self.config.inference_mode != "slide" or (height <= window and width <= window):
            output = self._forward_padded(pixel_values, labels, output_attentions=output_attentions,
                                          output_hidden_states=output_hidden_states, **kwargs)
        else:
            if labels is not None and self.config.num_labels == 1:
                raise ValueError("The number of labels should be greater than one")
            stride = self.config.inference_stride
            logits = slide_logits(lambda crop: self._forward_padded(crop, None, **kwargs).logits, pixel_values,
                                  self.config.num_labels, (window, window), (stride, stride))
            loss = None if labels is None else F.cross_entropy(logits, labels,
                                                              ignore_index=self.config.loss_ignore_index)
            output = SemanticSegmenterOutput(loss=loss, logits=logits)
        return output if return_dict else output.to_tuple()

    def _forward_padded(self, pixel_values, labels, **kwargs) -> SemanticSegmenterOutput:
        height, width = pixel_values.shape[-2:]
        patch = self.config.backbone_config.patch_size
        pad = (0, -width % patch, 0, -height % patch)
        if any(pad):
            pixel_values = F.pad(pixel_values, pad)
            labels = None if labels is None else F.pad(labels, pad, value=self.config.loss_ignore_index)
        output = super().forward(pixel_values, labels=labels, return_dict=True, **kwargs)
        if any(pad):
            output.logits = output.logits[..., :height, :width]
        return output

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = dict(SEGMENTATION_AUTO_MAP)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for name in CODE_FILES:
                shutil.copyfile(Path(__file__).parent / name, Path(save_directory) / name)
        return result


__all__ = ["SEGMENTATION_AUTO_MAP", "MAEForSemanticSegmentation", "MAEUperNetConfig", "slide_logits"]
