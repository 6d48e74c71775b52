"""Linear probe of a frozen MAE encoder: `accelerate launch scripts/linear_probe.py --model outputs/pretrain`
(see --help and hf_mae/probing.py)."""

from hf_mae.probing import main, parse_args

if __name__ == "__main__":
    main(parse_args())
