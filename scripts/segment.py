"""Semantic segmentation on an MAE encoder (UperNet): `accelerate launch scripts/segment.py --model outputs/pretrain`
(see --help and hf_mae/cli/segment.py)."""

from hf_mae.cli.segment import cli

if __name__ == "__main__":
    cli()
