"""MAE configuration: the HF field names, the seed's aliases, validation and named presets."""

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

try:
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # transformers < 5.2 kept it under utils
    from transformers.utils.backbone_utils import BackboneConfigMixin

# Shared by every preset: the paper's light decoder (512 wide, 8 blocks, 16 heads) unless overridden.
_PAPER_DECODER = {"decoder_hidden_size": 512, "decoder_num_hidden_layers": 8, "decoder_num_attention_heads": 16}

PRESETS: dict[str, dict] = {
    "mae-vit-tiny-patch16": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3,
                             **_PAPER_DECODER},
    "mae-vit-small-patch16": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                              **_PAPER_DECODER},
    "mae-vit-base-patch16": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                             **_PAPER_DECODER},
    "mae-vit-large-patch16": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                              **_PAPER_DECODER},
    "mae-vit-huge-patch14": {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                             "patch_size": 14, **_PAPER_DECODER},
    # Sized for the embedded default data (28x28 grayscale digits): 49 patches of 4x4, a 192-d encoder.
    "mae-vit-mnist-patch4": {"image_size": 28, "patch_size": 4, "num_channels": 1, "hidden_size": 192,
                             "num_hidden_layers": 6, "num_attention_heads": 3, "decoder_hidden_size": 128,
                             "decoder_num_hidden_layers": 2, "decoder_num_attention_heads": 4},
}


def _fpn_indices(depth: int) -> list[int]:
    """Four evenly spaced blocks ending with the last (BEiT/MAE segmentation: 4, 6, 8, 12 of 12 blocks, 1-based)."""
    return [max(1, round(depth * k / 4)) for k in (1, 2, 3, 4)] if depth >= 4 else list(range(depth + 1))[-4:]


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


@strict
class MAEConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of an MAE (encoder, light decoder, masked-patch loss).

    Field names follow transformers' ViTMAE; the seed's names (`img_size`, `encoder_dim`, `decoder_dim`,
    `encoder_layers`, `decoder_layers`, `encoder_heads`, `decoder_heads`) are accepted as aliases, so
    `MAEConfig(**seed_config)` works. `intermediate_size` / `decoder_intermediate_size` default to 4x the width.

    Classification fields: `pooling` ("cls" or "mean") and `classifier_head` ("linear_probe": BatchNorm
    without affine + Linear on a frozen encoder, or "finetune": fc_norm + Linear).

    Evaluation masks: in eval mode, a pretraining forward without `noise` draws its masks from a generator
    seeded with `eval_mask_seed` (default 0), so a validation loss is the same on every evaluation and
    comparable across them. Set it to None for fresh random masks in eval mode too; training mode always
    draws fresh masks, and an explicit `noise=` always wins.

    Backbone fields (`MAEBackbone` / `AutoBackbone`): `out_features` / `out_indices` pick among
    `stage_names` = ["stem", "stage1", ..., "stageN"] (the patch embeddings, then each encoder block's
    output); feature maps are (B, hidden_size, H/p, W/p) without the CLS token, or the (B, 1 + N, D) tokens with
    `reshape_hidden_states=False` (what DPT's neck takes); `add_fpn=True` turns four chosen stages into a
    4x / 2x / 1x / 0.5x pyramid (needs exactly four, and reshaped maps).
    """

    model_type = "hf_mae"
    attribute_map = {
        "img_size": "image_size",
        "encoder_dim": "hidden_size",
        "decoder_dim": "decoder_hidden_size",
        "encoder_layers": "num_hidden_layers",
        "decoder_layers": "decoder_num_hidden_layers",
        "encoder_heads": "num_attention_heads",
        "decoder_heads": "decoder_num_attention_heads",
    }

    image_size: int | list[int] | tuple[int, int] = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    decoder_intermediate_size: int | None = None
    mask_ratio: float | int = 0.75
    norm_pix_loss: bool = True
    layer_norm_eps: float | int = 1e-6
    qkv_bias: bool = True
    drop_path_rate: float | int = 0.0
    initializer_range: float | int = 0.02
    pooling: str = "cls"
    classifier_head: str = "linear_probe"
    eval_mask_seed: int | None = 0
    add_fpn: bool = False
    reshape_hidden_states: bool = True
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        for alias, field in self.attribute_map.items():  # the seed's names first: the stage names need the depth
            if alias in kwargs:
                setattr(self, field, kwargs.pop(alias))
        if self.num_hidden_layers < 0:  # checked here too: the stage names below need a count >= 0
            raise ValueError(f"num_hidden_layers must be >= 0, got {self.num_hidden_layers}")
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_indices=kwargs.pop("out_indices", None),
                                                out_features=kwargs.pop("out_features", None))
        super().__post_init__(**kwargs)
        if isinstance(self.image_size, list):
            self.image_size = tuple(self.image_size)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.decoder_intermediate_size is None:
            self.decoder_intermediate_size = 4 * self.decoder_hidden_size
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming the first invalid field."""
        for field in ("hidden_size", "intermediate_size", "decoder_hidden_size", "decoder_intermediate_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be a positive integer, got {getattr(self, field)}")
        for field in ("layer_norm_eps", "initializer_range"):
            value = getattr(self, field)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{field} must be a finite number > 0, got {value}")
        if self.eval_mask_seed is not None and self.eval_mask_seed < 0:
            raise ValueError(f"eval_mask_seed must be None or an integer >= 0, got {self.eval_mask_seed}")
        height, width = _pair(self.image_size)
        if min(height, width, self.patch_size, self.num_channels) < 1:
            raise ValueError(f"image_size, patch_size and num_channels must be positive, got image_size="
                             f"{self.image_size}, patch_size={self.patch_size}, num_channels={self.num_channels}")
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        for width_field, heads_field in (("hidden_size", "num_attention_heads"),
                                         ("decoder_hidden_size", "decoder_num_attention_heads")):
            dim, heads = getattr(self, width_field), getattr(self, heads_field)
            if heads < 1 or dim % heads:
                raise ValueError(f"{width_field} ({dim}) must be divisible by {heads_field} ({heads})")
            if dim % 4:  # the 2-D sin-cos embedding splits the width into 4 equal parts
                raise ValueError(f"{width_field} must be divisible by 4 for 2-D sin-cos positions, got {dim}")
        for field in ("num_hidden_layers", "decoder_num_hidden_layers"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}")
        if self.classifier_head not in ("linear_probe", "finetune"):
            raise ValueError(f"classifier_head must be 'linear_probe' or 'finetune', got {self.classifier_head!r}")
        if self.add_fpn and len(self.out_indices) != 4:
            raise ValueError(f"add_fpn=True needs exactly 4 out_indices (4x, 2x, 1x, 0.5x maps), got out_indices="
                             f"{self.out_indices}; e.g. out_indices={_fpn_indices(self.num_hidden_layers)}")
        if self.add_fpn and not self.reshape_hidden_states:
            raise ValueError("add_fpn=True needs reshape_hidden_states=True (the pyramid works on 2-D maps)")

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) in pixels, whether `image_size` is an int or a pair."""
        return _pair(self.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches per column and per row at the configured resolution."""
        height, width = self.image_hw
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "MAEConfig":
        """Build a config from a named preset (see `hf_mae.PRESETS`); keyword arguments override fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


__all__ = ["MAEConfig", "PRESETS"]
