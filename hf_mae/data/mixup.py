"""Mixup, CutMix and label smoothing for fine-tuning, on batches of tensors (no torchvision, no timm).

The official MAE fine-tuning recipe (timm's `Mixup` in batch mode) for ViT-B: mixup alpha 0.8, cutmix alpha
1.0, applied to every batch (`prob=1.0`), switching between the two with probability 0.5, label smoothing
0.1. Every image of the batch is mixed with the image at the mirrored position (`x.flip(0)`), with one
lambda per batch drawn from Beta(alpha, alpha). For CutMix, lambda is then corrected to the area actually
kept after clipping the box to the image, so the soft targets match the pixels.

    mix = Mixup(num_classes=10)
    pixels, targets = mix(batch["pixel_values"], batch["labels"])    # targets: (B, 10), rows sum to 1
    loss = model(pixel_values=pixels, labels=targets).loss           # soft-target cross-entropy
"""

from __future__ import annotations

import math

import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) class indices -> (B, num_classes) float targets: `1 - smoothing + smoothing / C` on the true
    class, `smoothing / C` elsewhere (timm's convention: each row sums to 1)."""
    off = smoothing / num_classes
    targets = torch.full((len(labels), num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def mix_targets(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """Soft targets of a batch mixed with its mirror: `lam * y + (1 - lam) * y.flip(0)` (smoothed)."""
    targets = smooth_one_hot(labels, num_classes, smoothing)
    return targets * lam + targets.flip(0) * (1.0 - lam)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator | None = None):
    """A random box (top, bottom, left, right) covering about `1 - lam` of the image, clipped to it.

    The box has side ratios sqrt(1 - lam) of the image and a uniformly random centre, as in the CutMix
    paper; clipping at the borders makes it smaller, hence `Mixup` recomputes lambda from the box.
    """
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(0, height, (), generator=generator))
    cx = int(torch.randint(0, width, (), generator=generator))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def _beta(alpha: float, generator: torch.Generator | None) -> float:
    # Beta(a, a) as G1 / (G1 + G2) with G ~ Gamma(a): a torch generator can drive it (torch.distributions
    # takes none).
    x = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
    return float(x[0] / x.sum())


class Mixup:
    """Batch-wise Mixup / CutMix with label smoothing.

    Args:
        mixup_alpha: Beta(alpha, alpha) for mixup's lambda; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) for cutmix's lambda; 0 disables cutmix.
        prob: probability of mixing a batch at all (else only label smoothing).
        switch_prob: with both enabled, probability of cutmix instead of mixup.
        label_smoothing: smoothing of the one-hot targets.
        num_classes: width of the targets.
        generator: torch generator for reproducible draws (default: torch's global one).

    `__call__(pixel_values, labels)` returns `(mixed pixel_values, soft targets (B, num_classes))` and
    stores the lambda and mode it used in `last_lam` / `last_mode` ("mixup", "cutmix" or "none"). The input
    tensor is not modified.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, label_smoothing: float = 0.1, num_classes: int = 1000,
                 generator: torch.Generator | None = None):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup/cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0 <= prob <= 1 or not 0 <= switch_prob <= 1 or not 0 <= label_smoothing < 1:
            raise ValueError(f"need 0 <= prob, switch_prob <= 1 and 0 <= label_smoothing < 1, got {prob}, "
                             f"{switch_prob}, {label_smoothing}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.generator = generator
        self.last_lam, self.last_mode = 1.0, "none"

    @property
    def active(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _choose(self) -> tuple[str, float]:
        if not self.active or self._uniform() >= self.prob:
            return "none", 1.0
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self._uniform() < self.switch_prob)
        if use_cutmix:
            return "cutmix", _beta(self.cutmix_alpha, self.generator)
        return "mixup", _beta(self.mixup_alpha, self.generator)

    def __call__(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mode, lam = self._choose()
        if mode == "mixup":
            pixel_values = pixel_values * lam + pixel_values.flip(0) * (1.0 - lam)
        elif mode == "cutmix":
            height, width = pixel_values.shape[-2:]
            top, bottom, left, right = cutmix_box(height, width, lam, self.generator)
            pixel_values = pixel_values.clone()
            pixel_values[..., top:bottom, left:right] = pixel_values.flip(0)[..., top:bottom, left:right]
            lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually kept
        self.last_lam, self.last_mode = lam, mode
        return pixel_values, mix_targets(labels, self.num_classes, lam, self.label_smoothing)


__all__ = ["Mixup", "cutmix_box", "mix_targets", "smooth_one_hot"]
