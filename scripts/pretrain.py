"""MAE pretraining: `accelerate launch scripts/pretrain.py [flags]` (see --help and hf_mae/pretraining.py)."""

from hf_mae.pretraining import cli

if __name__ == "__main__":
    cli()
