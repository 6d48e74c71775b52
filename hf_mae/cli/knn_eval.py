"""Weighted kNN evaluation of frozen MAE features (cosine similarity, k=20, temperature 0.07: the DINO /
Wu et al. protocol): training split -> held-out split, for any hf_mae checkpoint or a baseline.

    python scripts/knn_eval.py --model outputs/pretrain
    python scripts/knn_eval.py --model outputs/pretrain --raw_pixels --output_dir outputs/knn_pixels
    accelerate launch scripts/knn_eval.py --model me/mae-vit-b-encoder --dataset_name ILSVRC/imagenet-1k
"""

from __future__ import annotations

import argparse
import time

from ..evaluation.classifier import load_classifier, read_mae_config
from ..evaluation.knn import knn_accuracy
from ..training.run import finish_run, print_banner, start_run
from .arguments import (
    add_data_arguments,
    add_model_arguments,
    add_run_arguments,
    add_sample_arguments,
    dataset_name,
    positive_float,
    positive_int,
    prepare_data,
    run_cli,
    run_config,
    split_features,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    add_model_arguments(parser, "cls")
    knn = parser.add_argument_group("kNN")
    knn.add_argument("--k", type=positive_int, default=20, help="neighbours that vote (default 20)")
    knn.add_argument("--temperature", type=positive_float, default=0.07, help="vote weight exp(similarity / T)")
    run = add_run_arguments(parser, output_dir="outputs/knn", mixed_precision="no", training=False)
    add_sample_arguments(run)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.raw_pixels and args.random_init:
        raise SystemExit("--raw_pixels and --random_init are two different baselines: give one")
    return args


def main(args: argparse.Namespace) -> dict:
    """Extract train/held-out features, run `knn_accuracy`, print and write results.json and log.jsonl."""
    wall_start = time.time()
    accelerator, run_log, out_dir = start_run(run_config(args), "kNN evaluation", inputs=(args.model,))
    read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, info, num_labels, id2label, label2id = prepare_data(args)
    model, processor, note = load_classifier(args.model, classifier_head="linear_probe", num_labels=num_labels,
                                             id2label=id2label, label2id=label2id, pooling=args.pooling,
                                             random_init=args.random_init, reinit_head=True)
    features = "raw_pixels" if args.raw_pixels else ("random_init" if args.random_init else "pretrained")
    print_banner(accelerator, run_log, "kNN evaluation", {
        "features": "raw pixels" if args.raw_pixels else note, "pooling": None if args.raw_pixels else args.pooling,
        "dataset": info.source, "k": args.k, "temperature": args.temperature, "device": str(accelerator.device)})
    encoder = model.encoder.to(accelerator.device).eval()
    start = time.perf_counter()
    train = split_features(accelerator, encoder, train_data, processor, args, "training features")
    held_out = split_features(accelerator, encoder, eval_data, processor, args, "held-out features")
    features_s = time.perf_counter() - start
    top1 = knn_accuracy(train.features, train.labels, held_out.features, held_out.labels, num_labels, k=args.k,
                        temperature=args.temperature)
    results = {"knn_top1": top1, "k": args.k, "temperature": args.temperature, "model": args.model,
               "features": features, "pooling": None if args.raw_pixels else args.pooling,
               "feature_dim": int(train.features.shape[1]), "num_labels": num_labels,
               "num_train": int(len(train.features)), "num_eval": int(len(held_out.features)),
               "skipped_images": {"train": train.skipped, "eval": held_out.skipped},
               "dataset": dataset_name(args), "data_source": info.source, "eval_split": args.eval_split,
               "seed": args.seed, "features_s": round(features_s, 2),
               "wall_time_s": round(time.time() - wall_start, 1), "args": vars(args)}
    run_log.write({"event": "knn", "knn_top1": top1, "num_train": results["num_train"],
                   "num_eval": results["num_eval"], "skipped_images": results["skipped_images"]})
    finish_run(accelerator, out_dir, results, run_log)
    what = "raw pixels" if args.raw_pixels else (f"{'random-init ' if args.random_init else ''}{args.model}, "
                                                 f"{args.pooling} features")
    accelerator.print(f"kNN (k={args.k}, T={args.temperature}) on {what}: held-out top-1 {top1:.2f}% "
                      f"({len(held_out.features)} images, {len(train.features)} neighbours)\n"
                      f"  results: {out_dir / 'results.json'}")
    return results


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]
