"""Fine-tune an MAE encoder: `accelerate launch scripts/finetune.py --model outputs/pretrain` (see --help and
hf_mae/cli/finetune.py)."""

from hf_mae.cli.finetune import cli

if __name__ == "__main__":
    cli()
