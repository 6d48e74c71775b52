"""Fine-tune an MAE encoder end to end: `accelerate launch scripts/finetune.py --model outputs/pretrain`
(see --help and hf_mae/finetuning.py)."""

from hf_mae.finetuning import main, parse_args

if __name__ == "__main__":
    main(parse_args())
