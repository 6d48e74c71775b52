"""Exporters: ONNX, int8 ONNX, torch.export, TorchScript."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path
from .spec import DEFAULT_OPSET, INPUT_NAME, require
from .wrappers import example_input, wrap_for_export, wrapped_config

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
    example = example_input(wrapped_config(module))
    with torch.no_grad(), atomic_path(path) as tmp:
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
        with atomic_path(path) as tmp:
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
        program = torch.export.export(module, (example_input(wrapped_config(module)),), dynamic_shapes=({0: batch},))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a file object: no warning about the suffix
        torch.export.save(program, handle)
    return path


def export_torchscript(model: nn.Module, path: str | os.PathLike) -> Path:
    """A TorchScript trace (`torch.jit.trace`, saved with `.save`); any batch size."""
    module = wrap_for_export(model)
    path = Path(path)
    with torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(module, example_input(wrapped_config(module)))
    with atomic_path(path) as tmp:
        traced.save(str(tmp))
    return path
