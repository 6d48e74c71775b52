"""Deployment exports of hf_mae encoders and classifiers, each checked against PyTorch.

Formats (`--format`, one or more; `all` for every one), written into the `--output` folder:
    onnx         model.onnx       ONNX (opset 17) with a dynamic batch axis, run with onnxruntime
    int8         model_int8.onnx  the ONNX model with its Linear layers dynamically quantized to int8
                                  (onnxruntime `quantize_dynamic`: int8 weights, inputs quantized per call);
                                  also writes model.onnx
    export       model.pt2        a `torch.export` program (`torch.export.load(path).module()`)
    torchscript  model.pt         a TorchScript trace (`torch.jit.load(path)`)

What is exported: an encoder (`MAEModel`) without masking, `pixel_values (B, C, H, W)` ->
`last_hidden_state (B, 1 + N, D)`, `pooler_output (B, D)` (CLS after the final norm), deterministic; a
classifier (`MAEForImageClassification`) `pixel_values` -> `logits (B, num_labels)`. A pretraining model
(decoder + random masking) is refused: export its encoder (`<folder>/encoder`) or a linear probe. Inputs are
preprocessed images (the folder's `preprocessor_config.json`: resize, center crop, rescale, normalize); the
exported files need torch or onnxruntime only, not hf_mae.

The CLI owns its output folder: never the --model folder, and a folder holding a finished export or another
program's outputs is refused before anything is loaded unless --overwrite. The processor saved beside the model
must fit it (a 224-pixel processor beside a 32-pixel model is refused, naming both sizes, before any export).
Every file is written under a temporary name and moved into place whole: a kill never leaves a half-written
model file.

Every export is checked (unless `check=False`): the largest absolute difference to PyTorch on random images
at batch 1 and 3 (the dynamic batch axis) and on real images through the processor (the embedded MNIST
validation digits for 1-channel models, generated natural-looking pictures for 3 channels) must be at most
`atol` (1e-4; plus `rtol` x |reference| when given); int8 is reported (difference, argmax agreement or feature
cosine), not held to `atol`. The numbers go to `<output>/export_info.json`.

    python scripts/export.py --model outputs/pretrain/encoder --format onnx export torchscript
    python scripts/export.py --model outputs/probe --format onnx int8 --output outputs/export/probe

ONNX goes through the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`) by default: in
torch 2.13 it works with only `onnx` + `onnxruntime` installed (the `export` extra), takes 0.2 s instead of
3-4 s, and gives the same parity (encoder ~2e-6, probe logits ~5e-5). The torch.export-based exporter
(`onnx_exporter="dynamo"`, torch's default) needs the `onnxscript` package as well; it works on these models
too and is the way forward once torch removes the TorchScript exporter.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .configuration_mae import MAEConfig
from .convert import fold_batchnorm
from .image_processing_mae import MAEImageProcessor, check_processor_matches
from .modeling_mae import MAEForImageClassification, MAEForPreTraining, MAEModel
from .runner import (
    check_output_dir,
    mark_finished,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    take_output_dir,
)

try:  # the opsets torch writes (checked at parse time)
    from torch.onnx import _constants as _onnx_constants
except ImportError:
    _onnx_constants = None

FORMATS = ("onnx", "int8", "export", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "int8": "model_int8.onnx", "export": "model.pt2", "torchscript": "model.pt"}
INPUT_NAME = "pixel_values"
ENCODER_OUTPUTS = ("last_hidden_state", "pooler_output")
CLASSIFIER_OUTPUTS = ("logits",)
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
EXPORT_EXTRA = "pip install 'hf_mae[export]'"


class MissingExportDependency(ImportError):
    """An optional package needed for an export format is not installed; the message says what to install."""


class PretrainingModelError(ValueError):
    """A pretraining model (decoder + random masking) was given where an encoder or classifier is needed."""


class ExportParityError(RuntimeError):
    """An exported model's outputs differ from PyTorch's by more than the tolerance."""


def require(module: str, purpose: str, install: str = EXPORT_EXTRA):
    """Import an optional dependency, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExportDependency(
            f"{purpose} needs the optional package {module!r}, which is not installed: {install}") from e


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary name beside `path` (`.NAME.tmp`) to write to; when the block succeeds the file replaces
    `path` in one `os.replace`, when it fails the temporary file is removed. A kill leaves at most the
    temporary file, never a half-written `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------------
# What is exported: deterministic wrappers
# --------------------------------------------------------------------------------------------------------


class EncoderForExport(nn.Module):
    """An `MAEModel` without masking: pixel_values -> (last_hidden_state, pooler_output)."""

    output_names = ENCODER_OUTPUTS

    def __init__(self, encoder: MAEModel):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(pixel_values, output_attentions=False, output_hidden_states=False, return_dict=True)
        return out.last_hidden_state, out.pooler_output  # (B, 1 + N, D), (B, D)


class ClassifierForExport(nn.Module):
    """An `MAEForImageClassification` in eval mode: pixel_values -> logits.

    A linear probe's eval-mode BatchNorm is folded into its Linear head (`convert.fold_batchnorm`): the same
    function, one layer fewer, and the TorchScript-based ONNX exporter cannot export a BatchNorm once the batch
    axis is dynamic ("batch_norm for unknown channel size"). The fold reads the statistics when the wrapper is
    made."""

    output_names = CLASSIFIER_OUTPUTS

    def __init__(self, classifier: MAEForImageClassification):
        super().__init__()
        self.classifier = classifier
        norm = classifier.fc_norm
        self.folded_head = (fold_batchnorm(norm, classifier.head).requires_grad_(False)
                            if isinstance(norm, nn.modules.batchnorm._BatchNorm) else None)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.classifier.features(pixel_values)  # (B, D)
        if self.folded_head is not None:
            return self.folded_head(features)  # (B, num_labels)
        return self.classifier.head(self.classifier.fc_norm(features))  # (B, num_labels)


def pretraining_error(source: str | None = None) -> PretrainingModelError:
    """The error for a pretraining model, pointing at `<folder>/encoder` when that folder exists."""
    where = f"{source!r} is" if source else "this is"
    folder = source or "<pretraining folder>"
    encoder = os.path.join(folder, "encoder")
    saved = bool(source) and os.path.isfile(os.path.join(encoder, "config.json"))
    return PretrainingModelError(
        f"{where} an MAE pretraining model (MAEForPreTraining: encoder + decoder + random masking), which is "
        f"not exported: its output depends on a random mask and the decoder is only for training. Export its "
        f"encoder, --model {encoder} ({'saved there' if saved else 'scripts/pretrain.py saves it there'}; "
        f"AutoModel), or a classifier trained on it (scripts/linear_probe.py --model {folder}; "
        f"AutoModelForImageClassification).")


def _attention_for_export(model: nn.Module) -> None:
    """Flash / flex attention kernels have no ONNX or TorchScript form: use sdpa (eager stays eager)."""
    config = getattr(model, "config", None)
    if config is not None and config._attn_implementation not in ("sdpa", "eager"):
        config._attn_implementation = "sdpa"


def wrap_for_export(model: nn.Module) -> nn.Module:
    """The deterministic module that is exported: encoder -> (last_hidden_state, pooler_output), classifier ->
    logits; in eval mode. An already wrapped module is returned as is."""
    if isinstance(model, (EncoderForExport, ClassifierForExport)):
        return model.eval()
    if isinstance(model, MAEForPreTraining):
        raise pretraining_error(getattr(model.config, "_name_or_path", None) or None)
    _attention_for_export(model)
    if isinstance(model, MAEModel):
        return EncoderForExport(model).eval()
    if isinstance(model, MAEForImageClassification):
        return ClassifierForExport(model).eval()
    raise TypeError(f"expected an hf_mae MAEModel (encoder) or MAEForImageClassification, got "
                    f"{type(model).__name__}")


def _config_of(module: nn.Module) -> MAEConfig:
    wrapped = wrap_for_export(module)
    inner = wrapped.encoder if isinstance(wrapped, EncoderForExport) else wrapped.classifier
    return inner.config


def example_input(config: MAEConfig, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
    """Random pixel_values (B, C, H, W) at the configured size (the trace input; batch 2 keeps it symbolic)."""
    height, width = config.image_hw
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, config.num_channels, height, width, generator=generator)


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


def load_model(name_or_path: str, revision: str | None = None, attn_implementation: str = "sdpa"):
    """The encoder or classifier at `name_or_path` (a local `save_pretrained` folder or a Hub id) and its
    image processor (the folder's, else one sized for the config). Refuses pretraining models."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot load a model from {name_or_path!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); give an hf_mae encoder or classifier "
                         "folder or Hub id") from e
    if not isinstance(config, MAEConfig):
        raise ValueError(f"{name_or_path!r} is a {getattr(config, 'model_type', '?')!r} model, not hf_mae; convert "
                         "it first with scripts/convert_checkpoint.py")
    architecture = (config.architectures or ["MAEModel"])[0]
    if architecture == "MAEForPreTraining":
        raise pretraining_error(name_or_path)
    auto = AutoModelForImageClassification if architecture == "MAEForImageClassification" else AutoModel
    model = auto.from_pretrained(name_or_path, revision=revision, attn_implementation=attn_implementation)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError):
        processor = MAEImageProcessor.for_config(model.config)
    return model.eval(), processor


# --------------------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tracing():
    """Hide the tracers' known, harmless warnings: shape checks become constants (only the batch axis is
    dynamic) and torch's notices that the TorchScript paths are deprecated."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(legacy TorchScript-based ONNX|torch\.jit\.trace).*")
        warnings.filterwarnings("ignore", message=r".*feature will be removed.*")
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*")
        yield


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset_version: int = DEFAULT_OPSET,
                exporter: str = "legacy") -> Path:
    """ONNX with a dynamic batch axis (input `pixel_values`, outputs named as the wrapper's `output_names`),
    validated with `onnx.checker`. `exporter`: "legacy" (TorchScript-based, needs onnx only) or "dynamo"
    (torch.export-based, needs onnxscript too)."""
    onnx = require("onnx", "ONNX export")
    if exporter not in ("legacy", "dynamo"):
        raise ValueError(f"exporter must be 'legacy' or 'dynamo', got {exporter!r}")
    module = wrap_for_export(model)
    names = list(module.output_names)
    path = Path(path)
    example = example_input(_config_of(module))
    with torch.no_grad(), atomic_file(path) as tmp:
        if exporter == "legacy":
            dynamic = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
            with _quiet_tracing():
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, input_names=[INPUT_NAME],
                                  output_names=names, dynamic_axes=dynamic, opset_version=opset_version)
        else:
            require("onnxscript", "ONNX export with exporter='dynamo'", "pip install onnxscript")
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                        output_names=names, dynamic_shapes=({0: batch},),
                                        opset_version=opset_version, verbose=False)
            program.save(str(tmp), external_data=False)
        onnx.checker.check_model(str(tmp))
    return path


def quantize_int8(onnx_path: str | os.PathLike, path: str | os.PathLike, *, per_channel: bool = False,
                  keep_fp32: Sequence[str] = ()) -> Path:
    """Dynamic int8 quantization of the Linear layers of an exported ONNX model (onnxruntime
    `quantize_dynamic`): the weights of the MatMul/Gemm nodes with a constant weight (qkv, proj, fc1, fc2 of
    every block and a classifier's head) become int8, their inputs are quantized per call (one scale per input
    tensor); the attention products, the patch convolution, LayerNorm and softmax stay fp32. `keep_fp32`:
    substrings of node names to leave in fp32 (e.g. "mlp/fc2": the layers whose post-GELU inputs are the most
    skewed)."""
    onnx = require("onnx", "int8 quantization")
    require("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = []
    for node in onnx.load(str(onnx_path)).graph.node:
        if any(pattern in node.name for pattern in keep_fp32):
            exclude.append(node.name)
            if node.op_type == "Gemm":  # the quantizer rewrites Gemm as a MatMul named so before excluding
                exclude.append(f"{node.name}_MatMul")
    path = Path(path)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" notice: shape inference gains nothing here
    try:
        with atomic_file(path) as tmp:
            quantize_dynamic(str(onnx_path), str(tmp), op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=per_channel, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                             extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)
    return path


def export_program(model: nn.Module, path: str | os.PathLike) -> Path:
    """A `torch.export` program with a dynamic batch axis, saved with `torch.export.save` (`.pt2`)."""
    module = wrap_for_export(model)
    path = Path(path)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(module, (example_input(_config_of(module)),), dynamic_shapes=({0: batch},))
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:  # a file object: no warning about the suffix
        torch.export.save(program, handle)
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """A TorchScript trace (`torch.jit.trace`, saved with `.save`); any batch size."""
    module = wrap_for_export(model)
    path = Path(path)
    with torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(module, example_input(_config_of(module)))
    with atomic_file(path) as tmp:
        traced.save(str(tmp))
    return path


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
    """max(|a - b| - rtol * |b|) over all elements: at most `atol` means `np.allclose(a, b, rtol, atol)`."""
    return max(float((np.abs(np.asarray(a, dtype=np.float64) - b) - rtol * np.abs(b)).max())
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
        from .data import load_embedded_default

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
                 rtol: float = 0.0, num_images: int = 32) -> dict:
    """Compare an exported file with PyTorch: random images at batch 1 and 3, and real images through the
    processor. Returns the largest absolute differences, the largest relative one (to the largest reference
    value), plus argmax agreement for classifiers or the lowest pooler cosine for encoders. Raises
    `ExportParityError` unless every output element is within `atol + rtol * |reference|` (atol None: report
    only)."""
    module = wrap_for_export(model)
    config = _config_of(module)
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
        if relative < 1e-5:
            hint = (f". Relative to the largest output that is {relative:.1e}: fp32 rounding, amplified by large or "
                    "sharply normalised outputs (e.g. a probe's BatchNorm on nearly constant features); accept it "
                    "with rtol (--rtol 1e-5)")
        raise ExportParityError(f"{path}: outputs differ from PyTorch by more than atol={atol:g}"
                                + (f" + rtol={rtol:g} x |reference|" if rtol else "") + f": {diffs}{hint}")
    return report


# --------------------------------------------------------------------------------------------------------
# One call for everything: the CLI's core
# --------------------------------------------------------------------------------------------------------


def export_model(model: nn.Module, output_dir: str | os.PathLike, formats: Sequence[str] = ("onnx",), *,
                 processor=None, check: bool = True, atol: float | None = DEFAULT_ATOL, rtol: float = 0.0,
                 opset_version: int = DEFAULT_OPSET, onnx_exporter: str = "legacy", per_channel: bool = False,
                 keep_fp32: Sequence[str] = (), num_check_images: int = 32, source: str | None = None) -> dict:
    """Export `model` (encoder or classifier) in each of `formats` into `output_dir` (file names as
    `FILE_NAMES`; int8 also writes the fp32 model.onnx it is made from), check each against PyTorch, save the
    processor's `preprocessor_config.json` and `export_info.json` (inputs, outputs, files, sizes, parity).
    The fp32 formats must match PyTorch within `atol + rtol * |reference|` (`atol=None`: report only; int8 is
    always report only). Returns the `export_info.json` content."""
    unknown = [f for f in formats if f not in (*FORMATS, "all")]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)} or all")
    formats = [f for f in FORMATS if f in formats or "all" in formats]  # onnx before int8, which quantizes it
    if any(f in ("onnx", "int8") for f in formats):
        require("onnx", "ONNX export")
        if check or "int8" in formats:
            require("onnxruntime", "checking ONNX exports" if check else "int8 quantization")
    module = wrap_for_export(model)
    config = _config_of(module)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    height, width = config.image_hw
    kind = "classifier" if isinstance(module, ClassifierForExport) else "encoder"
    inner = module.classifier if kind == "classifier" else module.encoder
    info = {
        "source": source, "kind": kind, "architecture": type(inner).__name__,
        "input": {"name": INPUT_NAME, "shape": ["batch", config.num_channels, height, width], "dtype": "float32",
                  "preprocessing": "preprocessor_config.json (resize, center crop, rescale 1/255, normalize)"},
        "outputs": list(module.output_names), "torch_version": torch.__version__, "files": {},
    }
    if kind == "classifier":
        info["id2label"] = {str(k): v for k, v in config.id2label.items()}
    for fmt in formats:
        start = time.perf_counter()
        path = output_dir / FILE_NAMES[fmt]
        if fmt == "onnx" or (fmt == "int8" and "onnx" not in formats):
            fp32 = export_onnx(module, output_dir / FILE_NAMES["onnx"], opset_version=opset_version,
                               exporter=onnx_exporter)
            if fmt == "int8":  # the fp32 model it is made from, unchecked
                info["files"]["onnx"] = {"file": fp32.name, "size_bytes": fp32.stat().st_size}
        if fmt == "int8":
            quantize_int8(output_dir / FILE_NAMES["onnx"], path, per_channel=per_channel, keep_fp32=keep_fp32)
        elif fmt == "export":
            export_program(module, path)
        elif fmt == "torchscript":
            export_torchscript(module, path)
        entry = {"file": path.name, "size_bytes": path.stat().st_size,
                 "export_seconds": round(time.perf_counter() - start, 2)}
        if fmt in ("onnx", "int8"):
            entry["opset"] = opset_version
            entry["onnx_exporter"] = onnx_exporter
        if fmt == "int8":
            entry["quantization"] = ("onnxruntime dynamic, int8 weights" + (" per channel" if per_channel else "")
                                     + ", Linear layers (MatMul/Gemm with a constant weight)"
                                     + (f"; kept fp32: {', '.join(keep_fp32)}" if keep_fp32 else ""))
        if check:
            entry["check"] = check_export(module, path, processor, atol=None if fmt == "int8" else atol,
                                          rtol=rtol, num_images=num_check_images)
            entry["check"].pop("file")
            if fmt != "int8" and atol is not None:
                entry["check"].update(atol=atol, rtol=rtol)
        info["files"][fmt] = entry
    if processor is not None:
        _save_processor(processor, output_dir)
    with atomic_file(output_dir / "export_info.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _save_processor(processor, output_dir: Path) -> None:
    """`processor.save_pretrained(output_dir)`, each file moved into place whole."""
    staging = output_dir / ".processor.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        processor.save_pretrained(staging)
        for file in staging.iterdir():
            os.replace(file, output_dir / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _opset(text: str) -> int:
    """`--opset`: an ONNX opset torch can write."""
    low, high = getattr(_onnx_constants, "ONNX_MIN_OPSET", 7), getattr(_onnx_constants, "ONNX_MAX_OPSET", 23)
    value = nonnegative_int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected an ONNX opset from {low} to {high}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="hf_mae encoder (AutoModel) or classifier (AutoModelForImageClassification): a "
                             "save_pretrained folder or a Hub id. Not a pretraining model: give <folder>/encoder")
    parser.add_argument("--format", nargs="+", default=["onnx"], choices=[*FORMATS, "all"], metavar="FORMAT",
                        help="one or more of: onnx (model.onnx), int8 (model_int8.onnx, dynamic quantization of the "
                             "Linear layers), export (torch.export program model.pt2), torchscript (trace model.pt), "
                             "all (default: onnx)")
    parser.add_argument("--output", "--output_dir", dest="output", default="outputs/export",
                        help="output folder for the files, preprocessor_config.json and export_info.json "
                             "(default: outputs/export). Never the --model folder; a folder that holds a finished "
                             "export or another program's outputs is refused unless --overwrite")
    parser.add_argument("--overwrite", "--overwrite_output_dir", dest="overwrite", action="store_true",
                        help="export into a folder that already holds outputs: hf_mae's own files there (an earlier "
                             "export, a run's checkpoints and logs) are removed first, nothing else")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--opset", type=_opset, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--onnx_exporter", choices=["legacy", "dynamo"], default="legacy",
                        help="torch.onnx exporter: legacy (TorchScript-based; needs onnx) or dynamo "
                             "(torch.export-based; needs onnxscript too). Default: legacy")
    parser.add_argument("--per_channel", action="store_true",
                        help="int8: one scale per output channel instead of per tensor (default: per tensor)")
    parser.add_argument("--int8_keep_fp32", nargs="+", default=[], metavar="NAME",
                        help="int8: leave the Linear layers whose ONNX node name contains NAME in fp32, e.g. mlp/fc2 "
                             "(default: quantize every Linear layer)")
    parser.add_argument("--attn_implementation", choices=["sdpa", "eager"], default="sdpa",
                        help="attention kernel traced into the graph (default sdpa; both export and give the "
                             "same numbers)")
    parser.add_argument("--atol", type=nonnegative_float, default=DEFAULT_ATOL,
                        help=f"largest allowed |exported - PyTorch| for the fp32 formats (default {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=nonnegative_float, default=0.0,
                        help="relative tolerance added to --atol (elementwise, as numpy.allclose; default 0), for "
                             "models whose outputs are large enough that fp32 rounding alone nears --atol")
    parser.add_argument("--num_check_images", type=positive_int, default=32,
                        help="real images in the check (MNIST validation digits for 1 channel, generated "
                             "pictures for 3; default 32)")
    parser.add_argument("--no_check", action="store_true", help="skip the comparison with PyTorch")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    legacy_max = getattr(_onnx_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
    if args.onnx_exporter == "legacy" and args.opset > legacy_max and {"onnx", "int8", "all"} & set(args.format):
        parser.error(f"argument --opset: the legacy ONNX exporter writes opsets up to {legacy_max}, got "
                     f"{args.opset}; use --onnx_exporter dynamo for a newer one")
    return args


def _human_size(count: int) -> str:
    return f"{count / 2**20:.2f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def main(args: argparse.Namespace) -> dict:
    """Export as `args` asks. The output folder is checked before anything is loaded (never the --model
    folder; a finished export or another program's outputs only with --overwrite), the processor is checked
    against the model before anything is exported, and every file is written whole (a temporary name, then
    os.replace)."""
    try:
        out = check_output_dir(args.output, "export", overwrite=args.overwrite, inputs=(args.model,),
                               resumable=False)
        model, processor = load_model(args.model, revision=args.revision, attn_implementation=args.attn_implementation)
        check_processor_matches(processor, model.config)
        take_output_dir(out, "export", overwrite=args.overwrite)
        info = export_model(model, out, args.format, processor=processor, check=not args.no_check,
                            atol=args.atol, rtol=args.rtol, opset_version=args.opset, onnx_exporter=args.onnx_exporter,
                            per_channel=args.per_channel, keep_fp32=args.int8_keep_fp32,
                            num_check_images=args.num_check_images,
                            source=args.model)
        mark_finished(out)
    except (MissingExportDependency, PretrainingModelError, ExportParityError, ValueError) as e:
        raise SystemExit(f"error: {e}") from e
    print(f"exported the {info['kind']} {args.model} -> {args.output}  (outputs: {', '.join(info['outputs'])})")
    for fmt, entry in info["files"].items():
        line = f"  {fmt:<12} {entry['file']:<16} {_human_size(entry['size_bytes']):>10}"
        check = entry.get("check")
        if check:
            line += f"  max |diff| vs PyTorch {check['max_abs_diff']:.2e}"
            if "argmax_agreement_real" in check:
                line += f", argmax agreement {100 * check['argmax_agreement_real']:.1f}%"
        print(line)
    return info


__all__ = ["FORMATS", "FILE_NAMES", "EncoderForExport", "ClassifierForExport", "MissingExportDependency",
           "PretrainingModelError", "ExportParityError", "require", "wrap_for_export", "load_model",
           "export_onnx", "quantize_int8", "export_program", "export_torchscript", "onnx_session",
           "load_exported", "check_export", "export_model", "natural_images", "real_images", "example_input",
           "atomic_file", "build_parser", "parse_args", "main"]


if __name__ == "__main__":
    main(parse_args())
