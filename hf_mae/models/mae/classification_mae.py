"""MAEForImageClassification: the MAE encoder with a linear-probe or fine-tuning head, and the loss of
transformers' classifiers for each `problem_type`."""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_mae import MAEConfig
from .modeling_mae import MAEModel, MAEPreTrainedModel


class MAEForImageClassification(MAEPreTrainedModel):
    """MAE encoder + classification head.

    `classifier_head="linear_probe"` (official linear probing): frozen encoder kept in eval mode, features
    after the final norm (CLS or mean of patch tokens), BatchNorm without affine, Linear.
    `classifier_head="finetune"`: trainable encoder, pooled tokens before the final norm, LayerNorm
    (fc_norm), Linear: the official fine-tuning head with global average pooling.
    """

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.encoder = MAEModel(config)
        dim = config.hidden_size
        if config.classifier_head == "linear_probe":
            self.fc_norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
            self.encoder.requires_grad_(False)
        else:
            self.fc_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.head = nn.Linear(dim, config.num_labels)
        self.head.init_std = 0.01 if self.is_linear_probe else 2e-5  # official head inits
        self.post_init()
        self.freeze_unused()

    def freeze_unused(self) -> None:
        """Freeze what the head does not train: the whole encoder for a linear probe; the encoder's final norm
        for fine-tuning (it pools pre-norm tokens into fc_norm), so no trainable parameter goes without a
        gradient (DDP without find_unused_parameters fails on one)."""
        if self.is_linear_probe:
            self.encoder.requires_grad_(False)
        else:
            self.encoder.norm.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # (model, info) with output_loading_info
        model.freeze_unused()  # loading re-creates the parameters
        return loaded

    @property
    def is_linear_probe(self) -> bool:
        return self.config.classifier_head == "linear_probe"

    def train(self, mode: bool = True):
        super().train(mode)
        if self.is_linear_probe:
            self.encoder.eval()  # frozen features: no dropout/drop-path
        return self

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:].mean(dim=1) if self.config.pooling == "mean" else tokens[:, 0]

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pooled features that enter `fc_norm`, (B, D)."""
        return self._encode(pixel_values)[0]

    def _encode(self, pixel_values, output_attentions=False, output_hidden_states=False):
        """(pooled features, hidden states, attentions): after the final norm for the linear probe, before it
        for fine-tuning. The probe's encoder is frozen by requires_grad (autograd records nothing through it),
        so an encoder unfrozen on purpose trains, with gradient checkpointing too."""
        if self.is_linear_probe:
            encoded = self.encoder(pixel_values, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states)
            return self.pool(encoded.last_hidden_state), encoded.hidden_states, encoded.attentions
        tokens, _, _, hidden_states, attentions = self.encoder.forward_tokens(
            pixel_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        return self.pool(tokens), hidden_states, attentions

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs):
        """`labels` as `config.problem_type` says (see `classification_loss`): class indices (B,) or soft
        targets (B, num_labels) such as mixup's, multi-hot (B, num_labels) floats, or regression values."""
        output_attentions = output_attentions or self.config.output_attentions
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        pooled, hidden_states, attentions = self._encode(pixel_values, output_attentions, output_hidden_states)
        logits = self.head(self.fc_norm(pooled))
        loss = None if labels is None else classification_loss(logits, labels, self.config.problem_type)
        output = ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)
        return output if return_dict is not False else output.to_tuple()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """The loss of transformers' classifiers for `problem_type`, computed in fp32.

    "regression": MSE; "multi_label_classification": BCE with logits on multi-hot floats;
    "single_label_classification": cross-entropy on class indices (B,) or on soft targets (B, num_labels),
    e.g. mixup's. With no problem type: regression for one output, else single-label; floating labels of
    shape (B, num_labels) are soft targets there (a multi-label task must say so in `config.problem_type`).
    """
    num_labels = logits.shape[-1]
    if problem_type is None:
        problem_type = "regression" if num_labels == 1 else "single_label_classification"
    logits = logits.float()
    if problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.float().reshape(logits.squeeze(-1).shape))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels.float().reshape(logits.shape))
    if problem_type != "single_label_classification":
        raise ValueError(f"unknown problem_type {problem_type!r}: expected 'regression', "
                         "'single_label_classification' or 'multi_label_classification'")
    if labels.is_floating_point() and labels.shape == logits.shape:
        return F.cross_entropy(logits, labels.float())  # soft targets
    return F.cross_entropy(logits.view(-1, num_labels), labels.long().view(-1))
