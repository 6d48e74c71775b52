"""MAE (He et al. 2022) as transformers models: the encoder, the pretraining model and the classifier.

Layout and state-dict names follow the official `models_mae.py` (`patch_embed.proj`, `blocks.i.attn.qkv`,
`decoder_blocks.i`), so converting official or timm weights is a rename. Masking convention: 1 = removed.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .card_mae import upload_folder, write_model_card
from .configuration_mae import MAEConfig
from .image_processing_mae import normalize_patches, patchify, unpatchify
from .layers_mae import MAEBlock

# The remote-code unit: every file of this folder that a saved checkpoint carries (only sibling imports).
CODE_FILES = tuple(sorted(path.name for path in Path(__file__).parent.glob("*_mae.py")))
AUTO_MAP = {
    "AutoConfig": "configuration_mae.MAEConfig",
    "AutoModel": "modeling_mae.MAEModel",
    "AutoModelForPreTraining": "modeling_mae.MAEForPreTraining",
    "AutoModelForImageClassification": "classification_mae.MAEForImageClassification",
    "AutoImageProcessor": "image_processing_mae.MAEImageProcessor",
    "AutoBackbone": "backbone_mae.MAEBackbone",
}


def sincos_pos_embed(dim: int, grid_size: tuple[int, int], device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (1, 1 + rows*cols, dim), a zero row first for the CLS token.

    Same values as the official code: each half of the vector is a 1-D embedding [sin | cos] with
    omega_k = 1 / 10000^(k / (dim/4)); the first half encodes the column index, the second the row.
    """
    rows, cols = grid_size
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64, device=device) / (dim / 4))
    row_idx, col_idx = torch.meshgrid(torch.arange(rows, dtype=torch.float64, device=device),
                                      torch.arange(cols, dtype=torch.float64, device=device), indexing="ij")
    col_angles = col_idx.reshape(-1, 1) * omega  # (N, dim/4), patches in row-major order
    row_angles = row_idx.reshape(-1, 1) * omega
    emb = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    emb = torch.cat([emb.new_zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0).float()


def masking_indices(batch: int, length: int, mask_ratio: float, noise: torch.Tensor | None = None,
                    device=None, dtype=torch.float32):
    """Per-sample random masking by argsort of noise; keeps the `int(L * (1 - mask_ratio))` lowest-noise tokens.

    Returns ids_keep (B, K) in shuffled order, mask (B, L) with 1 = removed, and ids_restore (B, L).
    """
    if not 0 <= mask_ratio < 1:  # also catches NaN
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    len_keep = int(length * (1 - mask_ratio))
    if len_keep < 1:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no patch out of {length}")
    if noise is None:
        noise = torch.rand(batch, length, device=device)
    else:
        check_noise(noise, batch, length)
    ids_shuffle = torch.argsort(noise.to(device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(batch, length, device=device, dtype=dtype)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def check_noise(noise: torch.Tensor, batch: int, length: int) -> None:
    """`noise` must be a float (B, L) tensor of finite values. The finiteness check runs on CPU tensors only:
    on an accelerator it would stall the queue every step (the pretraining loop passes device noise)."""
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point():
        raise ValueError(f"noise must be a floating-point tensor, got {getattr(noise, 'dtype', type(noise))}")
    if noise.shape != (batch, length):
        raise ValueError(f"noise must have shape {(batch, length)}, got {tuple(noise.shape)}")
    if noise.device.type == "cpu" and not torch.isfinite(noise).all():
        raise ValueError("noise holds NaN or infinite values")


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B or 1, L, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(x.expand(ids.shape[0], -1, -1), 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Per-sample random masking of tokens x (B, L, D) (the official `random_masking`).

    Returns kept tokens (B, K, D), mask (B, L) with 1 = removed, and ids_restore (B, L).
    """
    ids_keep, mask, ids_restore = masking_indices(x.shape[0], x.shape[1], mask_ratio, noise, x.device, x.dtype)
    return gather_tokens(x, ids_keep), mask, ids_restore


class PatchEmbed(nn.Module):
    """Per-patch linear projection, kept as a Conv2d parameter (the official and timm layout) but applied as
    one matmul on patch vectors: masked patches are then never embedded (the same result as embedding all
    and dropping some, as the official code does, for a quarter of the work at 75% masking), and a large
    matmul beats a stride-p convolution on GPUs (cuDNN spent ~3.5 ms of a 59 ms ViT-B step there)."""

    def __init__(self, config: MAEConfig):
        super().__init__()
        self.patch_size = p = config.patch_size
        self.proj = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=p, stride=p)

    def forward(self, pixel_values: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D) tokens in row-major patch order, or (B, K, D) for the patches `ids_keep`."""
        batch, channels, height, width = pixel_values.shape
        p = self.patch_size
        patches = pixel_values.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, -1, channels * p * p)  # (c, i, j) inside a patch: the conv weight's order
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


@dataclass
class MAEModelOutput(ModelOutput):
    """Encoder output. `mask` / `ids_restore` are None when no masking was asked for."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class MAEForPreTrainingOutput(ModelOutput):
    """Pretraining output. Unpacks as the seed's triple: `loss, logits, mask = model(pixel_values)`.

    `logits` are per-patch predictions (B, N, p*p*C) for all patches (normalised-patch space with norm-pix).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    def __iter__(self):
        return iter((self.loss, self.logits, self.mask))


class MAEPreTrainedModel(PreTrainedModel):
    config_class = MAEConfig
    config: MAEConfig
    base_model_prefix = "encoder"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MAEBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        """Official MAE init: xavier-uniform Linear (and patch conv seen as Linear), normal(.02) tokens,
        fixed sin-cos positions. Runs after `from_pretrained` for anything the checkpoint did not hold."""
        if isinstance(module, nn.Linear):
            if hasattr(module, "init_std"):  # classifier heads (set by MAEForImageClassification)
                init.trunc_normal_(module.weight, std=module.init_std)
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):  # the patch embedding, initialised as a Linear on its [D, -1] view
            if not getattr(module.weight, "_is_hf_initialized", False):  # a view loses the loaded-weight flag
                init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            init.zeros_(module.bias)
        elif isinstance(module, nn.ConvTranspose2d):  # the backbone's pyramid (no checkpoint holds it)
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, MAEModel):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            init.copy_(module.pos_embed, sincos_pos_embed(self.config.hidden_size, self.config.grid_size))
        elif isinstance(module, MAEForPreTraining):
            init.normal_(module.mask_token, std=self.config.initializer_range)
            init.copy_(module.decoder_pos_embed,
                       sincos_pos_embed(self.config.decoder_hidden_size, self.config.grid_size))

    def get_input_embeddings(self) -> nn.Module:
        """The patch embedding (what PEFT and transformers utilities take as the input embedding layer)."""
        return self.base_model.patch_embed

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write the full `auto_map`, so the folder loads with every Auto class and `trust_remote_code=True`
        where hf_mae is not installed (transformers copies the code files beside the weights), and a model
        card (README.md) unless the folder already holds a card that `write_model_card` did not write.
        `push_to_hub=True` uploads the folder, card included (see `push_to_hub`)."""
        self.config.auto_map = dict(AUTO_MAP)
        if self._auto_class is None:
            type(self).register_for_auto_class(_auto_class_of(type(self)))
        push = kwargs.pop("push_to_hub", False)
        repo_id = kwargs.pop("repo_id", None)
        hub_kwargs = {k: kwargs.pop(k) for k in ("commit_message", "private", "token", "create_pr") if k in kwargs}
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):  # one writer in multi-process saves, as for the weights
            return result
        for name in CODE_FILES:  # the whole unit: every Auto class in `auto_map` finds its file
            shutil.copyfile(Path(__file__).parent / name, Path(save_directory) / name)
        self.write_model_card(save_directory, repo_id=repo_id)
        if push:
            upload_folder(save_directory, repo_id or Path(save_directory).name, **hub_kwargs)
        return result

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None,
                    commit_description: str | None = None, private: bool | None = None, token=None,
                    revision: str | None = None, create_pr: bool = False, max_shard_size="50GB",
                    tags: list[str] | None = None, **kwargs):
        """Upload weights, config, code files and the hf_mae model card in one commit (transformers' own
        push_to_hub would replace the card with its generic "[More Information Needed]" one). A README.md
        already on the Hub that hf_mae did not write is kept. Returns the commit info."""
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            self.write_model_card(folder, repo_id=repo_id, tags=tags)
            return upload_folder(folder, repo_id, commit_message=commit_message,
                                  commit_description=commit_description, private=private, token=token,
                                  revision=revision, create_pr=create_pr)

    def write_model_card(self, folder, repo_id: str | None = None, tags: list[str] | None = None) -> bool:
        """Write `folder/README.md` (see `card_mae.model_card`) unless a card not written here is there (a user's,
        or hf_mae.hub's fuller one); returns whether it wrote."""
        return write_model_card(self, folder, repo_id=repo_id, tags=tags)

    def _prepare_pixel_values(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Validate (B, C, H, W) input and cast floating input to the model's dtype (fp16 / bf16 / fp64 into an
        fp32 model and so on). Integer images are refused: the model takes what the processor gives
        (rescaled and normalised floats), and guessing a scale would silently change the features.
        Returns the input and its patch grid (rows, cols)."""
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape "
                             f"{tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise ValueError(f"pixel_values must be floating point (rescaled and normalised by "
                             f"MAEImageProcessor), got {pixel_values.dtype}")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values holds an empty batch (0 images)")
        grid = self._check_pixel_values(pixel_values)
        return pixel_values.to(self.dtype), grid

    def patchify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C)."""
        return patchify(pixel_values, self.config.patch_size)

    def unpatchify(self, patches: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W); `image_size` (H, W) defaults to the configured size."""
        p = self.config.patch_size
        grid = self.config.grid_size if image_size is None else (image_size[0] // p, image_size[1] // p)
        return unpatchify(patches, p, grid)

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """Validate (B, C, H, W) input; returns the patch grid (rows, cols)."""
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got shape "
                             f"{tuple(pixel_values.shape)}")
        channels, height, width = pixel_values.shape[1:]
        if channels != self.config.num_channels:
            raise ValueError(f"expected {self.config.num_channels} channels (config.num_channels), got {channels}")
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"image size ({height}, {width}) must be divisible by patch_size {p}")
        return height // p, width // p


def _auto_class_of(cls) -> str:
    return {"MAEModel": "AutoModel", "MAEForPreTraining": "AutoModelForPreTraining",
            "MAEForImageClassification": "AutoModelForImageClassification",
            "MAEBackbone": "AutoBackbone"}[cls.__name__]


class MAEModel(MAEPreTrainedModel):
    """The MAE encoder (a ViT). Masks only when a mask ratio (or noise) is given: features are deterministic
    by default, at any resolution divisible by the patch size (sin-cos positions are regenerated)."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, never trained: a buffer (saved with the weights, as the official checkpoints hold it)
        # in the default dtype like every tensor built here (from_pretrained(dtype=) sets it); _init_weights redoes it
        self.register_buffer("pos_embed", sincos_pos_embed(dim, config.grid_size).to(torch.get_default_dtype()))
        drop_rates = torch.linspace(0, config.drop_path_rate, max(config.num_hidden_layers, 1), device="cpu").tolist()
        self.blocks = nn.ModuleList([
            MAEBlock(config, dim, config.num_attention_heads, config.intermediate_size, drop_rates[i])
            for i in range(config.num_hidden_layers)
        ])
        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.post_init()

    def position_embedding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        if tuple(grid_size) == self.config.grid_size:
            return self.pos_embed
        return sincos_pos_embed(self.config.hidden_size, grid_size, self.pos_embed.device).to(self.pos_embed.dtype)

    def eval_noise(self, batch: int, length: int, device=None) -> torch.Tensor | None:
        """Masking noise for eval mode: the same masks on every evaluation (seeded by `config.eval_mask_seed`),
        so validation losses compare; None (fresh random masks) in training mode or when the seed is None."""
        if self.training or self.config.eval_mask_seed is None:
            return None
        generator = torch.Generator().manual_seed(self.config.eval_mask_seed)
        return torch.rand(batch, length, generator=generator).to(device)

    def forward_tokens(self, pixel_values, mask_ratio=None, noise=None, output_attentions=False,
                       output_hidden_states=False):
        """Tokens before the final norm, (B, 1 + K, D), plus mask, ids_restore, hidden states, attentions."""
        pixel_values, grid = self._prepare_pixel_values(pixel_values)
        pos = self.position_embedding(grid)
        mask = ids_restore = None
        if mask_ratio or noise is not None:  # mask first: only the kept patches are embedded
            ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
            if noise is None:
                noise = self.eval_noise(pixel_values.shape[0], grid[0] * grid[1], pixel_values.device)
            ids_keep, mask, ids_restore = masking_indices(pixel_values.shape[0], grid[0] * grid[1], ratio, noise,
                                                          pixel_values.device, pixel_values.dtype)
            x = self.patch_embed(pixel_values, ids_keep) + gather_tokens(pos[:, 1:], ids_keep)  # (B, K, D)
        else:
            x = self.patch_embed(pixel_values) + pos[:, 1:]  # (B, N, D): each token carries its own position
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        hidden_states, attentions = [], []
        for block in self.blocks:
            if output_hidden_states:
                hidden_states.append(x)
            x, weights = block(x, output_attentions)
            if output_attentions:
                attentions.append(weights)
        if output_hidden_states:
            hidden_states.append(x)
        return x, mask, ids_restore, tuple(hidden_states) or None, tuple(attentions) or None

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """timm's meaning: all tokens after the final norm, (B, 1 + N, D), CLS first; no masking."""
        return self.norm(self.forward_tokens(pixel_values)[0])

    def forward(self, pixel_values: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs):
        """pixel_values (B, C, H, W). `mask_ratio` masks that fraction of patches (None or 0: no masking);
        `noise` (B, N) fixes which patches are kept (lowest noise first), with `config.mask_ratio` when no
        ratio is given."""
        output_attentions = output_attentions or self.config.output_attentions
        output_hidden_states = output_hidden_states or self.config.output_hidden_states
        x, mask, ids_restore, hidden_states, attentions = self.forward_tokens(
            pixel_values, mask_ratio, noise, output_attentions, output_hidden_states)
        x = self.norm(x)
        output = MAEModelOutput(last_hidden_state=x, pooler_output=x[:, 0], mask=mask, ids_restore=ids_restore,
                                hidden_states=hidden_states, attentions=attentions)
        return output if return_dict is not False else output.to_tuple()


class MAEForPreTraining(MAEPreTrainedModel):
    """Encoder + light decoder + masked-patch MSE (per-patch normalised targets when `norm_pix_loss`)."""

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        self.encoder = MAEModel(config)
        dim = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(config.hidden_size, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed(dim, config.grid_size).to(torch.get_default_dtype()))
        self.decoder_blocks = nn.ModuleList([
            MAEBlock(config, dim, config.decoder_num_attention_heads, config.decoder_intermediate_size)
            for _ in range(config.decoder_num_hidden_layers)
        ])
        self.decoder_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(dim, config.patch_size**2 * config.num_channels)
        self.post_init()

    def decoder_position_embedding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        if tuple(grid_size) == self.config.grid_size:
            return self.decoder_pos_embed
        pos = sincos_pos_embed(self.config.decoder_hidden_size, grid_size, self.decoder_pos_embed.device)
        return pos.to(self.decoder_pos_embed.dtype)

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid_size: tuple[int, int]):
        """latent (B, 1 + K, D) -> per-patch predictions (B, N, p*p*C) for all N patches."""
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        batch, num_patches = ids_restore.shape
        mask_tokens = self.mask_token.to(x.dtype).expand(batch, num_patches + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, N, Dd) in shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_position_embedding(grid_size)
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, pixel_values: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the patch vector, averaged over masked patches only (in fp32)."""
        target = self.patchify(pixel_values).float()
        if self.config.norm_pix_loss:
            target = normalize_patches(target)[0]
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, pixel_values: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                return_loss: bool = True, **kwargs):
        """pixel_values (B, C, H, W). Masks: `noise` (B, N) when given; else fresh random masks in training
        mode and, in eval mode, the fixed masks of `config.eval_mask_seed` (see `MAEModel.eval_noise`).
        The loss is always computed; `return_loss=True` in the signature is how transformers' Trainer learns
        that this model returns a loss without labels, so `Trainer.evaluate()` reports `eval_loss`."""
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        if not 0 < ratio < 1:
            raise ValueError(f"pretraining needs 0 < mask_ratio < 1 (the loss is computed on masked patches "
                             f"only), got {ratio}")
        pixel_values, grid = self._prepare_pixel_values(pixel_values)
        encoded = self.encoder(pixel_values, mask_ratio=ratio, noise=noise, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states)
        pred = self.forward_decoder(encoded.last_hidden_state, encoded.ids_restore, grid)
        loss = self.forward_loss(pixel_values, pred, encoded.mask)
        output = MAEForPreTrainingOutput(loss=loss, logits=pred, mask=encoded.mask,
                                         ids_restore=encoded.ids_restore, hidden_states=encoded.hidden_states,
                                         attentions=encoded.attentions)
        return output if return_dict is not False else (loss, pred, encoded.mask)


__all__ = ["MAEModel", "MAEForPreTraining", "MAEPreTrainedModel", "sincos_pos_embed", "random_masking",
           "masking_indices"]
