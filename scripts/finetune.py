"""Fine-tune an MAE encoder: `accelerate launch scripts/finetune.py --model outputs/pretrain` (see --help and
hf_mae/finetuning.py)."""

from hf_mae.finetuning import cli

if __name__ == "__main__":
    cli()
