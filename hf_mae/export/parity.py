"""Exported files checked against PyTorch on random and real images."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.mae.configuration_mae import MAEConfig
from .spec import DEFAULT_ATOL, DEFAULT_RTOL, INPUT_NAME, ExportParityError, require
from .wrappers import ClassifierForExport, example_input, wrap_for_export, wrapped_config

# --------------------------------------------------------------------------------------------------------
# Running and checking exported files
# --------------------------------------------------------------------------------------------------------


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU session; `threads` intra-op threads (no busy-waiting between calls, so it shares
    a CPU fairly)."""
    ort = require("onnxruntime", "running ONNX models")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_exported(path: str | os.PathLike, threads: int | None = None) -> Callable[[torch.Tensor], list[np.ndarray]]:
    """A function pixel_values -> list of numpy outputs for an exported file (.onnx, .pt2 or .pt)."""
    path = Path(path)
    if path.suffix == ".onnx":
        session = onnx_session(path, threads)
        return lambda x: session.run(None, {INPUT_NAME: x.numpy()})
    if path.suffix == ".pt2":
        module = torch.export.load(str(path)).module()
    elif path.suffix == ".pt":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated.*")
            module = torch.jit.load(str(path))
    else:
        raise ValueError(f"unknown exported file type {path.suffix!r} (expected .onnx, .pt2 or .pt)")

    def run(x: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(x)
        return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

    return run


@torch.no_grad()
def reference_outputs(model: nn.Module, pixel_values: torch.Tensor) -> list[np.ndarray]:
    """The hf_mae model's own outputs in eval mode (its forward, not the export wrapper's) as numpy."""
    module = wrap_for_export(model)
    if isinstance(module, ClassifierForExport):
        return [module.classifier(pixel_values, return_dict=True).logits.numpy()]
    out = module.encoder(pixel_values, return_dict=True)
    return [out.last_hidden_state.numpy(), out.pooler_output.numpy()]


def max_abs_difference(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    if len(outputs) != len(reference):
        raise ValueError(f"{len(outputs)} outputs, expected {len(reference)}")
    return max(float(np.abs(np.asarray(a, dtype=np.float64) - b).max()) for a, b in zip(outputs, reference))


def max_tolerance_excess(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray], atol: float,
                         rtol: float) -> float:
    """max over outputs of max|a - b| - rtol * max|b|: at most `atol` means every element of each output is within
    `atol + rtol * (that output's largest |reference|)`. The scale is the output's, not the element's, because fp32
    rounding error follows the magnitudes the computation went through (a small logit of a large-logit probe
    carries the large ones' rounding)."""
    return max(float(np.abs(np.asarray(a, dtype=np.float64) - b).max() - rtol * np.abs(b).max())
               for a, b in zip(outputs, reference))


def natural_images(count: int, size: tuple[int, int] = (64, 64), seed: int = 0) -> list:
    """Generated natural-looking RGB pictures (smooth colour gradients, soft blobs, texture noise)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3) + rng.uniform(-120, 120, 3) * xx[..., None] \
            + rng.uniform(-120, 120, 3) * yy[..., None]  # (H, W, 3): a colour gradient
        picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(picture)
        for _ in range(rng.integers(2, 6)):
            x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(4, width / 2), rng.uniform(4, height / 2)
            draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        picture = picture.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
        noisy = np.asarray(picture, dtype=np.float64) + rng.normal(0, 6, (height, width, 3))
        images.append(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    return images


def real_images(config: MAEConfig, processor, count: int = 32) -> tuple[torch.Tensor, str] | None:
    """Preprocessed real images for the parity check and a description: the embedded MNIST validation digits
    for 1-channel models, generated pictures for 3 channels; None for other channel counts."""
    if config.num_channels == 1:
        from ..data.sources import load_embedded_default

        validation = load_embedded_default()["validation"]
        images = list(validation.select(range(min(count, len(validation))))["image"])
        what = f"{len(images)} embedded MNIST validation digits"
    elif config.num_channels == 3:
        height, width = config.image_hw
        images = natural_images(count, (int(height * 1.25), int(width * 1.25)))
        what = f"{count} generated natural-looking pictures"
    else:
        return None
    return processor(images=images, return_tensors="pt")["pixel_values"].float(), what


def check_export(model: nn.Module, path: str | os.PathLike, processor=None, *, atol: float | None = DEFAULT_ATOL,
                 rtol: float = DEFAULT_RTOL, num_images: int = 32) -> dict:
    """Compare an exported file with PyTorch: random images at batch 1 and 3, and real images through the
    processor. Returns the largest absolute differences, the largest relative one (to the largest reference
    value), plus argmax agreement for classifiers or the lowest pooler cosine for encoders. Raises
    `ExportParityError` unless every output element is within `atol + rtol * max|reference|` of its output (atol
    None: report only)."""
    module = wrap_for_export(model)
    config = wrapped_config(module)
    run = load_exported(path)
    batches = {"random_batch1": example_input(config, 1, seed=1), "random_batch3": example_input(config, 3, seed=2)}
    real_note = None
    if processor is not None:
        real = real_images(config, processor, num_images)
        if real is not None:
            batches["real"], real_note = real
    report = {"file": str(path)}
    excess, relative = 0.0, 0.0
    for name, pixels in batches.items():
        got, want = run(pixels), reference_outputs(module, pixels)
        report[f"max_abs_diff_{name}"] = max_abs_difference(got, want)
        relative = max(relative, max(report[f"max_abs_diff_{name}"] / max(float(np.abs(w).max()), 1e-30)
                                     for w in want))
        if atol is not None:
            excess = max(excess, max_tolerance_excess(got, want, atol, rtol))
        if name == "real" and isinstance(module, ClassifierForExport):
            report["argmax_agreement_real"] = float((got[0].argmax(-1) == want[0].argmax(-1)).mean())
        elif name == "real":
            a, b = torch.from_numpy(np.asarray(got[1])), torch.from_numpy(want[1])
            report["min_pooler_cosine_real"] = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    if real_note:
        report["real_images"] = real_note
    report["max_abs_diff"] = max(v for k, v in report.items() if k.startswith("max_abs_diff_"))
    report["max_rel_diff"] = relative  # max |diff| / max |reference|, per output
    if atol is not None and excess > atol:
        diffs = {k: f"{v:.3g}" for k, v in report.items() if k.startswith("max_abs_diff_")}
        hint = ""
        if relative < 1e-4:
            hint = (f". Relative to the largest output that is {relative:.1e}: fp32 rounding, amplified by large or "
                    f"sharply normalised outputs; if that is acceptable, raise --rtol to {2 * relative:.0e}")
        raise ExportParityError(f"{path}: outputs differ from PyTorch by more than atol={atol:g}"
                                + (f" + rtol={rtol:g} x max|reference|" if rtol else "") + f": {diffs}{hint}")
    return report
