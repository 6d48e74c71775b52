"""Models wrapped for export: encoder without masking, classifier logits."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..convert.vitmae import fold_batchnorm
from ..models.loading import load_weights
from ..models.mae.classification_mae import MAEForImageClassification
from ..models.mae.configuration_mae import MAEConfig
from ..models.mae.image_processing_mae import MAEImageProcessor
from ..models.mae.modeling_mae import MAEForPreTraining, MAEModel
from .spec import CLASSIFIER_OUTPUTS, ENCODER_OUTPUTS, PretrainingModelError

# --------------------------------------------------------------------------------------------------------
# What is exported: deterministic wrappers
# --------------------------------------------------------------------------------------------------------


class EncoderForExport(nn.Module):
    """An `MAEModel` without masking: pixel_values -> (last_hidden_state, pooler_output)."""

    output_names = ENCODER_OUTPUTS

    def __init__(self, encoder: MAEModel):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(pixel_values, output_attentions=False, output_hidden_states=False, return_dict=True)
        return out.last_hidden_state, out.pooler_output  # (B, 1 + N, D), (B, D)


class ClassifierForExport(nn.Module):
    """An `MAEForImageClassification` in eval mode: pixel_values -> logits.

    A linear probe's eval-mode BatchNorm is folded into its Linear head (`convert.fold_batchnorm`): the same
    function, one layer fewer, and the TorchScript-based ONNX exporter cannot export a BatchNorm once the batch
    axis is dynamic ("batch_norm for unknown channel size"). The fold reads the statistics when the wrapper is
    made."""

    output_names = CLASSIFIER_OUTPUTS

    def __init__(self, classifier: MAEForImageClassification):
        super().__init__()
        self.classifier = classifier
        norm = classifier.fc_norm
        self.folded_head = (fold_batchnorm(norm, classifier.head).requires_grad_(False)
                            if isinstance(norm, nn.modules.batchnorm._BatchNorm) else None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.classifier.features(pixel_values)  # (B, D)
        if self.folded_head is not None:
            return self.folded_head(features)  # (B, num_labels)
        return self.classifier.head(self.classifier.fc_norm(features))  # (B, num_labels)


def pretraining_error(source: str | None = None) -> PretrainingModelError:
    """The error for a pretraining model, pointing at `<folder>/encoder` when that folder exists."""
    where = f"{source!r} is" if source else "this is"
    folder = source or "<pretraining folder>"
    encoder = os.path.join(folder, "encoder")
    saved = bool(source) and os.path.isfile(os.path.join(encoder, "config.json"))
    return PretrainingModelError(
        f"{where} an MAE pretraining model (MAEForPreTraining: encoder + decoder + random masking), which is "
        f"not exported: its output depends on a random mask and the decoder is only for training. Export its "
        f"encoder, --model {encoder} ({'saved there' if saved else 'scripts/pretrain.py saves it there'}; "
        f"AutoModel), or a classifier trained on it (scripts/linear_probe.py --model {folder}; "
        f"AutoModelForImageClassification).")


def _attention_for_export(model: nn.Module) -> None:
    """Flash / flex attention kernels have no ONNX or TorchScript form: use sdpa (eager stays eager)."""
    config = getattr(model, "config", None)
    if config is not None and config._attn_implementation not in ("sdpa", "eager"):
        config._attn_implementation = "sdpa"


def wrap_for_export(model: nn.Module) -> nn.Module:
    """The deterministic module that is exported: encoder -> (last_hidden_state, pooler_output), classifier ->
    logits; in eval mode. An already wrapped module is returned as is."""
    if isinstance(model, (EncoderForExport, ClassifierForExport)):
        return model.eval()
    if isinstance(model, MAEForPreTraining):
        raise pretraining_error(getattr(model.config, "_name_or_path", None) or None)
    _attention_for_export(model)
    if isinstance(model, MAEModel):
        return EncoderForExport(model).eval()
    if isinstance(model, MAEForImageClassification):
        return ClassifierForExport(model).eval()
    raise TypeError(f"expected an hf_mae MAEModel (encoder) or MAEForImageClassification, got "
                    f"{type(model).__name__}")


def wrapped_config(module: nn.Module) -> MAEConfig:
    wrapped = wrap_for_export(module)
    inner = wrapped.encoder if isinstance(wrapped, EncoderForExport) else wrapped.classifier
    return inner.config


def example_input(config: MAEConfig, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    """Random pixel_values (B, C, H, W) at the configured size (the trace input; batch 2 keeps it symbolic)."""
    height, width = config.image_hw
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.num_channels, height, width, generator=generator)


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def load_model(name_or_path: str, revision: str | None = None, attn_implementation: str = "sdpa"):
    """The encoder or classifier at `name_or_path` (a local `save_pretrained` folder or a Hub id) and its
    image processor (the folder's, else one sized for the config). Refuses pretraining models."""
    from transformers import AutoConfig, AutoImageProcessor

    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load a model from {name_or_path!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); give an hf_mae encoder or classifier "
                         "folder or Hub id") from e
    if not isinstance(config, MAEConfig):
        raise ValueError(f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} model, not hf_mae; convert "
                         "it first with scripts/convert_checkpoint.py")
    architecture = (config.architectures or ["MAEModel"])[0]
    if architecture == "MAEForPreTraining":
        raise pretraining_error(name_or_path)
    model_class = MAEForImageClassification if architecture == "MAEForImageClassification" else MAEModel
    model, _ = load_weights(model_class, name_or_path, revision=revision, attn_implementation=attn_implementation)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError):
        processor = MAEImageProcessor.for_config(model.config)
    return model.eval(), processor
