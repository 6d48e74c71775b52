"""End-to-end fine-tuning of an MAE encoder for image classification, with Accelerate.

Official recipe (`main_finetune.py`, FINETUNE.md; ViT-B): global average pooling of the patch tokens + a new
fc_norm (LayerNorm) + Linear head (init std 2e-5), AdamW (0.9, 0.999), weight decay 0.05, layer-wise lr decay
0.65, drop path 0.1, mixup 0.8 + cutmix 1.0 (switch 0.5) with label smoothing 0.1, blr 5e-4 with
lr = blr x effective_batch / 256 (batch 1024), 5 warmup epochs then cosine to 1e-6 set every step, 100 epochs,
RandAugment rand-m9-mstd0.5-inc1 and random erasing 0.25 (`hf_mae.augment`): 83.6% top-1 on ImageNet.

With no data flag it fine-tunes on the embedded default data with defaults sized for a few minutes on 2 CPU
cores (see EMBEDDED_DEFAULTS); any other dataset gets the official values. Evaluation on the held-out split
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
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .augment import RandAugment, RandomErasing
from .checkpointing import resume_from, save_checkpoint, save_pretrained_atomic, write_json_atomic
from .data import TrainTransform, make_transform_fn
from .data_args import add_data_arguments, dataloader_workers
from .features import eval_dataloader
from .mixup import Mixup
from .optim import build_adamw, lr_at_step, param_groups_layer_decay, scaled_lr, set_lr
from .pretraining import start_run, trackers_from
from .probing import (
    _dataset_name,
    add_common_run_arguments,
    add_model_arguments,
    apply_defaults,
    load_classifier,
    load_topk_metric,
    prepare_data,
    read_mae_config,
    save_model_into,
)
from .train_loader import seeded_generator, train_dataloader

# Unset flags take these values on the embedded default data (4,000 28x28 digits) or the official ViT-B values
# elsewhere. Embedded, measured on 2 CPU cores (bf16, eager attention, ~290 img/s): ~15 s per epoch with its
# evaluation, ~4 min in all; from a 20-epoch pretraining 95.9% held-out top-1, from scratch 81.9%.
EMBEDDED_DEFAULTS = {"epochs": 15, "blr": 1e-3, "warmup_epochs": 1, "per_device_batch_size": 128,
                     "layer_decay": 0.75, "drop_path": 0.1, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1,
                     "crop_min_scale": 0.35, "hflip": False, "aa": "none", "reprob": 0.0}
PAPER_DEFAULTS = {"epochs": 100, "blr": 5e-4, "warmup_epochs": 5, "per_device_batch_size": 64,
                  "layer_decay": 0.65, "drop_path": 0.1, "mixup": 0.8, "cutmix": 1.0, "smoothing": 0.1,
                  "crop_min_scale": 0.08, "hflip": True, "aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    model = add_model_arguments(parser, "mean", raw_pixels=False)
    model.add_argument("--reinit_head", action="store_true",
                       help="when --model is already a fine-tuned classifier: start a new head (needed when its "
                            "classes differ from the data's)")
    model.add_argument("--attn_implementation", default=None,
                       help="sdpa or eager (default: eager on CPU, where it trains several times faster; else sdpa)")
    recipe = parser.add_argument_group("recipe (unset: official ViT-B values, or the embedded-data defaults)")
    recipe.add_argument("--epochs", type=int, default=None, help="official 100 (ViT-B); embedded 15")
    recipe.add_argument("--per_device_batch_size", type=int, default=None, help="images per device per step")
    recipe.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="effective batch = per_device_batch_size x processes x this (official 1024)")
    recipe.add_argument("--blr", type=float, default=None,
                        help="base lr: lr = blr x effective_batch / 256 (official 5e-4; embedded 1e-3)")
    recipe.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    recipe.add_argument("--min_lr", type=float, default=1e-6, help="cosine floor (official 1e-6)")
    recipe.add_argument("--warmup_epochs", type=float, default=None, help="official 5; embedded 1")
    recipe.add_argument("--weight_decay", type=float, default=0.05)
    recipe.add_argument("--layer_decay", type=float, default=None,
                        help="layer-wise lr decay: block i gets decay^(depth - i) (official 0.65 ViT-B, 0.75 "
                             "ViT-L; embedded 0.75)")
    recipe.add_argument("--drop_path", type=float, default=None, help="stochastic depth rate (official 0.1)")
    recipe.add_argument("--mixup", type=float, default=None, help="mixup alpha, 0 disables (official 0.8)")
    recipe.add_argument("--cutmix", type=float, default=None, help="cutmix alpha, 0 disables (official 1.0)")
    recipe.add_argument("--mixup_prob", type=float, default=1.0, help="probability of mixing a batch")
    recipe.add_argument("--mixup_switch_prob", type=float, default=0.5, help="probability of cutmix over mixup")
    recipe.add_argument("--smoothing", type=float, default=None, help="label smoothing (official 0.1)")
    recipe.add_argument("--crop_min_scale", type=float, default=None,
                        help="RandomResizedCrop scale lower bound (official 0.08; embedded 0.35)")
    recipe.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                        help="random horizontal flip (official on; embedded off: digits are not symmetric)")
    recipe.add_argument("--aa", default=None,
                        help="RandAugment policy in timm's notation, or none (official rand-m9-mstd0.5-inc1; "
                             "embedded none)")
    recipe.add_argument("--reprob", type=float, default=None,
                        help="random erasing probability (official 0.25; embedded 0)")
    recipe.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients (official: off)")
    run = add_common_run_arguments(parser, "outputs/finetune", mixed_precision="auto")
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="allow writing into an output_dir that holds a finished run")
    run.add_argument("--resume_from_checkpoint", default=None,
                     help="'latest' (the newest in <output_dir>/checkpoints) or a checkpoint folder: continue "
                          "exactly where it was written (model, optimizer, schedule, RNG, best epoch, history)")
    run.add_argument("--checkpointing_steps", default="epoch",
                     help="'epoch': a resumable checkpoint at the end of every epoch; N: also every N optimizer "
                          "steps within an epoch")
    run.add_argument("--checkpoints_total_limit", type=int, default=1,
                     help="resumable checkpoints kept in <output_dir>/checkpoints (0: write none)")
    run.add_argument("--logging_steps", type=int, default=10, help="log every N optimizer steps")
    run.add_argument("--report_to", default="none",
                     help="Accelerate trackers: tensorboard, wandb, ... , 'all' (installed ones) or 'none'")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.raw_pixels = False
    if args.gradient_accumulation_steps < 1:
        raise SystemExit("--gradient_accumulation_steps must be >= 1")
    if args.checkpoints_total_limit < 0:
        raise SystemExit("--checkpoints_total_limit must be >= 0")
    if args.checkpointing_steps != "epoch" and not (str(args.checkpointing_steps).isdigit()
                                                     and int(args.checkpointing_steps) > 0):
        raise SystemExit("--checkpointing_steps must be a positive number or 'epoch', "
                         f"got {args.checkpointing_steps!r}")
    args = apply_defaults(args, EMBEDDED_DEFAULTS, PAPER_DEFAULTS)
    try:  # bad values fail here, before any data or model is loaded
        RandAugment.from_string(args.aa)
        RandomErasing(args.reprob)
    except ValueError as error:
        raise SystemExit(f"--aa / --reprob: {error}") from None
    return args


@torch.no_grad()
def evaluate_classifier(accelerator, model, loader) -> dict[str, float]:
    """Top-1 / top-5 (percent, the shipped `evaluate` metric) and mean cross-entropy over a prepared loader,
    gathered across processes with `gather_for_metrics`."""
    was_training = model.training
    model.eval()
    metric = load_topk_metric()
    loss_sum, count = 0.0, 0
    for batch in loader:
        if len(batch["pixel_values"]) == 0:
            continue
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
        logits, labels = accelerator.gather_for_metrics((logits, batch["labels"]))
        loss_sum += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        count += len(labels)
        metric.add_batch(predictions=logits.cpu().numpy(), references=labels.cpu().numpy())
    model.train(was_training)
    return {**metric.compute(), "loss": loss_sum / max(count, 1)}


def main(args: argparse.Namespace) -> dict:
    """Fine-tune; returns the results dict (also in `<output_dir>/results.json`)."""

    wall_start = time.time()
    out_dir = Path(args.output_dir)
    if (out_dir / "results.json").exists() and not (args.overwrite_output_dir or args.resume_from_checkpoint):
        raise SystemExit(f"{out_dir} already holds a finished fine-tuning run (results.json). Pass --output_dir "
                         "NEW_DIR or --overwrite_output_dir.")
    accelerator, run_log = start_run(args, out_dir, log_with=trackers_from(args.report_to),
                                     fresh_log=not args.resume_from_checkpoint)  # a resume continues the log

    read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, info, num_labels, id2label, label2id = prepare_data(args)
    if info.streaming:
        raise SystemExit("fine-tuning runs epochs over a map-style dataset: drop --streaming")
    overrides = {"drop_path_rate": args.drop_path}
    # CPU training: plain matmul + softmax attention. Measured on 2 cores (192-d x 6 blocks, 50 tokens,
    # batch 128): bf16 eager 294 img/s vs bf16 SDPA 38 (SDPA's CPU backward is slow); fp32 eager 54 vs SDPA 30.
    attn = args.attn_implementation or ("eager" if accelerator.device.type == "cpu" else None)
    if attn:
        overrides["attn_implementation"] = attn
    model, processor, note = load_classifier(
        args.model, classifier_head="finetune", num_labels=num_labels, id2label=id2label, label2id=label2id,
        pooling=args.pooling, random_init=args.random_init, reinit_head=args.reinit_head, **overrides)
    model.encoder.norm.requires_grad_(False)  # the fine-tune head pools pre-norm tokens: the final norm is unused
    config = model.config

    transform = TrainTransform(config.image_size, scale=(args.crop_min_scale, 1.0), hflip=args.hflip,
                               mean=processor.image_mean, std=processor.image_std, num_channels=config.num_channels,
                               augment=RandAugment.from_string(args.aa),
                               erase=RandomErasing(args.reprob) if args.reprob > 0 else None)
    train_fn = make_transform_fn(transform, config.num_channels, strict=args.strict_images)
    workers = dataloader_workers(args)
    train_loader = train_dataloader(train_data, train_fn, args.per_device_batch_size, workers, args.seed)
    eval_loader = eval_dataloader(eval_data, processor, args.eval_batch_size, workers, strict=args.strict_images)

    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    param_groups = param_groups_layer_decay(model, args.weight_decay, args.layer_decay)
    optimizer = build_adamw(param_groups, lr=lr, betas=(0.9, 0.999))
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    if len(train_loader) == 0:
        raise SystemExit(f"{len(train_data)} training images are fewer than one batch of "
                         f"{args.per_device_batch_size} x {accelerator.num_processes} processes")
    updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    total_updates = args.epochs * updates_per_epoch
    warmup_updates = min(total_updates, round(args.warmup_epochs * updates_per_epoch))
    mixup = Mixup(args.mixup, args.cutmix, prob=args.mixup_prob, switch_prob=args.mixup_switch_prob,
                  label_smoothing=args.smoothing, num_classes=num_labels)  # its generator: set per batch below

    checkpoints_dir = out_dir / "checkpoints"
    start_epoch, update_step, best, history, resumed_from = 0, 0, {"top1": -1.0}, [], None
    skip_batches, epoch_totals = 0, (0.0, 0)  # a mid-epoch checkpoint: batches done, (loss sum, micro-batches)
    if args.resume_from_checkpoint:
        resumed_from, state = resume_from(accelerator, args.resume_from_checkpoint, checkpoints_dir)
        if resumed_from is not None:
            start_epoch, update_step, history = state["epoch"], state["update_step"], state["history"]
            skip_batches, epoch_totals = state.get("batches_in_epoch", 0), tuple(state.get("epoch_totals", (0.0, 0)))
            if (out_dir / "best").exists():  # else (resumed into a new folder) the best is tracked from here on
                best = state["best"]

    banner = {"event": "start", "model": note, "dataset": info.source, "num_train": len(train_data),
              "num_eval": len(eval_data), "num_labels": num_labels, "pooling": args.pooling,
              "processes": accelerator.num_processes, "per_device_batch_size": args.per_device_batch_size,
              "gradient_accumulation_steps": args.gradient_accumulation_steps,
              "effective_batch_size": effective_batch, "blr": args.blr, "lr": lr, "epochs": args.epochs,
              "optimizer_steps": total_updates, "warmup_steps": warmup_updates, "layer_decay": args.layer_decay,
              "drop_path": args.drop_path, "mixup": args.mixup, "cutmix": args.cutmix, "smoothing": args.smoothing,
              "randaugment": args.aa, "random_erasing": args.reprob, "weight_decay": args.weight_decay,
              "mixed_precision": accelerator.mixed_precision, "attn_implementation": attn or "sdpa",
              "device": str(accelerator.device), "resumed_from": str(resumed_from) if resumed_from else None}
    accelerator.print("hf_mae fine-tuning\n" + "\n".join(f"  {k:>28}: {v}" for k, v in banner.items()
                                                         if k != "event"))
    run_log.write(banner)
    if accelerator.is_main_process:
        write_json_atomic(out_dir / "training_args.json", vars(args))
        if accelerator.log_with:
            accelerator.init_trackers("hf_mae_finetune", config={k: v for k, v in vars(args).items()
                                                                  if isinstance(v, (int, float, str, bool))})

    unwrapped = accelerator.unwrap_model(model)
    checkpoint_every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)

    def checkpoint(epoch: int, batches_in_epoch: int = 0, totals: tuple = (0.0, 0)) -> None:
        state = {"epoch": epoch, "batches_in_epoch": batches_in_epoch, "epoch_totals": totals,
                 "update_step": update_step, "best": best, "history": history}
        path = save_checkpoint(accelerator, model, processor, checkpoints_dir, update_step, state,
                               args.checkpoints_total_limit)
        run_log.write({"event": "checkpoint", "step": update_step, "path": str(path)})

    last_good = None
    progress = tqdm(total=total_updates, initial=update_step, desc="fine-tuning",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window = {"loss": torch.zeros((), device=accelerator.device), "micro": 0, "images": 0, "wait": 0.0,
              "start": time.perf_counter()}
    model.train()
    for epoch in range(start_epoch, args.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        active = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        batches_in_epoch, skip_batches = skip_batches, 0
        epoch_loss, epoch_micro = torch.tensor(epoch_totals[0], device=accelerator.device), epoch_totals[1]
        epoch_totals = (0.0, 0)
        wait_start = time.perf_counter()
        for batch in active:
            window["wait"] += time.perf_counter() - wait_start
            batch_index, batches_in_epoch = batches_in_epoch, batches_in_epoch + 1  # counts every batch drawn
            pixels, labels, weight = batch["pixel_values"], batch["labels"], 1.0
            if len(pixels) == 0:  # every image undecodable: a zero-weight step keeps processes in step
                if last_good is None:
                    continue
                (pixels, labels), weight = last_good, 0.0
            last_good = (pixels, labels)
            mixup.generator = seeded_generator(args.seed, epoch, batch_index, accelerator.process_index)
            pixels, targets = mixup(pixels, labels)
            with accelerator.accumulate(model):
                loss = model(pixel_values=pixels, labels=targets).loss
                if not torch.isfinite(loss):
                    raise RuntimeError(f"non-finite loss {loss.item()} at optimizer step {update_step}: try a lower "
                                       "--blr, --max_grad_norm 1.0 or --mixed_precision no")
                accelerator.backward(loss * weight if weight != 1.0 else loss)
                if accelerator.sync_gradients:
                    set_lr(optimizer, lr_at_step(update_step, total_updates, warmup_updates, lr, args.min_lr))
                    if args.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window["loss"] += loss.detach().float()
            window["micro"] += 1
            window["images"] += len(pixels) * accelerator.num_processes
            epoch_loss += loss.detach().float()
            epoch_micro += 1
            if accelerator.sync_gradients:
                update_step += 1
                progress.update(1)
                if update_step % args.logging_steps == 0 or update_step == total_updates:
                    elapsed = time.perf_counter() - window["start"]
                    mean_loss = (accelerator.reduce(window["loss"], "sum").item()
                                 / max(window["micro"] * accelerator.num_processes, 1))
                    record = {"step": update_step, "epoch": round(update_step / updates_per_epoch, 4),
                              "loss": mean_loss, "lr": max(g["lr"] for g in optimizer.param_groups),
                              "images_per_s": round(window["images"] / elapsed, 2),
                              "data_wait_fraction": round(window["wait"] / elapsed, 4)}
                    run_log.write(record, step=update_step)
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}")
                    window.update(loss=torch.zeros((), device=accelerator.device), micro=0, images=0, wait=0.0,
                                  start=time.perf_counter())
                if (checkpoint_every and args.checkpoints_total_limit and update_step % checkpoint_every == 0
                        and batches_in_epoch < len(train_loader)):  # the epoch's last one follows its evaluation
                    share = accelerator.reduce(epoch_loss.clone(), "sum").item() / accelerator.num_processes
                    checkpoint(epoch, batches_in_epoch, (share, epoch_micro))  # each process resumes with a share
            wait_start = time.perf_counter()

        metrics = evaluate_classifier(accelerator, model, eval_loader)
        train_loss = accelerator.reduce(epoch_loss, "sum").item() / max(epoch_micro * accelerator.num_processes, 1)
        record = {"event": "eval", "epoch": epoch + 1, "step": update_step, "train_loss": train_loss,
                  "eval_loss": metrics["loss"], "top1": metrics["top1"], "top5": metrics["top5"]}
        history.append(record)
        run_log.write(record, step=update_step)
        improved = metrics["top1"] > best["top1"]
        if improved:
            best = {"top1": metrics["top1"], "top5": metrics["top5"], "epoch": epoch + 1}
            if accelerator.is_main_process:
                save_pretrained_atomic(unwrapped, processor, out_dir / "best")
        accelerator.wait_for_everyone()
        if args.checkpoints_total_limit:
            checkpoint(epoch + 1)
        accelerator.print(f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f}, held-out top-1 "
                          f"{metrics['top1']:.2f}% top-5 {metrics['top5']:.2f}%" + (" (best)" if improved else ""))
    progress.close()

    final = history[-1] if history else {"top1": None, "top5": None}
    results = {
        "top1": final["top1"], "top5": final["top5"], "final_top1": final["top1"], "final_top5": final["top5"],
        "best_top1": best.get("top1"), "best_top5": best.get("top5"), "best_epoch": best.get("epoch"),
        "model": args.model, "init": "random_init" if args.random_init else "pretrained", "pooling": args.pooling,
        "num_labels": num_labels, "num_train": len(train_data), "num_eval": len(eval_data),
        "dataset": _dataset_name(args), "data_source": info.source, "eval_split": args.eval_split,
        "epochs": args.epochs, "optimizer_steps": update_step, "effective_batch_size": effective_batch,
        "blr": args.blr, "lr": lr, "min_lr": args.min_lr, "warmup_epochs": args.warmup_epochs,
        "weight_decay": args.weight_decay, "layer_decay": args.layer_decay, "drop_path": args.drop_path,
        "mixup": args.mixup, "cutmix": args.cutmix, "smoothing": args.smoothing,
        "crop_min_scale": args.crop_min_scale, "hflip": args.hflip, "randaugment": args.aa, "reprob": args.reprob,
        "optimizer": "AdamW (0.9, 0.999)",
        "mixed_precision": accelerator.mixed_precision, "seed": args.seed, "history": history,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "wall_time_s": round(time.time() - wall_start, 1), "args": vars(args),
    }
    if accelerator.is_main_process:
        save_model_into(out_dir, unwrapped, processor)
        write_json_atomic(out_dir / "results.json", results)
        init = "random init" if args.random_init else "pretrained"
        best_text = f"best {best['top1']:.2f}% (epoch {best['epoch']})" if "epoch" in best else "no epoch run here"
        accelerator.print(f"fine-tuning ({init}) done in {results['wall_time_s']:.0f} s: held-out top-1 final "
                          f"{final['top1']:.2f}%, {best_text}\n"
                          f"  final model: {out_dir}\n  best model:  {out_dir / 'best'}\n"
                          f"  results:     {out_dir / 'results.json'}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


__all__ = ["EMBEDDED_DEFAULTS", "PAPER_DEFAULTS", "build_parser", "evaluate_classifier", "main", "parse_args"]
