"""A prepared copy of a dataset, shorter side capped: `python scripts/prepare_dataset.py --train_dir DIR
--output_dir OUT --shorter_side 256 --format parquet` (see --help and hf_mae/cli/prepare_dataset.py)."""

from hf_mae.cli.prepare_dataset import cli

if __name__ == "__main__":
    cli()
