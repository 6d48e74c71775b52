"""Convert MAE / ViT checkpoints to hf_mae from the command line: `python scripts/convert_checkpoint.py` or
`python -m hf_mae.cli.convert_checkpoint` (the conversion itself is `hf_mae.convert.load_any`)."""

import argparse
import json
import os
import sys

import torch

from ..atomic import atomic_path, replace_folder, write_json
from ..convert.files import read_json_file
from ..convert.load import export_state_dict, load_any
from ..convert.names import ConversionError
from ..convert.vitmae import to_transformers
from ..models.mae.configuration_mae import PRESETS
from ..models.mae.image_processing_mae import MAEImageProcessor
from ..training.output_dir import RUN_MARKER

CLI_EXAMPLES = """examples:
  python scripts/convert_checkpoint.py mae_pretrain_vit_base.pth outputs/mae-vit-base    # -> hf_mae folder
  python scripts/convert_checkpoint.py outputs/mae-vit-base vit_b_timm.safetensors --to timm
  python scripts/convert_checkpoint.py facebook-vit-mae-base/ mae_visualize.pth --to official
  python scripts/convert_checkpoint.py ckpt.pth out --config '{"num_attention_heads": 8}'  # or a .json

The input is read with torch.load(weights_only=True) or safetensors only: pickled code is never run. The key
report (mapped / ignored / unmapped / missing keys, position embeddings) is printed. The output is written to
a temporary path beside it and moved into place at the end, so a failed or killed conversion leaves nothing
half-written; an existing non-empty output is refused (before the input is read) unless --overwrite.
"""
FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def config_flag(value: str):
    """`--config`: a preset name, a JSON file of config fields, or an inline JSON object (argparse type)."""
    if value in PRESETS:
        return value
    if os.path.isfile(value):
        return read_json_file(value, "--config")
    if value.lstrip().startswith("{"):
        try:
            fields = json.loads(value)
        except json.JSONDecodeError as error:
            raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {value!r}") from None
        if not isinstance(fields, dict):
            raise argparse.ArgumentTypeError(f"a JSON object of config fields expected, got {value!r}")
        return fields
    raise argparse.ArgumentTypeError(f"{value!r} is neither a preset ({', '.join(PRESETS)}), a JSON file nor a "
                                     f"JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Convert MAE / ViT checkpoints (official .pth, timm, transformers ViTMAE/ViT, hf_mae) to "
                    "hf_mae, official, timm or transformers layout, with a key report.",
        epilog=CLI_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input",
                        help="checkpoint file (.pth/.pt/.bin/.safetensors) or save_pretrained folder")
    parser.add_argument("output",
                        help="output: a folder for --to hf_mae (and for --to transformers without a file "
                             "suffix), else a .safetensors or .pth/.pt/.bin file")
    parser.add_argument("--to", choices=["hf_mae", "official", "timm", "transformers"], default="hf_mae",
                        help="target layout (default hf_mae): hf_mae (save_pretrained folder + image "
                             "processor), official (facebookresearch/mae names, decoder included; .pth files are "
                             "wrapped as {'model': ...}), timm (encoder only, timm/detectron2/mmseg ViT names) or "
                             "transformers (ViTMAEForPreTraining / ViTModel 5.x names; a folder output is a "
                             "save_pretrained folder)")
    parser.add_argument("--config", type=config_flag, default=None,
                        help=f"architecture: a preset name ({', '.join(PRESETS)}), or a JSON file or JSON "
                             "string of config fields applied over what is inferred from the weights (e.g. "
                             "'{\"num_attention_heads\": 8}': heads are not stored in weights). Unset: "
                             "everything is inferred from tensor shapes (or read from the input folder's "
                             "config.json)")
    parser.add_argument("--allow_unknown_keys", action="store_true",
                        help="load with strict=False: unknown keys are skipped and missing ones keep their "
                             "initial values (both listed in the report) instead of stopping with an error")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty output (otherwise the conversion stops before "
                             "reading the input); the old output is removed only once the new one is complete")
    parser.add_argument("--verbose", action="store_true",
                        help="list every key in the report, not the first few")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _is_non_empty(path: str) -> bool:
    if os.path.isdir(path):
        return bool(os.listdir(path))
    return os.path.lexists(path) and (os.path.islink(path) or os.path.getsize(path) > 0)


def _check_output(args) -> str:
    """The output kind ("folder" or a suffix), after refusing paths that would be lost or ambiguous."""
    output, source = os.path.realpath(args.output), os.path.realpath(args.input)
    if source == output:
        raise ConversionError(f"input and output are the same path ({args.output}): give a new output")
    if os.path.isdir(output) and os.path.commonpath([source, output]) == output:
        raise ConversionError(f"the input {args.input} is inside the output folder {args.output}: replacing "
                              f"the output would delete the input; give another output")
    parent = os.path.dirname(output)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConversionError(f"cannot write {args.output}: {parent} is a file, not a folder")
    if _is_non_empty(output) and not args.overwrite:
        raise FileExistsError(f"{args.output} exists and is not empty; pass --overwrite to replace it (it is "
                              f"removed only once the new output is complete)")
    suffix = os.path.splitext(output)[1].lower()
    if args.to == "hf_mae":
        if suffix in FILE_SUFFIXES:
            raise ConversionError(
                f"--to hf_mae writes a save_pretrained folder; {args.output} looks like a file")
        return "folder"
    if suffix in FILE_SUFFIXES:
        return suffix
    if args.to == "transformers":
        return "folder"
    raise ConversionError(f"--to {args.to} writes a single file: give the output a .safetensors or "
                          f".pth/.pt/.bin suffix (got {args.output})")


def _write(model, config, args, kind: str, temp: str) -> None:
    """Write the converted checkpoint to `temp` (a folder or a file)."""
    if args.to == "hf_mae":
        model.save_pretrained(temp)
        MAEImageProcessor.for_config(config).save_pretrained(temp)
    elif kind == "folder":  # transformers save_pretrained folder
        to_transformers(model).save_pretrained(temp)
    else:
        state = export_state_dict(model, args.to)
        if kind == ".safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, temp,
                      metadata={"format": "pt", "layout": args.to})
        else:
            torch.save({"model": state} if args.to == "official" else state, temp)


def main(args: argparse.Namespace) -> int:
    """Convert `args.input` to `args.output`; returns the exit status (0 done, 1 refused or failed)."""
    try:
        kind = _check_output(args)
        model, report = load_any(args.input, config=args.config, strict=not args.allow_unknown_keys)
    except (ConversionError, FileExistsError, FileNotFoundError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(report.format(max_keys=None if args.verbose else 8))
    try:
        if kind == "folder":
            with replace_folder(args.output) as temp:
                _write(model, report.config, args, kind, str(temp))
                # marked as hf_mae output: the training programs then refuse to write into it
                write_json(temp / RUN_MARKER, {"program": "convert", "status": "finished",
                                               "input": os.path.abspath(args.input)})
        else:
            with atomic_path(args.output) as temp:
                _write(model, report.config, args, kind, str(temp))
    except OSError as error:
        print(f"error: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 1
    what = report.model_class
    if args.to == "timm" and what == "MAEForPreTraining":
        what = "encoder only: the timm layout has no decoder"
    print(f"wrote {args.to} checkpoint ({what}) to {args.output}")
    return 0


def cli(argv=None) -> int:
    """The command line: the exit status of `main`; any other failure ends in one line (run_cli)."""
    from .arguments import run_cli

    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]


if __name__ == "__main__":
    sys.exit(cli())
