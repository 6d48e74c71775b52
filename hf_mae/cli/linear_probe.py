"""Linear probing of a frozen MAE encoder, with Accelerate.

Linear probe (official `main_linprobe.py`): frozen encoder in eval mode, CLS token after the final norm (or
the mean of the patch tokens with `--pooling mean`), head = BatchNorm1d without affine (eps 1e-6) + Linear
(init std 0.01), LARS (momentum 0.9, trust coefficient 0.001), weight decay 0, lr = blr x batch / 256,
linear warmup then half-cycle cosine set every step, top-1 / top-5 on the held-out split.

Two modes:
- default, fast: features are extracted once with the eval transform (resize + center crop), kept in
  memory (and in `<output_dir>/features.pt` with `--cache_features`), and the head is trained on them:
  seconds on the embedded data, minutes on ImageNet after one pass of feature extraction.
- `--augment`: the official protocol: RandomResizedCrop + flip drawn every epoch, each batch through the
  frozen encoder; the large batch (official 16384) through `--gradient_accumulation_steps`.

The probe is saved as an `MAEForImageClassification` (encoder + BatchNorm with the running statistics the
head was trained with + Linear, `id2label`) with its image processor, loadable with
`AutoModelForImageClassification.from_pretrained(output_dir)`, beside `results.json` (`top1`, `top5` in
percent and the settings). Baselines: `--raw_pixels` (the same head on flattened pixels) and
`--random_init` (the same architecture, untrained).

    accelerate launch scripts/linear_probe.py --model outputs/pretrain              # embedded data, seconds
    accelerate launch scripts/linear_probe.py --model outputs/pretrain --raw_pixels --output_dir outputs/probe_pixels
    accelerate launch scripts/linear_probe.py --model outputs/pretrain --random_init --output_dir outputs/probe_random
    accelerate launch --config_file scripts/configs/multi_gpu.yaml scripts/linear_probe.py \\
        --model me/mae-vit-b-encoder --dataset_name ILSVRC/imagenet-1k --augment \\
        --per_device_batch_size 512 --gradient_accumulation_steps 4      # 8 GPUs x 512 x 4 = 16384
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path, save_pretrained_into
from ..evaluation.classifier import load_classifier, read_mae_config
from ..evaluation.probe import (
    AugmentedProbeConfig,
    ProbeHead,
    evaluate_probe,
    new_probe_head,
    train_probe_augmented,
    train_probe_head,
)
from ..training.optim import scaled_lr
from ..training.run import finish_run, print_banner, start_run
from .arguments import (
    add_data_arguments,
    add_model_arguments,
    add_push_arguments,
    add_run_arguments,
    add_sample_arguments,
    check_push_arguments,
    dataloader_workers,
    dataset_name,
    loop_config,
    nonnegative_int,
    prepare_data,
    run_cli,
    run_config,
    split_features,
    write_cards,
)
from .recipes import add_recipe_arguments, apply_defaults


def _weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _feature_cache_key(args, model, processor, info, num_train: int, num_eval: int) -> dict:
    return {"weights": _weights_digest(model.encoder), "pooling": args.pooling, "raw_pixels": args.raw_pixels,
            "processor": processor.to_dict(), "data": info.source, "num_train": num_train, "num_eval": num_eval,
            "max_train_samples": args.max_train_samples, "max_eval_samples": args.max_eval_samples,
            "seed": args.seed, "train_split": args.train_split, "eval_split": args.eval_split}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    model = add_model_arguments(parser, "cls")
    model.add_argument(
        "--reinit_head", action="store_true",
        help="when --model is a saved linear probe: start a new head instead of continuing from its head")
    recipe = parser.add_argument_group("recipe (official linear probe: LARS, blr 0.1, batch 16384, 90 epochs, "
                                       "10 warmup, wd 0)")
    recipe.add_argument("--augment", action="store_true",
                        help="official protocol: RandomResizedCrop + flip every epoch through the frozen encoder "
                             "(default: features extracted once with the eval transform and cached)")
    add_recipe_arguments(recipe, "linear_probe")
    run = add_run_arguments(parser, output_dir="outputs/probe", mixed_precision="no")
    add_sample_arguments(run)
    run.add_argument("--cache_features", action="store_true",
                     help="also keep the extracted features in <output_dir>/features.pt and reuse them when "
                          "the encoder, data and preprocessing match")
    run.add_argument("--eval_every", type=nonnegative_int, default=10,
                     help="log held-out top-1 every N epochs (0: end only)")
    add_push_arguments(run, "the probe (model + card)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_push_arguments(args)
    if args.push_to_hub and args.raw_pixels:
        raise SystemExit("--raw_pixels saves no model: nothing to push")
    if args.raw_pixels and args.random_init:
        raise SystemExit("--raw_pixels and --random_init are two different baselines: give one")
    if args.augment and args.streaming:
        raise SystemExit("--augment needs epochs over a map-style dataset: drop --streaming")
    return apply_defaults(args, "linear_probe")


def load_or_extract_features(accelerator, args, model, processor, info, train_data, eval_data, out_dir: Path):
    """(train features or None with --augment, held-out features): extracted once with the eval transform,
    or read from `<output_dir>/features.pt` when --cache_features finds a cache of the same inputs."""
    cache_path, key = out_dir / "features.pt", None
    if args.cache_features and not args.augment:
        key = _feature_cache_key(args, model, processor, info, len(train_data) if hasattr(train_data, "__len__")
                                 else -1, len(eval_data) if hasattr(eval_data, "__len__") else -1)
        if cache_path.exists():
            stored = torch.load(cache_path, weights_only=False)
            if stored.get("key") == key:
                accelerator.print(f"features loaded from {cache_path}")
                return stored["train"], stored["eval"]
    encoder = model.encoder
    held_out = split_features(accelerator, encoder, eval_data, processor, args, "held-out features")
    train = None
    if not args.augment:
        train = split_features(accelerator, encoder, train_data, processor, args, "training features")
        if args.cache_features and accelerator.is_main_process:
            with atomic_path(cache_path) as tmp:
                torch.save({"key": key, "train": train, "eval": held_out}, tmp)
    return train, held_out


def main(args: argparse.Namespace) -> dict:
    """Run the linear probe; returns the results dict (also in `<output_dir>/results.json`)."""
    wall_start = time.time()
    accelerator, run_log, out_dir = start_run(run_config(args), "linear probe", inputs=(args.model,),
                                              gradient_accumulation_steps=args.gradient_accumulation_steps)
    read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, info, num_labels, id2label, label2id = prepare_data(args)
    model, processor, note = load_classifier(
        args.model, classifier_head="linear_probe", num_labels=num_labels, id2label=id2label, label2id=label2id,
        pooling=args.pooling, random_init=args.random_init, reinit_head=args.reinit_head)
    model.to(accelerator.device).eval()
    if args.raw_pixels:
        height, width = model.config.image_hw
        probe = new_probe_head(model.config.num_channels * height * width, num_labels).to(accelerator.device)
    else:
        probe = ProbeHead(model.fc_norm, model.head)

    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    print_banner(accelerator, run_log, "linear probe", {
        "mode": "augment" if args.augment else "cached features", "features": "raw pixels" if args.raw_pixels
        else note, "pooling": None if args.raw_pixels else args.pooling, "dataset": info.source,
        "num_train": info.num_train if not args.max_train_samples else len(train_data),
        "num_eval": len(eval_data) if hasattr(eval_data, "__len__") else info.num_eval,
        "num_labels": num_labels, "processes": accelerator.num_processes, "effective_batch_size": effective_batch,
        "blr": args.blr, "lr": lr, "epochs": args.epochs, "warmup_epochs": args.warmup_epochs,
        "device": str(accelerator.device)})

    timings, start = {}, time.perf_counter()
    train, held_out = load_or_extract_features(accelerator, args, model, processor, info, train_data, eval_data,
                                               out_dir)
    timings["features_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    history, skipped_train = train_head(args, accelerator, model, probe, processor, train_data, (train, held_out),
                                        effective_batch, lr, run_log, out_dir)
    timings["train_s"] = round(time.perf_counter() - start, 2)
    results = {**probe_results(args, probe, train, held_out, num_labels),
               "num_train": int(len(train.features)) if train is not None else len(train_data),
               "skipped_images": {"train": skipped_train, "eval": held_out.skipped}, "data_source": info.source,
               "effective_batch_size": effective_batch, "lr": lr,
               "optimizer_steps": history[-1]["step"] if history else 0, **timings,
               "wall_time_s": round(time.time() - wall_start, 1), "args": vars(args)}
    finish(args, accelerator, model, processor, results, timings, out_dir, run_log)
    return results


def train_head(args, accelerator, model, probe, processor, train_data, features, effective_batch: int, lr: float,
               run_log, out_dir: Path) -> tuple[list[dict], int]:
    """The head's epochs: on cached features, or (--augment) on augmented images through the frozen encoder.
    Returns (one record per epoch, undecodable training images)."""
    train, held_out = features

    def log_epoch(record):
        run_log.write(record, step=record["step"])
        if "eval_top1" in record:
            loss = "non-finite" if record["loss"] is None else f"{record['loss']:.4f}"
            accelerator.print(f"epoch {record['epoch']}: loss {loss}, held-out top-1 "
                              f"{record['eval_top1']:.2f}%")

    if args.augment:
        config = AugmentedProbeConfig(
            epochs=args.epochs, lr=lr, per_device_batch_size=args.per_device_batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, min_lr=args.min_lr,
            warmup_epochs=args.warmup_epochs, weight_decay=args.weight_decay, crop_min_scale=args.crop_min_scale,
            hflip=not args.no_hflip, pooling=args.pooling, raw_pixels=args.raw_pixels, eval_every=args.eval_every,
            seed=args.seed, num_workers=dataloader_workers(args), strict_images=args.strict_images,
            resume_from_checkpoint=args.resume_from_checkpoint)
        return train_probe_augmented(accelerator, model, probe, processor, train_data, held_out, config=config,
                                     loop_config=loop_config(args), run_log=run_log,
                                     checkpoints_dir=out_dir / "checkpoints", log=log_epoch)
    history = train_probe_head(
        probe, train.features, train.labels, epochs=args.epochs, batch_size=effective_batch, lr=lr,
        warmup_epochs=args.warmup_epochs, min_lr=args.min_lr, weight_decay=args.weight_decay, seed=args.seed,
        eval_features=held_out.features, eval_labels=held_out.labels, eval_every=args.eval_every,
        log=log_epoch, disable_progress=not accelerator.is_local_main_process,
        max_nonfinite_steps=args.max_nonfinite_steps)
    return history, train.skipped


def probe_results(args, probe, train, held_out, num_labels: int) -> dict:
    """The probe's scores and the settings they came from (results.json)."""
    metrics = evaluate_probe(probe, held_out.features, held_out.labels)
    return {
        "top1": metrics["top1"], "top5": metrics["top5"],
        "train_top1": evaluate_probe(probe, train.features, train.labels)["top1"] if train is not None else None,
        "model": args.model, "features": "raw_pixels" if args.raw_pixels else
        ("random_init" if args.random_init else "pretrained"), "pooling": None if args.raw_pixels else args.pooling,
        "mode": "augment" if args.augment else "cached_features", "feature_dim": int(held_out.features.shape[1]),
        "num_labels": num_labels, "num_eval": int(len(held_out.features)), "dataset": dataset_name(args),
        "eval_split": args.eval_split, "epochs": args.epochs, "blr": args.blr, "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay, "optimizer": "LARS", "seed": args.seed}


def finish(args, accelerator, model, processor, results: dict, timings: dict, out_dir: Path,
           run_log) -> None:
    """Save the probe, write results.json, print the summary, push when asked."""
    if accelerator.is_main_process and not args.raw_pixels:
        save_pretrained_into(out_dir, model, processor)
        write_cards(args, (model, out_dir))
    finish_run(accelerator, out_dir, results, run_log)
    if not accelerator.is_main_process:
        return
    what = "raw pixels" if args.raw_pixels else f"{results['features']} {args.pooling} features"
    accelerator.print(f"linear probe on {what}: held-out top-1 {results['top1']:.2f}%, top-5 "
                      f"{results['top5']:.2f}% ({results['num_eval']} images); features "
                      f"{timings['features_s']:.1f} s, head {timings['train_s']:.1f} s\n  results: "
                      f"{out_dir / 'results.json'}" + ("" if args.raw_pixels else
                                                       f"\n  probe (AutoModelForImageClassification): {out_dir}"))
    if args.push_to_hub:
        from ..hub.push import push_probe

        source = Path(args.model)
        checkpoint = source if (source / "training_args.json").is_file() else None
        push_probe(out_dir, args.hub_model_id, checkpoint=checkpoint, private=args.hub_private)


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]
