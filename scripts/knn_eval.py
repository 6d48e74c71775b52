"""Weighted kNN (cosine, k=20, T=0.07) of frozen features: `python scripts/knn_eval.py --model outputs/pretrain`
(see --help and hf_mae/cli/knn_eval.py)."""

from hf_mae.cli.knn_eval import cli

if __name__ == "__main__":
    cli()
