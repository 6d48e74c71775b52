"""End-to-end fine-tuning of an MAE encoder for image classification, with Accelerate.

Official recipe (`main_finetune.py`, FINETUNE.md; ViT-B): global average pooling of the patch tokens + a new
fc_norm (LayerNorm) + Linear head (init std 2e-5), AdamW (0.9, 0.999), weight decay 0.05, layer-wise lr decay
0.65, drop path 0.1, mixup 0.8 + cutmix 1.0 (switch 0.5) with label smoothing 0.1, blr 5e-4 with
lr = blr x effective_batch / 256 (batch 1024), 5 warmup epochs then cosine to 1e-6 set every step, 100 epochs,
RandAugment rand-m9-mstd0.5-inc1 and random erasing 0.25 (`hf_mae.augment`): 83.6% top-1 on ImageNet.

With no data flag it fine-tunes on the embedded default data with defaults sized for a few minutes on 2 CPU
cores (cli/arguments.py RECIPE_DEFAULTS); any other dataset gets the official values. Evaluation on the held-out split
after every epoch; the best epoch's model is kept in `<output_dir>/best`, the final one in `<output_dir>`
(both `AutoModelForImageClassification`-loadable, with the processor), `results.json` holds the best and
final top-1 / top-5 and the settings. `--random_init` trains the same architecture from scratch with the
same recipe and budget: the comparison that shows what pretraining buys. Each epoch (and, with
`--checkpointing_steps N`, every N steps) ends with a resumable checkpoint (`<output_dir>/checkpoints`);
`--resume_from_checkpoint latest` continues a stopped run exactly.

    accelerate launch scripts/finetune.py --model outputs/pretrain                  # embedded data
    accelerate launch scripts/finetune.py --model outputs/pretrain --random_init --output_dir outputs/finetune_scratch
    accelerate launch --config_file scripts/configs/multi_gpu.yaml scripts/finetune.py \\
        --model me/mae-vit-b-encoder --dataset_name ILSVRC/imagenet-1k --per_device_batch_size 128   # 8 x 128 = 1024
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..atomic import save_pretrained, save_pretrained_into
from ..data.augment import RandAugment, RandomErasing
from ..data.decoding import make_transform_fn
from ..data.mixup import Mixup
from ..data.train_loader import seeded_generator, train_dataloader
from ..data.transforms import TrainTransform
from ..evaluation.classification import evaluate_classifier
from ..evaluation.classifier import load_classifier, read_mae_config
from ..evaluation.features import eval_dataloader
from ..training.distributed import FullModel
from ..training.loop import TrainingLoop, placeholder_batch, plan_schedule
from ..training.optim import build_adamw, param_groups_layer_decay, scaled_lr
from ..training.run import finish_run, print_banner, start_run
from .arguments import (
    add_attn_implementation_argument,
    add_data_arguments,
    add_model_arguments,
    add_run_arguments,
    add_sample_arguments,
    dataloader_workers,
    dataset_name,
    loop_config,
    nonnegative_float,
    open_fraction,
    prepare_data,
    run_cli,
    run_config,
    scale_fraction,
    unit_fraction,
    write_cards,
)
from .recipes import add_recipe_arguments, apply_defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    model = add_model_arguments(parser, "mean", raw_pixels=False)
    model.add_argument("--reinit_head", action="store_true",
                       help="when --model is already a fine-tuned classifier: start a new head (needed when its "
                            "classes differ from the data's)")
    add_attn_implementation_argument(
        model, help="sdpa or eager (default: eager on CPU, where it trains several times faster; else sdpa)")
    recipe = parser.add_argument_group("recipe (unset: official ViT-B values, or the embedded-data defaults)")
    add_recipe_arguments(recipe, "finetune")
    recipe.add_argument("--layer_decay", type=scale_fraction, default=None,
                        help="layer-wise lr decay: block i gets decay^(depth - i) (official 0.65 ViT-B, 0.75 "
                             "ViT-L; embedded 0.75)")
    recipe.add_argument("--drop_path", type=open_fraction, default=None, help="stochastic depth rate (official 0.1)")
    recipe.add_argument("--mixup", type=nonnegative_float, default=None,
                        help="mixup alpha, 0 disables (official 0.8; embedded 0)")
    recipe.add_argument("--cutmix", type=nonnegative_float, default=None,
                        help="cutmix alpha, 0 disables (official 1.0; embedded 0)")
    recipe.add_argument("--mixup_prob", type=unit_fraction, default=1.0, help="probability of mixing a batch")
    recipe.add_argument("--mixup_switch_prob", type=unit_fraction, default=0.5,
                        help="probability of cutmix over mixup")
    recipe.add_argument("--smoothing", type=open_fraction, default=None, help="label smoothing (official 0.1)")
    recipe.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                        help="random horizontal flip (official on; embedded off: digits are not symmetric)")
    recipe.add_argument("--aa", default=None,
                        help="RandAugment policy in timm's notation, or none (official rand-m9-mstd0.5-inc1; "
                             "embedded none)")
    recipe.add_argument("--reprob", type=unit_fraction, default=None,
                        help="random erasing probability (official 0.25; embedded 0)")
    run = add_run_arguments(parser, output_dir="outputs/finetune")
    add_sample_arguments(run)
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.raw_pixels = False
    if args.streaming:
        raise SystemExit("fine-tuning runs epochs over a map-style dataset: drop --streaming")
    args = apply_defaults(args, "finetune")
    try:  # bad values fail here, before any data or model is loaded
        RandAugment.from_string(args.aa)
        RandomErasing(args.reprob)
    except ValueError as error:
        raise SystemExit(f"--aa / --reprob: {error}") from None
    return args


def load_model(args, accelerator, num_labels: int, id2label: dict, label2id: dict):
    """(classifier with a fine-tune head, processor, what it was loaded from, attention implementation)."""
    overrides = {"drop_path_rate": args.drop_path}
    # CPU training: plain matmul + softmax attention (SDPA's CPU backward is several times slower: BENCHMARKS.md)
    attn = args.attn_implementation or ("eager" if accelerator.device.type == "cpu" else None)
    if attn:
        overrides["attn_implementation"] = attn
    model, processor, note = load_classifier(
        args.model, classifier_head="finetune", num_labels=num_labels, id2label=id2label, label2id=label2id,
        pooling=args.pooling, random_init=args.random_init, reinit_head=args.reinit_head, **overrides)
    model.encoder.norm.requires_grad_(False)  # the fine-tune head pools pre-norm tokens: the final norm is unused
    return model, processor, note, attn


def loaders(args, accelerator, config, processor, train_data, eval_data):
    """(train loader, held-out loader, the train transform fn, the train transform)."""
    transform = TrainTransform(config.image_size, scale=(args.crop_min_scale, 1.0), hflip=args.hflip,
                               mean=processor.image_mean, std=processor.image_std, num_channels=config.num_channels,
                               augment=RandAugment.from_string(args.aa),
                               erase=RandomErasing(args.reprob) if args.reprob > 0 else None,
                               output="uint8")  # normalised (and erased) on the device: TrainTransform
    train_fn = make_transform_fn(transform, config.num_channels, strict=args.strict_images)
    workers = dataloader_workers(args)
    train_loader = train_dataloader(train_data, train_fn, args.per_device_batch_size, workers, args.seed,
                                    pin_memory=accelerator.device.type == "cuda")
    eval_loader = eval_dataloader(eval_data, processor, args.eval_batch_size, workers, strict=args.strict_images)
    return train_loader, eval_loader, train_fn, transform


def plan(args, accelerator, train_loader, num_train: int):
    if len(train_loader) == 0:
        raise ValueError(f"{num_train} training images are fewer than one batch of "
                         f"{args.per_device_batch_size} x {accelerator.num_processes} processes")
    return plan_schedule(len(train_loader), args.gradient_accumulation_steps, epochs=args.epochs,
                         warmup_epochs=args.warmup_epochs, warmup_ratio=args.warmup_ratio)


def main(args: argparse.Namespace) -> dict:
    """Fine-tune; returns the results dict (also in `<output_dir>/results.json`)."""
    wall_start = time.time()
    accelerator, run_log, out_dir = start_run(run_config(args), "fine-tuning", inputs=(args.model,),
                                              save_settings=True,
                                              gradient_accumulation_steps=args.gradient_accumulation_steps)
    read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, info, num_labels, id2label, label2id = prepare_data(args)
    model, processor, note, attn = load_model(args, accelerator, num_labels, id2label, label2id)
    config = model.config
    train_loader, eval_loader, train_fn, transform = loaders(args, accelerator, config, processor, train_data,
                                                             eval_data)
    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    optimizer = build_adamw(param_groups_layer_decay(model, args.weight_decay, args.layer_decay), lr=lr,
                            betas=(0.9, 0.999))
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    schedule = plan(args, accelerator, train_loader, len(train_data))
    mixup = Mixup(args.mixup, args.cutmix, prob=args.mixup_prob, switch_prob=args.mixup_switch_prob,
                  label_smoothing=args.smoothing, num_classes=num_labels)  # its generator: set per batch
    loop = TrainingLoop(accelerator, model, optimizer, train_loader, schedule, lr=lr, min_lr=args.min_lr,
                        config=loop_config(args), max_grad_norm=args.max_grad_norm,
                        checkpoints_dir=out_dir / "checkpoints", processor=processor, run_log=run_log,
                        desc="fine-tuning", bad_images=lambda: train_fn.num_bad, normalize=transform.normalizer(),
                        placeholder=lambda: placeholder_batch(config, accelerator.device, labels=True))
    state = loop.resume(args.resume_from_checkpoint)
    print_banner(accelerator, run_log, "fine-tuning", {
        "model": note, "dataset": info.source, "num_train": len(train_data), "num_eval": len(eval_data),
        "num_labels": num_labels, "pooling": args.pooling, "processes": accelerator.num_processes,
        "per_device_batch_size": args.per_device_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps, "effective_batch_size": effective_batch,
        "blr": args.blr, "lr": lr, "epochs": args.epochs, "optimizer_steps": schedule.total_updates,
        "warmup_steps": schedule.warmup_updates, "layer_decay": args.layer_decay, "drop_path": args.drop_path,
        "mixup": args.mixup, "cutmix": args.cutmix, "smoothing": args.smoothing, "randaugment": args.aa,
        "random_erasing": args.reprob, "weight_decay": args.weight_decay,
        "mixed_precision": accelerator.mixed_precision, "attn_implementation": attn or "sdpa",
        "device": str(accelerator.device), "resumed_from": str(loop.resumed_from) if loop.resumed_from else None},
        model=model)
    history, best, summary = train(args, accelerator, model, mixup, loop, state, eval_loader, processor, run_log,
                                   out_dir)
    final = history[-1] if history else {"top1": None, "top5": None}
    results = {
        "top1": final["top1"], "top5": final["top5"], "final_top1": final["top1"], "final_top5": final["top5"],
        "best_top1": best.get("top1"), "best_top5": best.get("top5"), "best_epoch": best.get("epoch"),
        "model": args.model, "init": "random_init" if args.random_init else "pretrained", "pooling": args.pooling,
        "num_labels": num_labels, "num_train": len(train_data), "num_eval": len(eval_data),
        "dataset": dataset_name(args), "data_source": info.source, "eval_split": args.eval_split,
        **summary, "epochs": args.epochs, "effective_batch_size": effective_batch,
        "blr": args.blr, "lr": lr, "min_lr": args.min_lr, "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay, "layer_decay": args.layer_decay, "drop_path": args.drop_path,
        "mixup": args.mixup, "cutmix": args.cutmix, "smoothing": args.smoothing,
        "crop_min_scale": args.crop_min_scale, "hflip": args.hflip, "randaugment": args.aa, "reprob": args.reprob,
        "optimizer": "AdamW (0.9, 0.999)", "mixed_precision": accelerator.mixed_precision, "seed": args.seed,
        "history": history, "wall_time_s": round(time.time() - wall_start, 1), "args": vars(args),
    }
    finish(args, accelerator, accelerator.unwrap_model(model), processor, results, best, out_dir, run_log)
    return results


def train(args, accelerator, model, mixup: Mixup, loop: TrainingLoop, state: dict, eval_loader, processor, run_log,
          out_dir: Path) -> tuple[list[dict], dict, dict]:
    """The epochs: mixed batches, a held-out evaluation after each epoch, the best epoch's model kept in
    `<output_dir>/best`. Returns (one record per epoch, the best epoch, the loop's summary)."""
    full_model = FullModel(accelerator.unwrap_model(model))  # gathered from every process when sharded
    history = state.get("history", [])
    # resumed into a new folder: the best is tracked from here on
    best = state["best"] if state and (out_dir / "best").exists() else {"top1": -1.0}

    def step(batch, epoch, batch_index):
        mixup.generator = seeded_generator(args.seed, epoch, batch_index, accelerator.process_index)
        pixels, targets = mixup(batch["pixel_values"], batch["labels"])
        return model(pixel_values=pixels, labels=targets).loss

    def epoch_end(epoch_done, train_loss, done):
        nonlocal best
        metrics = evaluate_classifier(accelerator, model, eval_loader)
        record = {"event": "eval", "epoch": epoch_done, "step": loop.update_step, "train_loss": train_loss,
                  "eval_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"],
                  "eval_skipped_images": metrics["skipped_images"]}
        history.append(record)
        run_log.write(record, step=loop.update_step)
        improved = metrics["top1"] > best["top1"]
        if improved:
            best = {"top1": metrics["top1"], "top5": metrics["top5"], "epoch": epoch_done}
            unwrapped = full_model.get(build=accelerator.is_main_process)  # the metrics agree on every process
            if accelerator.is_main_process:
                save_pretrained(out_dir / "best", unwrapped, processor)
        accelerator.wait_for_everyone()
        loss_text = "non-finite" if train_loss is None else f"{train_loss:.4f}"
        accelerator.print(f"epoch {epoch_done}/{args.epochs}: train loss {loss_text}, held-out top-1 "
                          f"{metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%" + (" (best)" if improved else ""))

    summary = loop.run(step, on_epoch_end=epoch_end, extra_state=lambda: {"best": best, "history": history})
    return history, best, summary


def finish(args, accelerator, model, processor, results: dict, best: dict, out_dir: Path, run_log) -> None:
    """Save the final model (gathered from every process when sharded), write results.json, print the summary."""
    full = FullModel(model).get(build=accelerator.is_main_process)
    if accelerator.is_main_process:
        save_pretrained_into(out_dir, full, processor)
        write_cards(args, (full, out_dir))
    finish_run(accelerator, out_dir, results, run_log)
    if accelerator.is_main_process:
        print_summary(accelerator, args, results, best, out_dir)


def print_summary(accelerator, args, results: dict, best: dict, out_dir: Path) -> None:
    init = "random init" if args.random_init else "pretrained"
    best_text = f"best {best['top1']:.2f}% (epoch {best['epoch']})" if "epoch" in best else "no epoch run here"
    final = "none" if results["top1"] is None else f"{results['top1']:.2f}%"
    accelerator.print(f"fine-tuning ({init}) done in {results['wall_time_s']:.0f} s: held-out top-1 final "
                      f"{final}, {best_text}\n"
                      f"  final model: {out_dir}\n  best model:  {out_dir / 'best'}\n"
                      f"  results:     {out_dir / 'results.json'}")


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]
