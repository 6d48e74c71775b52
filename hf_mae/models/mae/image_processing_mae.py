"""MAEImageProcessor (PIL backend), MAEImageProcessorFast (torch, no torchvision) and the patch arithmetic
shared with the model's loss.

`patchify` / `normalize_patches` here are the one implementation of patching and per-patch normalisation:
the model's loss imports them, the processor exposes them for targets and for turning predictions back
into pictures.

Inputs, for both processors: PIL images of any mode, numpy arrays (H, W), (H, W, C) or (C, H, W), torch
tensors (C, H, W) or (H, W), with 1, 3 or 4 (RGBA) channels, whatever the processor's channel count. Arrays
are pictures: uint8 as is, floats in [0, 1] scaled by 255, floats in [0, 255] as is, 16-bit integers / 257
(negative values are refused: normalised tensors go to the model, not the processor); they are rounded to
8 bits (PIL resamples in 8 bits anyway), then converted to "L" or "RGB" exactly as a PIL image of the same
pixels would be. So an RGB array given to a 1-channel processor gives its luminance.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs

from .card_mae import push_saved

try:  # transformers >= 5.25 names the per-image result of semantic-segmentation post-processing
    from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput as _SegmentationOutput
except ImportError:
    _SegmentationOutput = BatchFeature


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


def _as_uint8(array: np.ndarray) -> np.ndarray:
    """An array's pixels as 8 bits: uint8 as is; floats in [0, 1] x 255, in [0, 255] as is; integers up to 255
    as is, up to 65535 (16-bit) / 257. Anything else (negative: already normalised?) is refused."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the image holds NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    is_float = np.issubdtype(array.dtype, np.floating)
    if low < 0 or high > (255 if is_float else 65535):
        raise ValueError(f"image values must be pixels (floats in [0, 1] or [0, 255], integers 0..255 or 16-bit), "
                         f"got {array.dtype} in [{low:g}, {high:g}]; already normalised tensors go to the model "
                         f"directly, not through the processor")
    if is_float and high <= 1:
        values = values * 255
    elif not is_float and high > 255:
        values = values / 257  # 16-bit, as PIL's I;16 images (see _to_uint8)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_channels_first(image, num_channels: int) -> np.ndarray:
    """Any supported image (see the module docstring) -> a (num_channels, H, W) uint8 array.

    Channel counts other than 1 and 3 (multispectral data) pass through as given, channels first."""
    if isinstance(image, Image.Image):
        return _hwc_to_chw(np.asarray(convert_image_mode(image, num_channels)))
    is_tensor = isinstance(image, torch.Tensor)
    array = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 1 and array.shape[1] > 4 and array.shape[2] > 4:
        array = array[0]  # (1, H, W)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim != 3:
        raise ValueError(f"an image must be (H, W), (H, W, C) or (C, H, W), got shape {array.shape}")
    channels_last = array.shape[-1] in (1, 3, 4) and not (is_tensor and array.shape[0] in (1, 3, 4))
    if not channels_last and array.shape[0] not in (1, 3, 4):
        if array.shape[0] == num_channels:  # e.g. 5-band data for a 5-channel model: taken as is
            return array
        raise ValueError(f"cannot tell the channel axis of an image of shape {array.shape}: expected 1, 3 or "
                         f"4 channels first or last")
    hwc = array if channels_last else np.moveaxis(array, 0, -1)
    if num_channels not in (1, 3):
        if hwc.shape[-1] != num_channels:
            raise ValueError(f"expected {num_channels} channels, got an image of shape {array.shape}")
        return np.moveaxis(hwc, -1, 0)
    hwc = _as_uint8(hwc)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[hwc.shape[-1]]
    picture = Image.fromarray(hwc[..., 0] if mode == "L" else np.ascontiguousarray(hwc), mode=mode)
    return _hwc_to_chw(np.asarray(convert_image_mode(picture, num_channels)))


def _hwc_to_chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


class MAEImageProcessorKwargs(ImagesKwargs, total=False):
    patch_size: int
    num_channels: int
    crop_pct: float


MAEImageProcessorFastKwargs = MAEImageProcessorKwargs  # transformers looks the kwargs class up by processor name


class MAEImageProcessor(PilBackend):
    """Resize (shortest edge), center crop, rescale and normalise with PIL/NumPy; plus patch normalisation.

    Defaults are the official evaluation transform for 224 px: resize to 256 (bicubic), crop 224, ImageNet
    mean/std. `MAEImageProcessor.for_config(config)` sizes it for any `MAEConfig`.

    `size` follows the convention transformers' example programs read (`size["shortest_edge"]`, or height /
    width, is the model's input): with `crop_pct` (ConvNeXt's field), the shortest edge is first resized to
    `size["shortest_edge"] / crop_pct` (224 / 0.875 = 256), then center-cropped to `crop_size`. A processor
    given the resize edge itself (`size={"shortest_edge": 256}` with a 224 crop and no `crop_pct`, as saved
    before `crop_pct` existed) is read as `shortest_edge=224, crop_pct=224/256`: the same preprocessing.

    `do_convert_rgb`: None (default) or True converts every input to the processor's mode ("L" or "RGB", see
    `convert_image_mode`); False keeps an image's channels as given (e.g. 4-channel arrays pass unchanged).
    """

    valid_kwargs = MAEImageProcessorKwargs
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 224}
    crop_pct = 0.875
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = None  # None / True: `convert_image_mode` to the processor's channels; False: as given
    patch_size = 16
    num_channels = 3

    @classmethod
    def for_config(cls, config, crop_pct: float = 0.875, **kwargs) -> "MAEImageProcessor":
        """A processor matching `config` (crop = image_size, resize = image_size / crop_pct, channels)."""
        height, width = (config.image_size,) * 2 if isinstance(config.image_size, int) else config.image_size
        defaults = {
            "size": {"shortest_edge": min(height, width)},
            "crop_pct": crop_pct,
            "crop_size": {"height": height, "width": width},
            "patch_size": config.patch_size,
            "num_channels": config.num_channels,
        }
        if config.num_channels != 3:
            mean, std = np.mean(IMAGENET_DEFAULT_MEAN), np.mean(IMAGENET_DEFAULT_STD)
            defaults["image_mean"] = [float(mean)] * config.num_channels
            defaults["image_std"] = [float(std)] * config.num_channels
        return cls(**{**defaults, **kwargs})

    def __init__(self, **kwargs):
        size = kwargs.get("size")
        if isinstance(size, dict) and "height" in size and "crop_size" not in kwargs:
            kwargs["crop_size"] = dict(size)  # a fixed output size: no crop to another size behind it
        _resize_edge_as_crop_pct(kwargs)
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, image_processor_dict: dict, **kwargs):
        """Saved processors without `crop_pct` predate the `do_convert_rgb` switch: their stored False meant
        "convert to the processor's mode", which is now None."""
        if "crop_pct" not in image_processor_dict and image_processor_dict.get("do_convert_rgb") is False:
            image_processor_dict = {**image_processor_dict, "do_convert_rgb": None}
        return super().from_dict(image_processor_dict, **kwargs)

    def resize(self, image, size, resample=None, **kwargs):
        """The shortest edge goes to `size["shortest_edge"] / crop_pct` when `crop_pct` is set."""
        if self.crop_pct and getattr(size, "shortest_edge", None) and not getattr(size, "longest_edge", None):
            size = SizeDict(shortest_edge=int(round(size.shortest_edge / self.crop_pct)))
        return super().resize(image, size, resample, **kwargs)

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        """transformers' batching rules, plus single-band (H, W) arrays and tensors (one image each)."""
        def two_d(x):
            return isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 2
        if two_d(images):
            return [images]
        if isinstance(images, (list, tuple)) and images and all(two_d(x) for x in images):
            return list(images)
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def process_image(self, image, *args, num_channels: int | None = None, do_convert_rgb: bool | None = None,
                      **kwargs) -> np.ndarray:
        """Any supported input (see the module docstring) -> (C, H, W) uint8 at the processor's channels, or
        with the image's own channels when `do_convert_rgb=False`."""
        if do_convert_rgb is False and not isinstance(image, Image.Image):
            return super().process_image(image, *args, do_convert_rgb=False, **kwargs)
        channels = self.num_channels if num_channels is None else num_channels
        kwargs.pop("input_data_format", None)  # the layout is inferred by `to_channels_first`
        return to_channels_first(image, channels)

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) of every output, or None when it follows the input (resize by edge, no crop)."""
        return _output_size(self)

    def check_matches(self, config) -> None:
        """Raise a ValueError naming both sides when this processor's output does not fit the model of
        `config`; see `check_processor_matches`."""
        check_processor_matches(self, config)

    def push_to_hub(self, repo_id: str, *, max_shard_size=None, tags: list[str] | None = None, **hub_kwargs):
        """Upload the processor's files in one commit and leave the repo's model card as it is (transformers'
        push_to_hub would replace hf_mae's card with its generic one). `max_shard_size` and `tags` are
        transformers' model-card and weight options: a processor has neither."""
        return push_saved(self, repo_id, **hub_kwargs)

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores=False):
        """Per-pixel class ids (H, W) of each image from a segmentation model's `logits` (B, classes, h, w),
        resized (bilinear, on the logits) to `target_sizes[i]` (height, width) when given (what the
        image-segmentation pipeline calls). With `return_segmentation_scores`, each item also carries the
        per-class scores (classes, H, W) it was taken from."""
        logits = outputs.logits
        if target_sizes is not None and len(target_sizes) != len(logits):
            raise ValueError(f"{len(target_sizes)} target sizes for {len(logits)} images")
        results = []
        for i, scores in enumerate(logits):
            if target_sizes is not None:
                scores = F.interpolate(scores[None].float(), size=tuple(int(v) for v in target_sizes[i]),
                                       mode="bilinear", align_corners=False)[0]
            segmentation = scores.argmax(dim=0)
            results.append(_SegmentationOutput({"segmentation": segmentation, "segmentation_scores": scores})
                           if return_segmentation_scores else segmentation)
        return results

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


def _resize_edge_as_crop_pct(kwargs: dict) -> None:
    """`size={"shortest_edge": E}` with a smaller center crop C and no `crop_pct` (the resize edge given as
    `size`) becomes `size={"shortest_edge": C}, crop_pct=C / E`, which resizes to E as before."""
    size, crop = kwargs.get("size"), kwargs.get("crop_size")
    if kwargs.get("crop_pct") is not None or not kwargs.get("do_center_crop", True):
        return
    if not (isinstance(size, dict) and set(size) == {"shortest_edge"} and isinstance(crop, dict)):
        return
    edge, side = size["shortest_edge"], min(crop["height"], crop["width"])
    if edge > side:
        kwargs["size"], kwargs["crop_pct"] = {"shortest_edge": side}, side / edge
    else:
        kwargs["crop_pct"] = None  # the edge is the resize target itself


def _output_size(processor) -> tuple[int, int] | None:
    """(height, width) of every output of a transformers image processor, or None when it follows the input."""
    crop, size = getattr(processor, "crop_size", None), getattr(processor, "size", None)
    if getattr(processor, "do_center_crop", False) and crop:
        return crop["height"], crop["width"]
    if getattr(processor, "do_resize", False) and size and "height" in size:
        return size["height"], size["width"]
    return None


def check_processor_matches(processor, config) -> None:
    """Raise a ValueError naming both sides when `processor` (an MAEImageProcessor, or any transformers image
    processor, e.g. the ViTImageProcessor of a converted folder) does not produce what the model of `config`
    (an MAEConfig) takes: output height x width vs `image_size`, channels vs `num_channels`, and, for an
    MAEImageProcessor, its `patch_size` (used for targets and reconstructions)."""
    model_hw = tuple(config.image_hw)
    output = _output_size(processor)
    channels = getattr(processor, "num_channels", None)
    if channels is None and isinstance(getattr(processor, "image_mean", None), (list, tuple)):
        channels = len(processor.image_mean)
    problems = []
    if output is None:
        problems.append(f"the processor's output size follows the input (size={processor.size}, do_center_crop="
                        f"{getattr(processor, 'do_center_crop', None)}), the model takes {model_hw[0]}x{model_hw[1]}")
    elif tuple(output) != model_hw:
        problems.append(f"the processor outputs {output[0]}x{output[1]} pixels, the model takes "
                        f"{model_hw[0]}x{model_hw[1]} (image_size={config.image_size})")
    if channels is not None and channels != config.num_channels:
        problems.append(f"the processor outputs {channels} channel(s), the model takes {config.num_channels} "
                        f"(num_channels)")
    patch = getattr(processor, "patch_size", None)
    if isinstance(processor, MAEImageProcessor) and patch != config.patch_size:
        problems.append(f"the processor's patch_size is {patch}, the model's {config.patch_size}")
    if problems:
        raise ValueError("image processor and model disagree: " + "; ".join(problems) +
                         ". Build a matching processor with MAEImageProcessor.for_config(config).")


class MAEImageProcessorFast(MAEImageProcessor):
    """The same processor with torch tensors (no torchvision needed): crop, rescale and normalise run
    batched, on any device (`device=`), and return tensors directly. The resize stays Pillow's, image by
    image, so outputs equal `MAEImageProcessor`'s (to float32 rounding, < 1e-5): torch's bicubic differs from
    Pillow's, and features should not depend on which backend loaded the processor. AutoImageProcessor picks
    it for `use_fast=True` / `backend="torchvision"`, and by default where torchvision is installed. Saved,
    it is an `MAEImageProcessor` config: the backend is a choice made when loading."""

    @property
    def backend(self) -> str:
        return "torchvision"

    def _preprocess(self, images, do_resize, size, resample, do_center_crop, crop_size, do_rescale,
                    rescale_factor, do_normalize, image_mean, image_std, return_tensors=None, device=None,
                    **kwargs) -> BatchFeature:
        out = []
        for image in images:  # (C, H, W) uint8 each; sizes may differ until resized / cropped
            if do_resize:
                image = self.resize(image, size, resample)  # Pillow, 8-bit, as the PIL backend
            x = torch.as_tensor(np.ascontiguousarray(image), device=device)
            if do_center_crop:
                x = _center_crop(x, crop_size.height, crop_size.width)
            out.append(x)
        shapes = {tuple(x.shape) for x in out}
        pixels = torch.stack(out) if len(shapes) == 1 else None
        batch = [pixels] if pixels is not None else out
        for i, x in enumerate(batch):
            x = x.to(torch.float64)
            if do_rescale:
                x = x * rescale_factor
            x = x.to(torch.float32)
            if do_normalize:
                mean = torch.as_tensor(image_mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
                std = torch.as_tensor(image_std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
                x = (x - mean) / std
            batch[i] = x
        pixel_values = batch[0] if pixels is not None else batch
        if return_tensors is None and pixels is not None:
            pixel_values = list(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values}, tensor_type=return_tensors)

    def to_dict(self):
        out = super().to_dict()
        out["image_processor_type"] = "MAEImageProcessor"
        if "AutoImageProcessor" in out.get("auto_map", {}):
            out["auto_map"] = {**out["auto_map"], "AutoImageProcessor": "image_processing_mae.MAEImageProcessor"}
        return out


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """transformers' center crop on (C, H, W): offsets (H - h) // 2, zero padding when the image is smaller."""
    in_h, in_w = x.shape[-2:]
    if in_h < height or in_w < width:
        pad_h, pad_w = max(height - in_h, 0), max(width - in_w, 0)
        top, left = math.ceil(pad_h / 2), math.ceil(pad_w / 2)
        x = F.pad(x, (left, pad_w - left, top, pad_h - top))
        in_h, in_w = x.shape[-2:]
    top, left = (in_h - height) // 2, (in_w - width) // 2
    return x[..., top:top + height, left:left + width]


__all__ = ["MAEImageProcessor", "MAEImageProcessorFast", "MAEImageProcessorKwargs", "check_processor_matches",
           "convert_image_mode", "to_channels_first", "patchify", "unpatchify", "normalize_patches",
           "denormalize_patches"]
