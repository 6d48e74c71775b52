"""Linear probe of a frozen MAE encoder: `accelerate launch scripts/linear_probe.py --model outputs/pretrain`
(see --help and hf_mae/cli/linear_probe.py)."""

from hf_mae.cli.linear_probe import cli

if __name__ == "__main__":
    cli()
