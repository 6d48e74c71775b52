"""Weighted kNN (cosine, k=20, T=0.07) of frozen features: `python scripts/knn_eval.py --model outputs/pretrain`
(see --help and hf_mae/probing.py)."""

from hf_mae.probing import knn_main, parse_knn_args

if __name__ == "__main__":
    knn_main(parse_knn_args())
