"""Position embeddings at another resolution: sin-cos regenerated, learned ones resampled."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.mae.modeling_mae import sincos_pos_embed
from .config_inference import _grid_of
from .names import ConversionError


def resample_position_embeddings(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]):
    """(1, 1 + R*C, D) position table on an (R, C) patch grid -> the new grid, bicubically; CLS row kept."""
    dim = pos.shape[-1]
    patches = pos[:, 1:].reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat([pos[:, :1], patches], dim=1)


def _adapt_positions(name: str, tensor: torch.Tensor, dim: int, grid: tuple[int, int], sources: list[str],
                     notes: list[str]) -> torch.Tensor:
    """Position table for the target grid: fixed sin-cos regenerated, learned values kept (and resampled)."""
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] != 1 or tensor.shape[2] != dim:
        raise ConversionError(f"shape mismatch: checkpoint {sources[0]!r} has shape {tuple(tensor.shape)}, "
                              f"hf_mae {name!r} expects (1, num_positions, {dim})")
    source_grid, has_cls = _grid_of(tensor.shape[1], grid)
    tolerance = 1e-5 if tensor.dtype in (torch.float32, torch.float64) else 1e-2
    tensor = tensor.float()
    if not has_cls:
        tensor = torch.cat([tensor.new_zeros(1, 1, dim), tensor], dim=1)
        notes.append(f"{name}: no CLS row in the checkpoint; a zero row added (the CLS token gets no "
                     f"position, as in the checkpoint)")
    fixed = sincos_pos_embed(dim, source_grid)
    target = sincos_pos_embed(dim, grid)  # what a fixed table becomes on the target grid
    size = f"{grid[0]}x{grid[1]}"
    if torch.allclose(tensor, fixed, atol=tolerance):
        if source_grid == grid:
            notes.append(f"{name}: fixed 2-D sin-cos (matches hf_mae's)")
            return tensor
        notes.append(f"{name}: fixed 2-D sin-cos (matches hf_mae's), regenerated for the {size} grid "
                     f"(checkpoint {source_grid[0]}x{source_grid[1]})")
        return target
    if not tensor.any():
        notes.append(f"{name}: ALL ZERO in the checkpoint (a transformers ViTMAE trained from scratch never "
                     f"sets them): kept, so the model has no position information")
    else:
        notes.append(f"{name}: learned position embeddings (differ from fixed sin-cos by up to "
                     f"{(tensor - fixed).abs().max().item():.3g}) kept and loaded into the buffer; at other "
                     f"resolutions than the config's the model regenerates sin-cos")
    if source_grid != grid:
        tensor = resample_position_embeddings(tensor, source_grid, grid)
        notes.append(f"{name}: resampled bicubically from {source_grid[0]}x{source_grid[1]} to {size} "
                     f"(CLS row kept)")
    return tensor
