"""MAE pretraining: `accelerate launch scripts/pretrain.py [flags]` (see --help and hf_mae/cli/pretrain.py)."""

from hf_mae.cli.pretrain import cli

if __name__ == "__main__":
    cli()
