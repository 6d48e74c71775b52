"""The fine-tuning recipe's extra augmentations: RandAugment and random erasing (no torchvision or timm).

The official MAE fine-tuning builds its training transform with timm's `create_transform(auto_augment=
"rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel", re_count=1)`: RandomResizedCrop, flip, RandAugment on
the PIL image, to tensor, normalise, then random erasing on the normalised tensor. The classes here follow
those definitions: the "increasing" RandAugment op set (a larger magnitude is always a stronger change), two
ops per image, each applied with probability 0.5 at a magnitude drawn from N(m, mstd) clipped to [0, 10];
geometric ops fill with the mean colour and resample bicubically; erasing fills one rectangle (2-33% of
the image, aspect 0.3-3.3) with per-pixel N(0, 1) noise. Randomness comes from torch (the default generator
or the one given), like `TrainTransform`, so runs and DataLoader workers are seeded the usual way.
"""

from __future__ import annotations

import re

import torch
from PIL import Image, ImageEnhance, ImageOps

from .transforms import random_box

MAX_MAGNITUDE = 10.0
TRANSLATE_FRACTION = 0.45  # of the image side, at full magnitude
FILL = (124, 116, 104)  # the ImageNet mean colour, what timm fills rotated/sheared/translated borders with


class RandAugment:
    """`num_ops` random ops per PIL image (chosen with replacement, each applied with probability `prob`).

    `magnitude` is on the usual 0-10 scale; `magnitude_std` > 0 draws it per op from N(magnitude, std).
    Works on RGB and greyscale ("L") images; returns an image of the same size and mode.
    """

    OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
           "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY")

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, prob: float = 0.5,
                 fill: tuple[int, int, int] = FILL, resample=Image.Resampling.BICUBIC,
                 generator: torch.Generator | None = None):
        if num_ops < 0 or not 0 <= magnitude <= MAX_MAGNITUDE or magnitude_std < 0 or not 0 <= prob <= 1:
            raise ValueError(f"RandAugment needs num_ops >= 0, 0 <= magnitude <= {MAX_MAGNITUDE:g}, "
                             f"magnitude_std >= 0 and 0 <= prob <= 1; got {num_ops}, {magnitude}, "
                             f"{magnitude_std}, {prob}")
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.fill, self.resample, self.generator = tuple(fill), resample, generator

    @classmethod
    def from_string(cls, spec: str, **kwargs) -> RandAugment | None:
        """timm's policy string, e.g. "rand-m9-mstd0.5-inc1" (the official recipe) or "rand-n3-m7"; "none" -> None.

        Keys and timm's defaults: m (magnitude, 10), mstd (its std, 0), n (ops per image, 2), p (probability of
        each op, 0.5), inc (0); inc must be 1, as only the increasing op set is implemented."""
        if spec.lower() in ("", "none", "off"):
            return None
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"unknown augmentation policy {spec!r}: expected 'rand-m9-mstd0.5-inc1' style or 'none'")
        values = {"m": MAX_MAGNITUDE, "mstd": 0.0, "n": 2, "p": 0.5, "inc": 0}
        for part in parts[1:]:
            match = re.fullmatch(r"(mstd|inc|m|n|p)(\d+(?:\.\d+)?)", part)
            if match is None:
                raise ValueError(f"cannot read {part!r} in augmentation policy {spec!r} (keys: m, mstd, n, p, inc)")
            values[match[1]] = float(match[2])
        if values["inc"] != 1:
            raise ValueError(f"{spec!r}: only the increasing op set is implemented: add -inc1 (the official "
                             f"recipe is rand-m9-mstd0.5-inc1)")
        return cls(num_ops=int(values["n"]), magnitude=values["m"], magnitude_std=values["mstd"], prob=values["p"],
                   **kwargs)

    def _rand(self) -> float:
        return torch.rand((), generator=self.generator).item()

    def _signed(self, value: float) -> float:
        return -value if self._rand() < 0.5 else value

    def _magnitude(self) -> float:
        magnitude = self.magnitude
        if self.magnitude_std > 0:
            magnitude += self.magnitude_std * torch.randn((), generator=self.generator).item()
        return min(MAX_MAGNITUDE, max(0.0, magnitude)) / MAX_MAGNITUDE  # as a fraction of the maximum

    def __call__(self, img: Image.Image) -> Image.Image:
        for _ in range(self.num_ops):
            op = self.OPS[int(torch.randint(len(self.OPS), (), generator=self.generator))]
            if self.prob < 1 and self._rand() > self.prob:
                continue
            img = self.apply(op, img, self._magnitude())
        return img

    def apply(self, op: str, img: Image.Image, level: float) -> Image.Image:
        """One op at `level` in [0, 1] (magnitude / 10); signed ops draw their direction here."""
        fill = self.fill if img.mode == "RGB" else round(sum(self.fill) / len(self.fill))
        if op == "AutoContrast":
            return ImageOps.autocontrast(img)
        if op == "Equalize":
            return ImageOps.equalize(img)
        if op == "Invert":
            return ImageOps.invert(img)
        if op == "Rotate":
            return img.rotate(self._signed(30 * level), resample=self.resample, fillcolor=fill)
        if op == "Posterize":
            bits = 4 - int(4 * level)  # 4 bits kept at magnitude 0, none (black) at 10
            return ImageOps.posterize(img, bits) if bits > 0 else Image.new(img.mode, img.size)
        if op == "Solarize":
            return ImageOps.solarize(img, 256 - int(256 * level))
        if op == "SolarizeAdd":  # brighten the dark half
            add = int(110 * level)
            lut = [min(255, i + add) if i < 128 else i for i in range(256)]
            return img.point(lut * len(img.getbands()))
        if op in ("Color", "Contrast", "Brightness", "Sharpness"):
            return getattr(ImageEnhance, op)(img).enhance(max(0.1, 1.0 + self._signed(0.9 * level)))
        width, height = img.size
        if op == "ShearX":
            matrix = (1, self._signed(0.3 * level), 0, 0, 1, 0)
        elif op == "ShearY":
            matrix = (1, 0, 0, self._signed(0.3 * level), 1, 0)
        elif op == "TranslateX":
            matrix = (1, 0, self._signed(TRANSLATE_FRACTION * level) * width, 0, 1, 0)
        elif op == "TranslateY":
            matrix = (1, 0, 0, 0, 1, self._signed(TRANSLATE_FRACTION * level) * height)
        else:
            raise ValueError(f"unknown RandAugment op {op!r}")
        return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=self.resample, fillcolor=fill)


class RandomErasing:
    """With probability `prob`, one rectangle of a normalised (C, H, W) tensor is replaced by N(0, 1) noise.

    The rectangle covers a uniform fraction of the area in `area` and has a log-uniform aspect ratio in
    `aspect` (`data.random_box`, as the crop); up to 10 draws are tried for one smaller than the image in both
    directions (else the image is left as is).
    """

    def __init__(self, prob: float = 0.25, area: tuple[float, float] = (0.02, 1 / 3),
                 aspect: tuple[float, float] = (0.3, 1 / 0.3), generator: torch.Generator | None = None):
        if not 0 <= prob <= 1 or not 0 < area[0] <= area[1] < 1 or not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"RandomErasing needs 0 <= prob <= 1, 0 < area low <= high < 1, 0 < aspect low <= "
                             f"high; got {prob}, {area}, {aspect}")
        self.prob, self.area, self.aspect, self.generator = prob, area, aspect, generator

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.prob == 0 or torch.rand((), generator=self.generator).item() >= self.prob:
            return pixels
        channels, height, width = pixels.shape
        box = random_box(width, height, self.area, self.aspect, self.generator, whole=False)
        if box is not None:
            left, top, w, h = box
            pixels[:, top:top + h, left:left + w] = torch.randn((channels, h, w), generator=self.generator,
                                                                dtype=pixels.dtype)
        return pixels


__all__ = ["RandAugment", "RandomErasing"]
