"""What an export is: its formats and file names, input and output names, the parity tolerance, and its errors."""

from __future__ import annotations

import importlib

FORMATS = ("onnx", "int8", "export", "torchscript")
FILE_NAMES = {"onnx": "model.onnx", "int8": "model_int8.onnx", "export": "model.pt2", "torchscript": "model.pt"}
INPUT_NAME = "pixel_values"
ENCODER_OUTPUTS = ("last_hidden_state", "pooler_output")
CLASSIFIER_OUTPUTS = ("logits",)
DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
# relative to each output's largest |value|: fp32 rounding grows with the output's scale, so a probe whose BatchNorm
# sharply normalises nearly constant features (logits ~20) differs by ~1.3e-4 on elements far smaller than the largest
DEFAULT_RTOL = 1e-5
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
