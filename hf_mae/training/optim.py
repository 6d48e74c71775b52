"""Optimizer pieces for MAE pretraining, linear probing and fine-tuning.

- `scaled_lr`: the paper's linear scaling rule, `lr = blr * effective_batch / 256`.
- `param_groups_weight_decay`: decay / no-decay split (pretraining, AdamW).
- `param_groups_layer_decay` + `layer_id_for_vit`: layer-wise lr decay (fine-tuning).
- `lr_at_step` + `set_lr`: linear warmup then half-cycle cosine, set every optimizer step.
- `LARS`: SGD + momentum with a layer-wise trust ratio (linear probe).
- `build_adamw`: AdamW with the fused kernel when it applies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_NO_DECAY_KEYWORDS",
    "LARS",
    "build_adamw",
    "layer_id_for_vit",
    "lr_at_step",
    "param_groups_layer_decay",
    "param_groups_weight_decay",
    "poly_lr_at_step",
    "scaled_lr",
    "set_lr",
]

# Tokens and position tables are not "weights": decaying them towards 0 only hurts (mmpretrain's choice;
# the official MAE code decays cls/mask tokens, which is the one deliberate difference here).
DEFAULT_NO_DECAY_KEYWORDS = ("pos_embed", "cls_token", "mask_token", "dist_token")

# Prefixes added by wrappers (DDP `module.`, torch.compile `_orig_mod.`) or by a model holding the encoder.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "encoder.")
# `blocks.{i}.` as a whole name component, so `decoder_blocks.{i}` does not count as an encoder block.
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def scaled_lr(blr: float, effective_batch_size: int) -> float:
    """Absolute lr from a base lr: `blr * effective_batch_size / 256` (MAE's linear scaling rule)."""
    return blr * effective_batch_size / 256


def _no_weight_decay(name: str, param: torch.Tensor, no_decay_keywords: Iterable[str]) -> bool:
    # Biases and norm scales (ndim <= 1) and token/position tables are exempt from decay.
    return param.ndim <= 1 or any(k in name for k in no_decay_keywords)


def param_groups_weight_decay(
    model: nn.Module,
    weight_decay: float,
    no_decay_keywords: Iterable[str] = DEFAULT_NO_DECAY_KEYWORDS,
) -> list[dict[str, Any]]:
    """Two param groups, decay and no-decay; frozen params are skipped and empty groups dropped."""
    no_decay_keywords = tuple(no_decay_keywords)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if _no_weight_decay(name, p, no_decay_keywords) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    return [g for g in groups if g["params"]]


def _strip_prefixes(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Layer index for layer-wise lr decay (official fine-tune rule, `num_layers = depth + 1`).

    Embeddings (cls_token, pos_embed, patch_embed.*) -> 0, `blocks.{i}.*` -> i + 1, everything else
    (final norm, fc_norm, head) -> num_layers. An `encoder.` (or DDP/compile) prefix is ignored.
    """
    name = _strip_prefixes(name)
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def param_groups_layer_decay(
    model: nn.Module,
    weight_decay: float = 0.05,
    layer_decay: float = 0.75,
    no_decay_keywords: Iterable[str] = DEFAULT_NO_DECAY_KEYWORDS,
) -> list[dict[str, Any]]:
    """Param groups keyed by (layer id, decay/no-decay) with `lr_scale = layer_decay ** (num_layers - id)`.

    Depth is the number of distinct `blocks.{i}` indices in the model, so any model using the
    official/timm names works (a bare encoder or a classifier with `encoder.` + `head.`). Each group also
    carries its `layer_id` (for logging).
    """
    no_decay_keywords = tuple(no_decay_keywords)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depth = len({m.group(1) for n, _ in model.named_parameters() if (m := _BLOCK_RE.search(n))})
    num_layers = depth + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        layer_id = layer_id_for_vit(name, num_layers)
        no_decay = _no_weight_decay(name, p, no_decay_keywords)
        group = groups.setdefault(
            (layer_id, no_decay),
            {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers - layer_id),
                "layer_id": layer_id,
            },
        )
        group["params"].append(p)
    # Deterministic order (by layer, decay first) so optimizer state dicts line up across runs.
    return [groups[k] for k in sorted(groups)]


def lr_at_step(
    step: float, total_steps: float, warmup_steps: float, base_lr: float, min_lr: float = 0.0
) -> float:
    """Linear warmup from 0 to `base_lr`, then half-cycle cosine down to `min_lr` at `total_steps`.

    `step` counts optimizer steps and may be fractional; steps at or past `total_steps` give `min_lr`.
    """
    step = max(float(step), 0.0)
    if step < warmup_steps:  # never true when warmup_steps == 0
        return base_lr * step / warmup_steps
    if step >= total_steps:  # also covers total_steps == warmup_steps (no cosine phase)
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def poly_lr_at_step(
    step: float, total_steps: float, warmup_steps: float, base_lr: float, min_lr: float = 0.0, power: float = 1.0
) -> float:
    """Linear warmup from 0 to `base_lr`, then mmsegmentation's poly decay to `min_lr` at `total_steps`:
    `min_lr + (base_lr - min_lr) * (1 - progress) ** power` (the signature of `lr_at_step`)."""
    step = max(float(step), 0.0)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * (1.0 - progress) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Set every group's lr to `lr * group["lr_scale"]` (scale defaults to 1); returns `lr`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


class LARS(torch.optim.Optimizer):
    """LARS as in the official MAE linear probe: momentum SGD with a layer-wise trust ratio.

    For params with ndim > 1 the update is `d = g + wd * p` scaled by
    `trust_coefficient * ||p|| / ||d||` (1 when either norm is 0); biases and other 1-D params get plain
    momentum SGD without weight decay. Momentum: `mu = momentum * mu + d; p -= lr * mu`.
    """

    def __init__(
        self,
        params,
        lr: float = 0.0,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        trust_coefficient: float = 0.001,
    ):
        if lr < 0 or weight_decay < 0 or momentum < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"invalid LARS hyper-parameters: lr={lr}, weight_decay={weight_decay}, "
                f"momentum={momentum}, trust_coefficient={trust_coefficient}"
            )
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, trust_coefficient=trust_coefficient
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    # Computed on-device with where() (no .item()): no host sync per parameter.
                    ratio = torch.where(
                        (p_norm > 0) & (d_norm > 0),
                        group["trust_coefficient"] * p_norm / d_norm,
                        torch.ones_like(p_norm),
                    )
                    d = d.mul(ratio)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


def _fused_adamw_ok(params: list[torch.Tensor]) -> bool:
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        supported = set(_get_fused_kernels_supported_devices()) & {"cpu", "cuda"}
    except ImportError:  # private helper moved: fall back to the devices fused AdamW has long supported
        supported = {"cuda"}
    return bool(params) and all(p.is_floating_point() and p.device.type in supported for p in params)


def build_adamw(
    param_groups, lr: float, betas: tuple[float, float] = (0.9, 0.95), fused: bool | None = None, **kwargs
) -> torch.optim.AdamW:
    """AdamW (MAE pretraining betas by default); `kwargs` go to `torch.optim.AdamW` (eps, weight_decay).

    `param_groups` is a list of group dicts (e.g. from `param_groups_weight_decay`) or of tensors.
    `fused=None` picks the fused kernel when every param is a floating tensor on CPU/CUDA.
    """
    groups = list(param_groups)
    if groups and isinstance(groups[0], dict):
        groups = [dict(g, params=list(g["params"])) for g in groups]  # generators would be consumed below
        params = [p for g in groups for p in g["params"]]
    else:
        params = groups
    if fused is None:
        # torch's default on CPU is the per-parameter for-loop AdamW, several times slower than the fused
        # kernel (BENCHMARKS.md). When fused does not apply, torch's own default picks the foreach kernels
        # wherever they exist. An explicit foreach=True wins over auto-fusing.
        fused = not kwargs.get("foreach") and _fused_adamw_ok(params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused, **kwargs)
