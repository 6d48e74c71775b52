"""One export folder: every format, its processor and export_info.json."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..atomic import save_pretrained_into, write_json
from .formats import export_onnx, export_program, export_torchscript, quantize_int8
from .parity import check_export
from .spec import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, FILE_NAMES, FORMATS, INPUT_NAME, ExportParityError, require
from .wrappers import ClassifierForExport, wrap_for_export, wrapped_config

STAGING_PREFIX = ".export-staging-"

# --------------------------------------------------------------------------------------------------------
# One call for everything: the CLI's core
# --------------------------------------------------------------------------------------------------------


def export_model(model: nn.Module, output_dir: str | os.PathLike, formats: Sequence[str] = ("onnx",), *,
                 processor=None, check: bool = True, atol: float | None = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 opset_version: int = DEFAULT_OPSET, onnx_exporter: str = "legacy", per_channel: bool = False,
                 keep_fp32: Sequence[str] = (), num_check_images: int = 32, source: str | None = None) -> dict:
    """Export `model` (encoder or classifier) in each of `formats` into `output_dir` (file names as
    `FILE_NAMES`; int8 also writes the fp32 model.onnx it is made from), check each against PyTorch, save the
    processor's `preprocessor_config.json` and `export_info.json` (inputs, outputs, files, sizes, parity).
    The fp32 formats must match PyTorch within `atol + rtol * max|reference|` per output (`atol=None`: report
    only; int8 is always report only). Nothing is left in `output_dir` when an export or a check fails. Returns
    the `export_info.json` content."""
    unknown = [f for f in formats if f not in (*FORMATS, "all")]
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)} or all")
    formats = [f for f in FORMATS if f in formats or "all" in formats]  # onnx before int8, which quantizes it
    if any(f in ("onnx", "int8") for f in formats):
        require("onnx", "ONNX export")
        if check or "int8" in formats:
            require("onnxruntime", "checking ONNX exports" if check else "int8 quantization")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Everything is written and checked in a staging folder and moved into place only when every check passed:
    # an export that fails (parity, a crash, Ctrl-C) leaves none of its files behind.
    for stale in output_dir.glob(f"{STAGING_PREFIX}*"):  # a killed export's: the folder is this export's own
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
    try:
        info = _export_into(staging, model, formats, processor=processor, check=check, atol=atol, rtol=rtol,
                            opset_version=opset_version, onnx_exporter=onnx_exporter, per_channel=per_channel,
                            keep_fp32=keep_fp32, num_check_images=num_check_images, source=source)
        staged = sorted(staging.iterdir(), key=lambda path: path.name == "export_info.json")  # the info last
        for path in staged:
            os.replace(path, output_dir / path.name)
    except ExportParityError as e:  # name the file as the user will look for it, not its staging copy
        raise ExportParityError(str(e).replace(str(staging), str(output_dir))) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return info


def _export_into(output_dir: Path, model: nn.Module, formats: Sequence[str], *, processor, check: bool,
                 atol: float | None, rtol: float, opset_version: int, onnx_exporter: str, per_channel: bool,
                 keep_fp32: Sequence[str], num_check_images: int, source: str | None) -> dict:
    """`export_model`'s work, in the (staging) folder `output_dir`."""
    module = wrap_for_export(model)
    config = wrapped_config(module)
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
        save_pretrained_into(output_dir, processor)
    write_json(output_dir / "export_info.json", info)
    return info
