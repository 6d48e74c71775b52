"""Semantic segmentation on an MAE encoder: transformers' UperNet on `MAEBackbone`, fine-tuned with Accelerate.

mmsegmentation's MAE recipe (ViT-B, ADE20K 512 px: 48.1 mIoU in the paper) is the default on any dataset: the
encoder's blocks 4/6/8/12 through the 4x / 2x / 1x / 0.5x neck (`add_fpn=True`), UperNet with an auxiliary FCN
head, AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.05, layer-wise lr decay 0.65 over the encoder blocks
(neck and heads at the full lr), drop path 0.1, 1,500 warmup steps then poly decay (power 1), 160k steps at
batch 16, random resize 0.5-2.0 + crop + flip, sliding-window evaluation. With no data flag it trains on the
embedded "digit scenes" (56x56 canvases of 2-4 MNIST digits, none overlapping, 11 classes: background and the ten
digits) with defaults sized for a few minutes on 2 CPU cores (cli/recipes.RECIPE_DEFAULTS, chosen on a validation
split carved from the training scenes: `--validation_fraction`). Held out, the default pretraining beats
`--random_init` by ~7 mIoU and an encoder pretrained with the paper's crops (`scripts/pretrain.py --crop_min_scale
0.2`) by ~8 (README).

`results.json` holds `mean_iou`, `pixel_accuracy` (percent, held-out split) and `per_class_iou`; the output
folder loads with `AutoModelForSemanticSegmentation.from_pretrained(OUT)` (after `import hf_mae`) and works in
`pipeline("image-segmentation", model=OUT)`; `segmentation_examples.png` shows image | ground truth |
prediction for a few held-out images. `--random_init` trains the same architecture from scratch (the baseline).

    accelerate launch scripts/segment.py --model outputs/pretrain                    # digit scenes
    accelerate launch scripts/segment.py --model outputs/pretrain --random_init --output_dir outputs/seg_scratch
    accelerate launch --config_file scripts/configs/multi_gpu.yaml scripts/segment.py --model me/mae-vit-b-encoder \\
        --dataset_name scene_parse_150 --reduce_labels --crop_size 512 --per_device_batch_size 2  # 8 x 2 = 16
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import save_pretrained_into
from ..data.segmentation import (
    IGNORE_INDEX,
    PairedEvalTransform,
    PairedTrainTransform,
    SegmentationTransformFn,
    load_segmentation_datasets,
    segmentation_eval_loader,
    segmentation_train_loader,
)
from ..evaluation.classifier import DEFAULT_MODEL, read_mae_config
from ..evaluation.segmentation import (
    build_segmenter,
    evaluate_segmentation,
    param_groups_segmenter,
    segmentation_processor,
    write_examples_picture,
)
from ..training.loop import TrainingLoop, plan_schedule
from ..training.optim import build_adamw, poly_lr_at_step
from ..training.run import finish_run, print_banner, start_run
from .arguments import (
    add_attn_implementation_argument,
    add_eval_batch_size_argument,
    add_model_argument,
    add_push_arguments,
    add_run_arguments,
    check_push_arguments,
    dataloader_workers,
    loop_config,
    open_fraction,
    positive_float,
    positive_int,
    run_cli,
    run_config,
    scale_fraction,
)
from .recipes import add_recipe_arguments, apply_defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data (default: the embedded digit scenes, no download)")
    data.add_argument("--dataset_name", default=None, help="Hub dataset id (e.g. scene_parse_150) or a local folder")
    data.add_argument("--dataset_config_name", default=None, help="dataset configuration name")
    data.add_argument("--data_files", nargs="+", default=None, help="parquet / arrow files of the train split")
    data.add_argument("--train_split", default="train", help="split to train on (default train)")
    data.add_argument("--eval_split", default="validation", help="held-out split (default validation)")
    data.add_argument("--image_column", "--image_column_name", default=None,
                      help="image column (default: image or pixel_values)")
    data.add_argument("--label_column", "--label_column_name", default=None,
                      help="segmentation-map column (default: annotation or label)")
    data.add_argument("--num_labels", type=positive_int, default=None,
                      help="number of classes (default: from the data's class names, else the largest id + 1)")
    data.add_argument("--reduce_labels", "--do_reduce_labels", action="store_true",
                      help="ADE20K's convention: id 0 ('other') ignored, the other ids shifted down by one")
    data.add_argument("--validation_fraction", type=open_fraction, default=0.0,
                      help="carve this fraction from the TRAINING split and evaluate there instead of the held-out "
                           "split (recipe search; 0: off)")
    data.add_argument("--max_train_samples", type=positive_int, default=None, help="first N training rows")
    data.add_argument("--max_eval_samples", type=positive_int, default=None, help="first N held-out rows")
    data.add_argument("--cache_dir", default=None, help="datasets / embedded-data cache folder")
    data.add_argument("--strict_images", action="store_true", help="fail on an undecodable image")
    model = parser.add_argument_group("model")
    add_model_argument(model, default=DEFAULT_MODEL,
                       help="hf_mae pretraining, encoder or classifier folder (or Hub id) whose encoder is the "
                            "backbone (default outputs/pretrain; pretraining with --crop_min_scale 0.2 transfers "
                            "a little better)")
    model.add_argument("--random_init", action="store_true", help="baseline: the same architecture untrained")
    model.add_argument("--out_indices", type=positive_int, nargs=4, default=None,
                       help="the 4 encoder blocks feeding the neck (default: 1/3, 1/2, 2/3 and all of the depth; "
                            "4 6 8 12 for ViT-B as mmsegmentation)")
    model.add_argument("--head_hidden_size", type=positive_int, default=None,
                       help="UperNet channels (mmsegmentation 512; embedded 64)")
    model.add_argument("--no_auxiliary_head", dest="auxiliary_head", action="store_false",
                       help="train without the auxiliary FCN head (weight 0.4)")
    add_attn_implementation_argument(model, help="sdpa or eager (default: eager on CPU, else sdpa)")
    recipe = parser.add_argument_group("recipe (unset: mmsegmentation's values, or the embedded-data defaults)")
    add_recipe_arguments(recipe, "segment")
    recipe.add_argument("--layer_decay", type=scale_fraction, default=0.65,
                        help="layer-wise lr decay over the encoder blocks (0.65)")
    recipe.add_argument("--drop_path", type=open_fraction, default=0.1, help="stochastic depth rate (0.1)")
    recipe.add_argument("--crop_size", type=positive_int, default=None,
                        help="training crop and sliding window (512; embedded 28: the encoder's pretraining size)")
    recipe.add_argument("--ratio_range", type=positive_float, nargs=2, default=None,
                        help="random resize factors (0.5 2.0; embedded 1 1: digits keep their pretraining scale)")
    recipe.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=None,
                        help="random horizontal flip (on; embedded off: digits are not symmetric)")
    recipe.add_argument("--eval_mode", choices=["whole", "slide"], default=None,
                        help="inference, held out and of the saved model (the pipeline): whole image or sliding "
                             "window (slide)")
    recipe.add_argument("--eval_stride", type=positive_int, default=None,
                        help="sliding-window stride (default 2/3 of the crop: 341 for 512)")
    add_eval_batch_size_argument(recipe, help="images per device for evaluation (16)", default=16)
    run = add_run_arguments(parser, output_dir="outputs/segment")
    add_push_arguments(run, "the segmentation model (model + card)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_push_arguments(args)
    args = apply_defaults(args, "segment")
    if args.ratio_range[0] > args.ratio_range[1]:
        raise SystemExit(f"--ratio_range: low {args.ratio_range[0]} is above high {args.ratio_range[1]}")
    return args


def load_data(args):
    """(train, eval, source, label names, eval split name) with `--validation_fraction` and the sample limits."""
    data = load_segmentation_datasets(dataset_name=args.dataset_name, dataset_config_name=args.dataset_config_name,
                                      data_files=args.data_files, train_split=args.train_split,
                                      eval_split=args.eval_split, image_column=args.image_column,
                                      map_column=args.label_column, cache_dir=args.cache_dir)
    train, evaluation, eval_name = data.train, data.evaluation, args.eval_split
    if args.validation_fraction:
        carved = round(len(train) * args.validation_fraction)
        train, evaluation = train.select(range(len(train) - carved)), train.select(range(len(train) - carved,
                                                                                         len(train)))
        eval_name = f"last {carved} rows of {args.train_split} (validation carved from the training split)"
    if evaluation is None:
        raise ValueError(f"no held-out split {args.eval_split!r} in {data.source}: pass --eval_split or "
                         "--validation_fraction")
    if args.max_train_samples:
        train = train.select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    return train, evaluation, data.source, data.label_names, eval_name


def class_names(args, label_names) -> list[str]:
    if label_names and args.reduce_labels:
        label_names = label_names[1:]
    if args.num_labels is None and not label_names:
        raise ValueError("the data names no classes: pass --num_labels")
    count = args.num_labels or len(label_names)
    return list(label_names[:count]) if label_names and len(label_names) >= count else [str(i) for i in range(count)]


@dataclass
class _Setup:
    """What `main` builds before training: the prepared model and loaders, and what the results report."""
    model: object
    optimizer: object
    train_loader: object
    eval_loader: object
    train_fn: SegmentationTransformFn
    eval_fn: SegmentationTransformFn
    processor: object
    names: list[str]
    note: str
    source: str
    eval_name: str
    num_train: int
    eval_data: object
    attn: str | None


def _setup(args: argparse.Namespace, accelerator) -> _Setup:
    """Data, model (UperNet on the MAE encoder or its random-init twin), processor, loaders and optimizer."""
    mae_config = read_mae_config(args.model)  # fail on a wrong checkpoint before loading any data
    train_data, eval_data, source, label_names, eval_name = load_data(args)
    names = class_names(args, label_names)
    attn = args.attn_implementation or ("eager" if accelerator.device.type == "cpu" else None)
    model, note = build_segmenter(args.model, names, random_init=args.random_init, out_indices=args.out_indices,
                                  head_hidden_size=args.head_hidden_size, auxiliary_head=args.auxiliary_head,
                                  drop_path_rate=args.drop_path, attn_implementation=attn,
                                  inference_mode=args.eval_mode, inference_window=args.crop_size,
                                  inference_stride=args.eval_stride)
    processor = segmentation_processor(args.model, mae_config)
    mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    channels, patch = mae_config.num_channels, mae_config.patch_size
    crop = (args.crop_size, args.crop_size)
    train_fn = SegmentationTransformFn(PairedTrainTransform(crop, mean, std, tuple(args.ratio_range), args.hflip),
                                       channels, len(names), args.reduce_labels, args.strict_images)
    eval_fn = SegmentationTransformFn(PairedEvalTransform(mean, std), channels, len(names), args.reduce_labels,
                                      strict=True)
    train_loader = segmentation_train_loader(train_data, train_fn, args.per_device_batch_size,
                                             dataloader_workers(args), args.seed)
    eval_loader = segmentation_eval_loader(eval_data, eval_fn, args.eval_batch_size, patch,
                                           accelerator.process_index, accelerator.num_processes)
    optimizer = build_adamw(param_groups_segmenter(model, args.weight_decay, args.layer_decay),
                            lr=args.lr, betas=(0.9, 0.999))
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_data)} training images are fewer than one batch of "
                         f"{args.per_device_batch_size} x {accelerator.num_processes} processes")
    return _Setup(model, optimizer, train_loader, eval_loader, train_fn, eval_fn, processor, names, note, source,
                  eval_name, len(train_data), eval_data, attn)


def main(args: argparse.Namespace) -> dict:
    """Fine-tune UperNet on the MAE encoder; returns the results dict (also in `<output_dir>/results.json`)."""
    wall_start = time.time()
    accelerator, run_log, out_dir = start_run(run_config(args), "segmentation", inputs=(args.model,),
                                              save_settings=True,
                                              gradient_accumulation_steps=args.gradient_accumulation_steps)
    run = _setup(args, accelerator)
    schedule = plan_schedule(len(run.train_loader), args.gradient_accumulation_steps,
                             max_train_steps=args.max_train_steps, warmup_steps=args.warmup_steps)
    crop = (args.crop_size, args.crop_size)
    channels = accelerator.unwrap_model(run.model).config.backbone_config.num_channels

    def placeholder():
        return {"pixel_values": torch.zeros(2, channels, *crop, device=accelerator.device),
                "labels": torch.zeros(2, *crop, dtype=torch.long, device=accelerator.device)}

    loop = TrainingLoop(accelerator, run.model, run.optimizer, run.train_loader, schedule, lr=args.lr,
                        min_lr=args.min_lr, config=loop_config(args), max_grad_norm=args.max_grad_norm,
                        checkpoints_dir=out_dir / "checkpoints", processor=run.processor, run_log=run_log,
                        desc="segmentation", placeholder=placeholder, bad_images=lambda: run.train_fn.num_bad,
                        lr_schedule=poly_lr_at_step)
    history = loop.resume(args.resume_from_checkpoint).get("history", [])
    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    print_banner(accelerator, run_log, "segmentation (UperNet on the MAE encoder)", {
        "model": run.note, "dataset": run.source, "num_train": run.num_train, "num_eval": len(run.eval_data),
        "eval_split": run.eval_name, "num_labels": len(run.names), "crop_size": args.crop_size,
        "effective_batch_size": effective_batch, "lr": args.lr, "optimizer_steps": schedule.total_updates,
        "epochs": schedule.epochs, "warmup_steps": schedule.warmup_updates, "layer_decay": args.layer_decay,
        "drop_path": args.drop_path, "weight_decay": args.weight_decay, "eval_mode": args.eval_mode,
        "mixed_precision": accelerator.mixed_precision, "attn_implementation": run.attn or "sdpa",
        "device": str(accelerator.device), "resumed_from": str(loop.resumed_from) if loop.resumed_from else None})
    final = _train(args, accelerator, run, loop, history, run_log)
    results = {**_results(args, run, final, history), **final["summary"], "effective_batch_size": effective_batch,
               "mixed_precision": accelerator.mixed_precision, "wall_time_s": round(time.time() - wall_start, 1)}
    return _finish(args, accelerator, run, out_dir, results, run_log)


def _train(args, accelerator, run: _Setup, loop: TrainingLoop, history: list, run_log) -> dict:
    """The training steps, then the held-out evaluation (also when a resume finds nothing left to train)."""
    final = {}

    def step(batch, epoch, batch_index):
        return run.model(pixel_values=batch["pixel_values"], labels=batch["labels"]).loss

    def epoch_end(epoch_done, train_loss, done):
        if not done:
            return
        final.update(evaluate_segmentation(accelerator, run.model, run.eval_loader, len(run.names),
                                           ignore_index=IGNORE_INDEX))
        record = {"event": "eval", "epoch": epoch_done, "step": loop.update_step, "train_loss": train_loss,
                  "eval_loss": final["loss"], "mean_iou": final["mean_iou"],
                  "pixel_accuracy": final["pixel_accuracy"]}
        history.append(record)
        run_log.write(record, step=loop.update_step)
        accelerator.print(f"step {loop.update_step}: held-out mIoU {final['mean_iou']:.2f}, pixel accuracy "
                          f"{final['pixel_accuracy']:.2f}%")

    summary = loop.run(step, on_epoch_end=epoch_end, extra_state=lambda: {"history": history})
    if not final:  # resumed from the last checkpoint: nothing left to train, evaluate what it holds
        epoch_end(loop.schedule.epochs, None, True)
    return {**final, "summary": summary}


def _results(args, run: _Setup, final: dict, history: list) -> dict:
    return {
        "mean_iou": final["mean_iou"], "pixel_accuracy": final["pixel_accuracy"],
        "per_class_iou": dict(zip(run.names, final["per_class_iou"])), "eval_loss": final["loss"],
        "eval_split": run.eval_name, "eval_mode": args.eval_mode, "model": args.model,
        "init": "random_init" if args.random_init else "pretrained", "num_labels": len(run.names),
        "num_train": run.num_train, "num_eval": len(run.eval_data), "dataset": args.dataset_name or args.data_files,
        "data_source": run.source, "learning_rate": args.lr, "warmup_steps": args.warmup_steps,
        "schedule": "linear warmup, poly (power 1)", "weight_decay": args.weight_decay,
        "layer_decay": args.layer_decay, "drop_path": args.drop_path, "crop_size": args.crop_size,
        "ratio_range": list(args.ratio_range), "hflip": args.hflip, "reduce_labels": args.reduce_labels,
        "optimizer": "AdamW (0.9, 0.999)", "seed": args.seed, "history": history, "args": vars(args),
    }


def _finish(args, accelerator, run: _Setup, out_dir: Path, results: dict, run_log) -> dict:
    """The model folder, the examples picture, results.json and the summary (and the push)."""
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(run.model)
        save_pretrained_into(out_dir, unwrapped, run.processor)
        write_examples_picture(unwrapped, run.eval_data, run.eval_fn, out_dir / "segmentation_examples.png")
    finish_run(accelerator, out_dir, results, run_log)
    if accelerator.is_main_process:
        accelerator.print(f"segmentation ({results['init']}) done in {results['wall_time_s']:.0f} s: held-out mIoU "
                          f"{results['mean_iou']:.2f}, pixel accuracy {results['pixel_accuracy']:.2f}%\n"
                          f"  model:   {out_dir}\n  results: {out_dir / 'results.json'}")
        if args.push_to_hub:
            from ..hub.push import push_to_hub

            pushed = push_to_hub(segmentation=out_dir, segmentation_repo=args.hub_model_id, private=args.hub_private)
            accelerator.print(f"  pushed:  {pushed[args.hub_model_id]}")
    return results


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "parse_args"]
