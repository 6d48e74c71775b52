"""MAEImageProcessor (PIL backend, no torchvision) and the patch arithmetic shared with the model's loss.

`patchify` / `normalize_patches` here are the one implementation of patching and per-patch normalisation:
the model's loss imports them, the processor exposes them for targets and for turning predictions back
into pictures.
"""

import numpy as np
import torch
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, channels last inside a patch (official)."""
    batch, channels, height, width = images.shape
    rows, cols = height // patch_size, width // patch_size
    x = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(batch, rows * cols, patch_size * patch_size * channels)


def unpatchify(patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int]) -> torch.Tensor:
    """(B, N, p*p*C) -> (B, C, H, W); `grid_size` is (rows, cols) of patches, needed for non-square images."""
    batch, num_patches, dim = patches.shape
    rows, cols = grid_size
    if rows * cols != num_patches:
        raise ValueError(f"grid_size {grid_size} holds {rows * cols} patches, got {num_patches}")
    channels = dim // (patch_size * patch_size)
    x = patches.reshape(batch, rows, cols, patch_size, patch_size, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(batch, channels, rows * patch_size, cols * patch_size)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6):
    """Per-patch normalised targets `(x - mean) / sqrt(var + eps)` with unbiased variance, as the paper.

    Returns `(targets, mean, var)`, statistics of shape (B, N, 1), so `denormalize_patches` can invert it.
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt(), mean, var


def denormalize_patches(patches: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-6):
    """Inverse of `normalize_patches` given the statistics it returned."""
    return patches * (var + eps).sqrt() + mean


def _to_uint8(img: Image.Image) -> Image.Image:
    """Scale a 16-bit / 32-bit int / float single-band image to 8 bits without clipping the top away.

    I;16*: the full 16-bit range (x / 257). I: as 8-bit if within 0..255, as 16-bit if within 0..65535, else
    its own min..max. F: x * 255 if within 0..1, as is if within 0..255, else its own min..max.
    """
    a = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = a.astype(np.float32) / 257.0
    else:
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
            out = a * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            out = a
        elif img.mode == "I" and lo >= 0.0 and hi <= 65535.0:
            out = a / 257.0
        else:
            out = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def convert_image_mode(img: Image.Image, num_channels: int = 3) -> Image.Image:
    """Convert any PIL mode to "RGB" (num_channels=3) or "L" (num_channels=1).

    An image already in the target mode is returned as is (a lazily opened JPEG stays undecoded, so the
    train transform can still use reduced decoding). Transparent images are composited on white, as
    transformers' `convert_rgb` does, so train and eval preprocessing agree. High-bit-depth modes are
    rescaled to 8 bits (see `_to_uint8`).
    """
    target = {3: "RGB", 1: "L"}.get(num_channels)
    if target is None:
        raise ValueError(f"num_channels must be 1 or 3 for PIL images, got {num_channels}; pass a (C, H, W) "
                         "numpy array or tensor for other channel counts")
    mode = img.mode
    if mode == target:
        return img
    if mode.startswith("I") or mode == "F":
        return _to_uint8(img).convert(target) if target != "L" else _to_uint8(img)
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert(target)
    try:
        return img.convert(target)
    except ValueError:  # e.g. LAB -> L has no direct conversion
        return img.convert("RGB").convert(target)


class MAEImagesKwargs(ImagesKwargs, total=False):
    patch_size: int
    num_channels: int


class MAEImageProcessor(PilBackend):
    """Resize (shortest edge), center crop, rescale and normalise with PIL/NumPy; plus patch normalisation.

    Defaults are the official evaluation transform for 224 px: resize to 256 (bicubic), crop 224, ImageNet
    mean/std. `MAEImageProcessor.for_config(config)` sizes it for any `MAEConfig`.
    """

    valid_kwargs = MAEImagesKwargs
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = False  # mode conversion is done by `convert_image_mode`, for 1 or 3 channels
    patch_size = 16
    num_channels = 3

    @classmethod
    def for_config(cls, config, crop_pct: float = 0.875, **kwargs) -> "MAEImageProcessor":
        """A processor matching `config` (crop = image_size, resize = image_size / crop_pct, channels)."""
        height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
        defaults = {
            "size": {"shortest_edge": int(round(min(height, width) / crop_pct))},
            "crop_size": {"height": height, "width": width},
            "patch_size": config.patch_size,
            "num_channels": config.num_channels,
        }
        if config.num_channels != 3:
            mean, std = np.mean(IMAGENET_DEFAULT_MEAN), np.mean(IMAGENET_DEFAULT_STD)
            defaults["image_mean"] = [float(mean)] * config.num_channels
            defaults["image_std"] = [float(std)] * config.num_channels
        return cls(**{**defaults, **kwargs})

    def process_image(self, image, *args, num_channels: int | None = None, **kwargs) -> np.ndarray:
        channels = self.num_channels if num_channels is None else num_channels
        if isinstance(image, Image.Image):
            image = convert_image_mode(image, channels)
        return super().process_image(image, *args, **kwargs)

    # --- patch normalisation (targets and inverse) -------------------------------------------------------
    def patchify(self, pixel_values) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C)."""
        return patchify(torch.as_tensor(pixel_values), self.patch_size)

    def unpatchify(self, patches, image_size: tuple[int, int]) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W) for images of `image_size` (H, W)."""
        p = self.patch_size
        return unpatchify(torch.as_tensor(patches), p, (image_size[0] // p, image_size[1] // p))

    def normalize_patches(self, pixel_values, eps: float = 1e-6):
        """The norm-pix targets of a batch: returns (targets (B, N, p*p*C), mean (B, N, 1), var (B, N, 1))."""
        return normalize_patches(self.patchify(pixel_values), eps)

    def postprocess_reconstruction(self, pred, pixel_values, mask, *, norm_pix_loss: bool,
                                   statistics: str | None = None) -> dict[str, torch.Tensor]:
        """Turn per-patch predictions into pictures in [0, 1], (B, C, H, W) each.

        Returns `original`, `masked` (removed patches grey), `reconstruction` (every patch predicted) and
        `reconstruction_visible` (visible patches pasted from the input). With `norm_pix_loss`, predictions
        live in normalised-patch space and need patch statistics, chosen explicitly with `statistics`:
          - "target": each patch's own mean/var (what the official demo shows; it LEAKS the masked patches'
            brightness and contrast into the picture, so it looks better than what the model predicted);
          - "visible": the mean/var over the visible patches of the same image (no leak: only what the model
            saw is used).
        Without norm-pix, predictions are pixels already and `statistics` must be left out.
        """
        pixel_values = torch.as_tensor(pixel_values).float()
        pred, mask = torch.as_tensor(pred).float().detach(), torch.as_tensor(mask).float()
        image_size = tuple(pixel_values.shape[-2:])
        patches = self.patchify(pixel_values)
        if norm_pix_loss:
            if statistics == "target":
                _, mean, var = normalize_patches(patches)
            elif statistics == "visible":
                visible = (1 - mask).unsqueeze(-1)  # (B, N, 1)
                count = visible.sum(dim=1, keepdim=True).clamp(min=1)
                _, patch_mean, patch_var = normalize_patches(patches)
                mean = (patch_mean * visible).sum(dim=1, keepdim=True) / count
                var = (patch_var * visible).sum(dim=1, keepdim=True) / count
            else:
                raise ValueError("with norm_pix_loss=True pass statistics='target' (leaks masked patch "
                                 "statistics) or statistics='visible' (no leak)")
            pred = denormalize_patches(pred, mean, var)
        elif statistics is not None:
            raise ValueError("statistics only applies to norm-pix predictions (norm_pix_loss=True)")
        keep = (1 - mask).unsqueeze(-1)
        grey = torch.zeros_like(patches)  # 0 in normalised space is the dataset mean: a neutral grey
        pictures = {
            "original": patches,
            "masked": patches * keep + grey * (1 - keep),
            "reconstruction": pred,
            "reconstruction_visible": patches * keep + pred * (1 - keep),
        }
        return {name: self._to_unit_range(self.unpatchify(x, image_size)) for name, x in pictures.items()}

    def _to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Undo rescale/normalise: normalised (B, C, H, W) -> [0, 1]."""
        channels = images.shape[1]
        mean = torch.tensor(self.image_mean, dtype=images.dtype).reshape(1, -1, 1, 1)[:, :channels]
        std = torch.tensor(self.image_std, dtype=images.dtype).reshape(1, -1, 1, 1)[:, :channels]
        images = images * std + mean if self.do_normalize else images
        return images.clamp(0, 1)


__all__ = ["MAEImageProcessor", "convert_image_mode", "patchify", "unpatchify", "normalize_patches",
           "denormalize_patches"]
