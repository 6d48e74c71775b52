"""Pixel transforms: the training crop (RandomResizedCrop + flip, uint8 out), the eval resize + centre crop, and
the on-device normalisation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, JpegImagePlugin

from ..models.mae.image_processing_mae import convert_image_mode

try:  # libjpeg-turbo without PIL's overhead: faster than PIL's JPEG decode (BENCHMARKS.md), the same pixels
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None
try:  # the training crop's resize: about twice as fast as PIL's (BENCHMARKS.md), output compared in the tests
    import cv2

    cv2.setNumThreads(1)  # one DataLoader worker, one core: OpenCV's own threads would only compete with the others
except ImportError:  # PIL resizes then
    cv2 = None
logger = logging.getLogger(__name__)


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------------
# Image modes
# --------------------------------------------------------------------------------------------------------


def _target_mode(num_channels: int) -> str:
    mode = {3: "RGB", 1: "L"}.get(num_channels)
    if mode is None:
        raise ValueError(f"num_channels must be 1 or 3 for PIL images, got {num_channels}")
    return mode


# --------------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------------

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _height_width(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _per_channel(values: float | Sequence[float], num_channels: int, what: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if v.size == 1:
        v = np.repeat(v, num_channels)
    if v.size != num_channels:
        raise ValueError(f"{what} has {v.size} values for {num_channels} channels")
    return v


class _ToTensor:
    """uint8 (C, H, W) planes -> normalised float32 (C, H, W) tensor: one contiguous multiply-subtract.

    `mean`/`std` default to ImageNet's for 3 channels, 0.5 otherwise. `scale`/`shift` are the float32
    constants of `(x / 255 - mean) / std == x * scale - shift`, shared with `DeviceNormalize` so both give
    the same bits.
    """

    def __init__(self, mean, std, num_channels: int):
        if mean is None:
            mean = IMAGENET_MEAN if num_channels == 3 else 0.5
        if std is None:
            std = IMAGENET_STD if num_channels == 3 else 0.5
        self.mean = _per_channel(mean, num_channels, "mean")
        self.std = _per_channel(std, num_channels, "std")
        self.scale = (1.0 / (255.0 * self.std)).reshape(-1, 1, 1)
        self.shift = (self.mean / self.std).reshape(-1, 1, 1)

    def __call__(self, planes: np.ndarray) -> torch.Tensor:
        out = np.multiply(planes, self.scale, order="C")  # float32, a fresh contiguous array
        out -= self.shift
        return torch.from_numpy(out)


def _planes(img: Image.Image) -> np.ndarray:
    """A uint8 PIL image as contiguous (C, H, W) planes: PIL's `split` hands them out channel-first."""
    data = img.tobytes() if len(img.getbands()) == 1 else b"".join(b.tobytes() for b in img.split())
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, img.height, img.width)


class DeviceNormalize:
    """The other half of `TrainTransform(output="uint8")`, run on the training device before each step.

    `batch["pixel_values"]` (uint8 (B, C, H, W), as the DataLoader delivered it) becomes normalised float32,
    bit for bit what `TrainTransform(output="float")` computes in the workers; then the random erasing the
    workers drew (`batch["erase"]`: one `(top, left, height, width, noise_seed)` or None per image) fills its
    rectangles with N(0, 1) noise from a generator seeded per image, on the device. A batch that is not
    uint8 (the loop's placeholder for a batch of undecodable images) is returned as it is.
    """

    def __init__(self, mean=None, std=None, num_channels: int = 3):
        constants = _ToTensor(mean, std, num_channels)
        self.scale, self.shift = torch.from_numpy(constants.scale), torch.from_numpy(constants.shift)
        self.num_channels = num_channels

    def __call__(self, batch: dict) -> dict:
        pixels = batch["pixel_values"]
        if pixels.dtype != torch.uint8:
            return batch
        device = pixels.device
        if self.scale.device != device:
            self.scale, self.shift = self.scale.to(device), self.shift.to(device)
        out = pixels.float().mul_(self.scale).sub_(self.shift)  # (B, C, H, W) float32
        erase = batch.get("erase") or ()
        for i, box in enumerate(erase):
            if box is not None:
                top, left, height, width, seed = box
                generator = torch.Generator(device=device).manual_seed(seed)
                out[i, :, top:top + height, left:left + width] = torch.randn(
                    (out.shape[1], height, width), generator=generator, device=device)
        return {**{k: v for k, v in batch.items() if k != "erase"}, "pixel_values": out}


def _simplejpeg_array(img: JpegImagePlugin.JpegImageFile) -> np.ndarray | None:
    """A lazily opened JPEG decoded by simplejpeg at its (drafted) size and mode, as an (H, W[, C]) uint8
    array; None where simplejpeg does not cover it (CMYK and other modes, no simplejpeg, data it rejects)."""
    colorspace = {"RGB": "RGB", "L": "GRAY"}.get(img.mode)
    if simplejpeg is None or colorspace is None or img.fp is None:
        return None
    width, height = img.size
    try:
        img.fp.seek(0)
        array = simplejpeg.decode_jpeg(img.fp.read(), colorspace=colorspace, min_height=height, min_width=width)
    except (ValueError, OSError):  # let PIL decode it, or raise its own error for a broken file
        return None
    if array.shape[:2] != (height, width):
        return None
    img.close()
    return array[..., 0] if colorspace == "GRAY" else array


def decode_jpeg(img: JpegImagePlugin.JpegImageFile) -> Image.Image:
    """Decode a lazily opened JPEG with simplejpeg, at the (drafted) size and mode PIL would decode it to.

    Same pixels as PIL's own decode (both are libjpeg-turbo with the same settings). PIL decodes what
    simplejpeg does not cover (CMYK and other modes, no simplejpeg installed, data simplejpeg rejects).
    """
    array = _simplejpeg_array(img)
    return img if array is None else Image.fromarray(array)


def resize_box(array: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """OpenCV resize of the `box` (left, top, right, bottom) of an (H, W[, C]) uint8 array to `size` (width,
    height): area averaging where both sides shrink, bicubic otherwise. A box with fractional corners (a crop
    scaled to a reduced decode) is rounded to whole pixels: the crop moves by less than half an output pixel.

    PIL's bicubic widens its kernel when it shrinks (antialiasing); OpenCV's does not and aliases, so a
    shrinking crop is area-averaged instead. Against PIL's bicubic on photo-like JPEGs the result differs by
    0.7-1.0 grey levels on average, less than PIL's own bilinear differs from its bicubic (BENCHMARKS.md).
    """
    left, top, right, bottom = (int(round(v)) for v in box)
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    crop = array[top:bottom, left:right]
    shrink = crop.shape[1] > size[0] and crop.shape[0] > size[1]
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def random_box(width: int, height: int, area: tuple[float, float], ratio: tuple[float, float],
               generator: torch.Generator | None = None, whole: bool = True) -> tuple[int, int, int, int] | None:
    """A random box in a width x height image: up to 10 draws of a uniform fraction `area` of the image with a
    log-uniform width/height ratio in `ratio`; (left, top, w, h) of the first that fits, uniformly placed, else
    None. `whole=False` rejects boxes as wide or as tall as the image (random erasing's rule)."""
    def uniform(low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=generator).item()

    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = width * height * uniform(*area)
        aspect = math.exp(uniform(*log_ratio))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width - (not whole) and 0 < h <= height - (not whole):
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return left, top, w, h
    return None


class TrainTransform:
    """MAE pretraining augmentation: RandomResizedCrop + horizontal flip (+ normalise), on decoded pixels.

    Decoding: JPEGs by simplejpeg where it can, other images by PIL. For a JPEG that is not decoded yet and
    whose crop is at least twice the output size, `Image.draft` makes libjpeg decode at 1/2, 1/4 or 1/8 scale
    (DCT scaling) and the crop box is scaled to match: several times faster on large photos, output nearly
    identical (mean absolute difference ~0.3/255 on photo-like images, ~2.5/255 on pure noise).

    Resizing the crop: `resize="opencv"` (the default where OpenCV is installed, bicubic interpolation only)
    uses `resize_box`: ~1.8x faster than PIL, within ~1 grey level of PIL's bicubic on average (see there);
    `resize="pil"` is one `Image.resize(..., box=crop)` call.

    Output: `output="uint8"` (default, what the training programs use) gives the uint8 pixels (num_channels,
    height, width): a quarter of the bytes through worker IPC, pinned memory and the copy to the device, where
    `DeviceNormalize` (`self.normalizer()`) normalises whole batches. `output="float"` normalises each image in
    the worker instead (float32 (num_channels, height, width)), bit for bit the same values: the reference the
    tests and benchmarks compare the uint8 path against.

    Randomness comes from torch: the default generator, or `generator` if given. `torch.manual_seed` (or
    `accelerate.utils.set_seed`) makes it reproducible, and DataLoader workers are seeded per worker by
    torch, so workers draw different crops; `hf_mae.data.train_loader` seeds every image instead (by seed, epoch
    and index), which the training programs use. Crop sampling follows the standard RandomResizedCrop: up to 10
    tries of area in `scale` x image area and log-uniform aspect ratio in `ratio`, then a centre crop with
    the ratio clamped to `ratio`.

    `size` is an int or (height, width). `mean`/`std` default to ImageNet's for 3 channels, 0.5 otherwise.
    `augment` (PIL image -> PIL image) runs after the crop and flip, `erase` (`hf_mae.augment.RandomErasing`)
    after the normalisation: the fine-tuning recipe's RandAugment and random erasing. With uint8 output the
    erasing is drawn here, from the same random stream (probability, rectangle, then a seed for its noise),
    and applied on the device by `DeviceNormalize`: the item is then `{"pixel_values": pixels, "erase":
    (top, left, height, width, noise_seed) or None}`, and an image's erasing, like its crop, depends only on
    the image's seed (exact resume). The noise itself is drawn by the device's generator from that seed.
    """

    accepts_any_mode = True  # converts the mode itself, after the reduced-decoding decision

    def __init__(self, size: int | Sequence[int], scale: tuple[float, float] = (0.2, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: bool = True,
                 mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None,
                 num_channels: int = 3, interpolation: str | int = "bicubic", draft: bool = True,
                 generator: torch.Generator | None = None,
                 augment: Callable[[Image.Image], Image.Image] | None = None,
                 erase: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 output: str = "uint8", resize: str = "opencv"):
        if output not in ("float", "uint8"):
            raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
        if resize not in ("opencv", "pil"):
            raise ValueError(f"resize must be 'opencv' or 'pil', got {resize!r}")
        self.size = _height_width(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip
        self.num_channels = num_channels
        self.resample = (
            _RESAMPLING[interpolation.lower()] if isinstance(interpolation, str) else interpolation
        )
        self.draft = draft
        self.generator = generator
        if output == "uint8" and erase is not None and not all(hasattr(erase, a) for a in ("prob", "area", "aspect")):
            raise ValueError("with output='uint8' the erasing runs on the device: erase must be a "
                             "hf_mae.augment.RandomErasing (prob, area, aspect)")
        self.augment, self.erase = augment, erase
        self.to_tensor = _ToTensor(mean, std, num_channels)
        self._mode = _target_mode(num_channels)
        self.output = output
        # OpenCV stands in for PIL's bicubic only; other interpolations (and no OpenCV) resize with PIL
        self.resize = "opencv" if resize == "opencv" and cv2 is not None and \
            self.resample == Image.Resampling.BICUBIC else "pil"

    def normalizer(self) -> DeviceNormalize:
        """The on-device half of `output="uint8"`: normalisation (and erasing) of whole batches."""
        return DeviceNormalize(self.to_tensor.mean, self.to_tensor.std, self.num_channels)

    def sample_crop(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, crop_width, crop_height) of a random crop of a width x height image."""
        box = random_box(width, height, self.scale, self.ratio, self.generator)
        if box is not None:
            return box
        # Fallback: the largest centred crop whose aspect ratio is within `ratio`.
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def _draw_erase(self, height: int, width: int) -> tuple[int, int, int, int, int] | None:
        """RandomErasing's draws (probability, then rectangle) plus a seed for its noise; None: no erasing."""
        erase = self.erase
        if erase.prob == 0 or torch.rand((), generator=erase.generator).item() >= erase.prob:
            return None
        box = random_box(width, height, erase.area, erase.aspect, erase.generator, whole=False)
        if box is None:
            return None
        left, top, w, h = box
        return top, left, h, w, int(torch.randint(0, 2**62, (), generator=erase.generator))

    def __call__(self, img: Image.Image) -> torch.Tensor | dict:
        out_h, out_w = self.size
        left, top, w, h = self.sample_crop(*img.size)
        box = (left, top, left + w, top + h)
        array = None  # the decoded (H, W[, C]) pixels when simplejpeg decoded them
        if isinstance(img, JpegImagePlugin.JpegImageFile) and img.tile:  # a JPEG not decoded yet
            if self.draft and w >= 2 * out_w and h >= 2 * out_h:
                full_w, full_h = img.size
                # Ask for the smallest full-image size at which the crop still covers the output size.
                request = (math.ceil(full_w * out_w / w), math.ceil(full_h * out_h / h))
                drafted = img.draft(self._mode, request)
                if drafted is not None:
                    f = drafted[1][2] / full_w  # 1 / DCT scale
                    box = (left * f, top * f, (left + w) * f, (top + h) * f)
            if img.mode == self._mode:
                array = _simplejpeg_array(img)  # None: PIL decodes it below (or raises for a broken file)
            else:
                img = decode_jpeg(img)  # in the file's own mode, converted below
        if array is None:
            img = convert_image_mode(img, self.num_channels)
        flip = self.hflip and torch.rand((), generator=self.generator).item() < 0.5
        if self.resize == "pil":
            img = (img if array is None else Image.fromarray(array)).resize((out_w, out_h), self.resample, box=box)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # on the small output: cheap
            if self.augment is not None:
                img = self.augment(img)
            planes = _planes(img)  # (C, H, W)
        else:
            pixels = resize_box(np.asarray(img) if array is None else array, box, (out_w, out_h))
            if flip:
                pixels = cv2.flip(pixels, 1)
            if self.augment is not None:
                pixels = np.asarray(self.augment(Image.fromarray(pixels)))
            planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W) view
        if self.output == "float":
            out = self.to_tensor(planes)
            return out if self.erase is None else self.erase(out)
        out = torch.from_numpy(planes if planes.flags.writeable else planes.copy())
        if self.erase is None:
            return out
        return {"pixel_values": out, "erase": self._draw_erase(out_h, out_w)}


class EvalTransform:
    """Deterministic preprocessing through a transformers image processor (resize/crop/normalise).

    The channel count comes from `num_channels` if given, else the processor's `num_channels` attribute,
    else the length of its `image_mean`, else 3. Returns the processor's `pixel_values[0]` (C, H, W).
    """

    accepts_any_mode = True

    def __init__(self, processor, num_channels: int | None = None):
        self.processor = processor
        if num_channels is None:
            num_channels = getattr(processor, "num_channels", None)
        if num_channels is None:
            mean = getattr(processor, "image_mean", None)
            num_channels = len(mean) if isinstance(mean, (list, tuple)) else 3
        self.num_channels = int(num_channels)
        _target_mode(self.num_channels)  # fail here, not on every image

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = convert_image_mode(img, self.num_channels)
        return self.processor(images=img, return_tensors="pt")["pixel_values"][0]
