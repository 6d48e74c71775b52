"""MAEBackbone: the MAE encoder as a transformers backbone (AutoBackbone) for dense-prediction heads, its
4x/2x/1x/0.5x feature pyramid, and the check that loaded weights make a complete encoder."""

import re

import torch
from torch import nn
from transformers.modeling_outputs import BackboneOutput

from .configuration_mae import MAEConfig
from .modeling_mae import MAEModel, MAEPreTrainedModel

try:
    from transformers.backbone_utils import BackboneMixin
except ImportError:  # transformers < 5.2 kept it under utils
    from transformers.utils.backbone_utils import BackboneMixin

ENCODER_TENSOR = re.compile(r"(?:encoder\.)?(?:cls_token|pos_embed|patch_embed\.|blocks\.|norm\.)")


class MAEFeaturePyramid(nn.Module):
    """Four same-resolution ViT maps -> 4x, 2x, 1x and 0.5x maps: the multi-scale neck that MAE's and BEiT's
    UperNet segmentation code put on a plain ViT (2x2 stride-2 deconvolutions up, a 2x2 max-pool down)."""

    def __init__(self, dim: int):
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, stride=2), nn.BatchNorm2d(dim), nn.GELU(),
                                 nn.ConvTranspose2d(dim, dim, 2, stride=2))
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, stride=2)

    def forward(self, maps: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])


def check_loaded_weights(model: nn.Module, info: dict, source, new_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Refuse a load that left the encoder incomplete: any encoder tensor missing, unexpected or of another shape
    raises ValueError naming the tensors, and so does any non-finite weight. Tensors under `new_prefixes` (a new
    head) may be missing or of another shape; returns those that were new. Unexpected tensors outside the
    encoder (a decoder, another head) are dropped."""
    mismatched = {key: (tuple(ckpt), tuple(mine)) for key, ckpt, mine in info.get("mismatched_keys", ())}
    missing = set(info.get("missing_keys", ())) | set(mismatched)
    new = sorted(key for key in missing if key.startswith(new_prefixes))
    problems = []
    for what, keys in (("are missing from its weights", missing - set(mismatched) - set(new)),
                       ("are in its weights but not in this model (renamed, or layers beyond its config)",
                        {k for k in info.get("unexpected_keys", ()) if ENCODER_TENSOR.match(k)})):
        if keys:
            problems.append(f"{len(keys)} encoder tensors {what} (e.g. {', '.join(sorted(keys)[:4])})")
    wrong_shape = [f"{k} (checkpoint {c}, config {m})" for k, (c, m) in sorted(mismatched.items()) if k not in new]
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) of another shape than its config.json says: "
                        f"{', '.join(wrong_shape[:3])}")
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        problems.append(f"{len(bad)} tensor(s) hold NaN or inf: {', '.join(bad[:4])}")
    if problems:
        raise ValueError(f"{source!r}: the weights do not fit {type(model).__name__}, not a complete MAE encoder: "
                         + "; ".join(problems)
                         + ". Give the folder the weights were saved in, unedited (convert other layouts with "
                           "scripts/convert_checkpoint.py).")
    return new


class MAEBackbone(BackboneMixin, MAEPreTrainedModel):
    """The MAE encoder as a transformers backbone (AutoBackbone) for dense-prediction heads (UperNet, DPT...).

    Stages are "stem" (patch embeddings + positions) and "stage1".."stageN" (each block's output, before the
    final norm); `config.out_features` / `out_indices` choose them. Feature maps are (B, hidden_size, H/p,
    W/p) without the CLS token, or the (B, 1 + N, D) tokens with `config.reshape_hidden_states=False`;
    `config.add_fpn=True` makes the 4x / 2x / 1x / 0.5x pyramid of four stages. Loads the encoder weights of
    any hf_mae encoder, pretraining or classifier checkpoint: `AutoBackbone.from_pretrained(folder,
    out_indices=[4, 6, 8, 12])`. No masking: features are deterministic.
    """

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        if config.add_fpn and len(config.out_indices) != 4:  # out_indices may have changed since the check
            raise ValueError(f"add_fpn=True needs exactly 4 out_indices, got {config.out_indices}")
        self.num_features = [config.hidden_size] * (config.num_hidden_layers + 1)
        self.encoder = MAEModel(config)
        self.fpn = MAEFeaturePyramid(config.hidden_size) if config.add_fpn else None
        self.post_init()
        self.encoder.norm.requires_grad_(False)  # the stages are taken before the final norm: it is unused

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        kwargs.setdefault("ignore_mismatched_sizes", True)  # reported by name below, not loaded at random
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        check_loaded_weights(model, info, args[0] if args else kwargs.get("pretrained_model_name_or_path"),
                             new_prefixes=("fpn.",))
        model.encoder.norm.requires_grad_(False)  # loading re-creates the parameters
        return (model, info) if wants_info else model

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None, **kwargs) -> BackboneOutput:
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        encoded = self.encoder(pixel_values, output_hidden_states=True, output_attentions=output_attentions)
        rows, cols = self.encoder._check_pixel_values(pixel_values)
        maps = []
        for stage, tokens in zip(self.stage_names, encoded.hidden_states):  # (B, 1 + N, D) each
            if stage in self.out_features:
                if self.config.reshape_hidden_states:
                    tokens = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, rows, cols)
                maps.append(tokens)
        maps = self.fpn(tuple(maps)) if self.fpn is not None else tuple(maps)
        output = BackboneOutput(feature_maps=maps,
                                hidden_states=encoded.hidden_states if output_hidden_states else None,
                                attentions=encoded.attentions)
        return output if return_dict is not False else output.to_tuple()
