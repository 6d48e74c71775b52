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
`atol` (1e-4) plus `rtol` (1e-5) x the output's largest |value|; int8 is reported (difference, argmax
agreement or feature cosine), not held to `atol`. The numbers go to `<output>/export_info.json`.

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

from ..models.mae.image_processing_mae import check_processor_matches
from ..training.output_dir import check_output_dir, mark_finished, take_output_dir
from .arguments import (
    add_attn_implementation_argument,
    add_model_argument,
    add_output_dir_arguments,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    run_cli,
)

try:  # the opsets torch writes (checked at parse time)
    from torch.onnx import _constants as _onnx_constants
except ImportError:
    _onnx_constants = None
from ..export.folder import export_model
from ..export.spec import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    FORMATS,
    ExportParityError,
    MissingExportDependency,
    PretrainingModelError,
)
from ..export.wrappers import load_model


def _opset(text: str) -> int:
    """`--opset`: an ONNX opset torch can write."""
    low, high = getattr(_onnx_constants, "ONNX_MIN_OPSET", 7), getattr(_onnx_constants, "ONNX_MAX_OPSET", 23)
    value = nonnegative_int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected an ONNX opset from {low} to {high}, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_argument(parser, required=True, aliases=(),
                       help="hf_mae encoder (AutoModel) or classifier (AutoModelForImageClassification): a "
                            "save_pretrained folder or a Hub id. Not a pretraining model: give <folder>/encoder")
    parser.add_argument("--format", nargs="+", default=["onnx"], choices=[*FORMATS, "all"], metavar="FORMAT",
                        help="one or more of: onnx (model.onnx), int8 (model_int8.onnx, dynamic quantization of the "
                             "Linear layers), export (torch.export program model.pt2), torchscript (trace model.pt), "
                             "all (default: onnx)")
    add_output_dir_arguments(
        parser, short_names=True, default="outputs/export",
        help="output folder for the files, preprocessor_config.json and export_info.json (default: outputs/export). "
             "Never the --model folder; a folder that holds a finished export or another program's outputs is "
             "refused unless --overwrite",
        overwrite_help="export into a folder that already holds outputs: hf_mae's own files there (an earlier "
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
    add_attn_implementation_argument(parser, choices=["sdpa", "eager"], default="sdpa",
                                     help="attention kernel traced into the graph (default sdpa; both export and "
                                          "give the same numbers)")
    parser.add_argument("--atol", type=nonnegative_float, default=DEFAULT_ATOL,
                        help=f"largest allowed |exported - PyTorch| for the fp32 formats (default {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=nonnegative_float, default=DEFAULT_RTOL,
                        help="tolerance added to --atol, relative to each output's largest |value| (default "
                             f"{DEFAULT_RTOL:g}), for outputs large enough that fp32 rounding alone nears --atol "
                             "(a probe's BatchNorm-scaled logits)")
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


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


if __name__ == "__main__":
    cli()
