"""MAE pretraining: `accelerate launch scripts/pretrain.py [flags]` (see --help and hf_mae/pretraining.py)."""

from hf_mae.pretraining import main, parse_args

if __name__ == "__main__":
    main(parse_args())
