"""Benchmark hf_mae against transformers' ViTMAE: same config, same weights, interleaved rounds.

Cases (each: warm-up excluded, rounds interleaved A B A B ..., medians and the median of per-round ratios):
    train_base   training step (forward, backward, optimizer step), ViT-B/16 224 px, batch 8
    train_small  the same for the embedded-data preset (mae-vit-mnist-patch4), batch 64
    infer_base   encoder inference (no masking), ViT-B/16, batch 32, at equal precision
    data         training data pipeline, images/s on one core, on 500x375 quality-90 JPEGs made here
    memory       peak memory (RSS on CPU, allocated on GPU) of train_base steps, each side in its own process
  the training data path (run by name, not part of "all"):
    loader       images/s through the whole training DataLoader per core, the float/PIL comparison path (PIL
                 resize, float32 made in the worker) vs the programs' path (OpenCV resize, uint8), for
                 imagefolder, parquet and webdataset layouts
    stages       ms per image of each stage (decode, crop+resize, flip, tensor, collate), both paths
    prepared     the programs' loader on prepared copies (scripts/prepare_dataset.py, shorter side 256/320/384)

Training cases run each side in its own worker process (its own allocator state and settings, its own
peak memory), loaded from the same saved weights; the parent alternates them round by round. "hf_mae" runs
at the defaults of its training programs (bf16 autocast where the hardware computes bf16 natively, fused
AdamW, fused qkv, matmul+softmax attention for bf16 training on CPU, freed memory kept in the process:
hf_mae.allocator); "transformers" at its defaults (fp32, sdpa, torch's default AdamW). `--equal` runs both
in the same precision with the same optimizer implementation and the same allocator settings.

    python benchmarks/benchmark.py --case all --rounds 5 --json outputs/bench.json --markdown BENCHMARKS.md
"""

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import ViTMAEForPreTraining, ViTMAEModel
from transformers.utils import logging as transformers_logging

from hf_mae import MAEConfig, MAEForPreTraining
from hf_mae.convert.vitmae import config_to_transformers, to_transformers
from hf_mae.training.allocator import keep_freed_memory
from hf_mae.training.optim import build_adamw, param_groups_weight_decay
from hf_mae.training.precision import resolve_mixed_precision

transformers_logging.disable_progress_bar()  # saving/loading the shared weights is not worth a bar
CASES = ("train_base", "train_small", "infer_base", "data", "memory")
DATA_CASES = ("loader", "stages", "prepared")  # the training data path (not in "all": run by name)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_models(preset: str, device, transformers: bool = True):
    """hf_mae pretraining model and a transformers ViTMAE with identical weights (None if not asked for)."""
    torch.manual_seed(0)
    ours = MAEForPreTraining(MAEConfig.from_preset(preset))
    theirs = to_transformers(ours).to(device) if transformers else None
    return ours.to(device), theirs


def train_step_fn(model, device, batch: int, amp_dtype, fused: bool | None, is_ours: bool):
    config = model.config
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    pixels = torch.randn(batch, config.num_channels, size, size, device=device)
    if is_ours:
        optimizer = build_adamw(param_groups_weight_decay(model, 0.05), lr=1e-4, fused=fused)
    else:  # what a transformers user gets: torch's default AdamW (for-loop on CPU) unless told otherwise
        kwargs = {"fused": True} if fused else {}
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05, **kwargs)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = model(pixel_values=pixels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
    return step


def infer_fn(model, device, batch: int, amp_dtype):
    config = model.config
    pixels = torch.randn(batch, config.num_channels, config.image_size, config.image_size, device=device)
    model.eval()

    @torch.no_grad()
    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(pixel_values=pixels)
        sync(device)
    return step


def timed(fn):
    """fn() -> a function of n that calls fn n times and returns seconds per call."""
    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n
    return run


def interleave(run_a, run_b, rounds: int, warmup: int, repeats: int) -> dict:
    """Median seconds per call of each side and the median of per-round b/a ratios (speedup of a).

    run_a / run_b take a call count and return seconds per call (see `timed` and `Worker.run`)."""
    if warmup:
        run_a(warmup)
        run_b(warmup)
    times_a, times_b = [], []
    for _ in range(rounds):
        times_a.append(run_a(repeats))
        times_b.append(run_b(repeats))
    ratios = [b / a for a, b in zip(times_a, times_b)]
    return {"hf_mae_s": statistics.median(times_a), "transformers_s": statistics.median(times_b),
            "speedup": statistics.median(ratios), "rounds": rounds,
            "per_round_speedups": [round(r, 3) for r in ratios]}


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Worker:
    """A child process holding one side's model and optimizer; runs training steps when asked."""

    def __init__(self, spec: dict):
        self.proc = subprocess.Popen([sys.executable, __file__, "--_worker", json.dumps(spec)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:  # anything a library prints to stdout is skipped
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"benchmark worker exited with code {self.proc.wait()} (its error is above)")

    def run(self, n: int) -> float:
        return self.ask(f"run {n}")["seconds_per_step"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def worker_main(spec: dict) -> None:
    """Child side of `Worker`: build the model from its saved folder, then answer "run N" and "peak"."""
    device = torch.device(spec["device"])
    if spec["keep_freed_memory"]:
        keep_freed_memory()
    if spec["side"] == "hf_mae":
        model = MAEForPreTraining.from_pretrained(spec["folder"]).to(device)
    else:
        model = ViTMAEForPreTraining.from_pretrained(spec["folder"]).to(device)
    if spec.get("compile"):
        model = torch.compile(model)  # compiled on the first (warm-up) step
    step = timed(train_step_fn(model, device, spec["batch"], AMP_DTYPES.get(spec["amp"]), spec["fused"],
                               spec["side"] == "hf_mae"))
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "run":
            reply = {"seconds_per_step": step(int(rest[0]))}
        elif device.type == "cuda":
            reply = {"peak_mb": torch.cuda.max_memory_allocated() / 2**20}
        else:
            reply = {"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        print(json.dumps(reply), flush=True)


@contextlib.contextmanager
def training_workers(preset: str, batch: int, equal: bool, device, compile_ours: bool = False):
    """hf_mae and transformers workers with identical weights (saved once here, loaded by each child);
    closed, and their weights removed, on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ours, theirs = make_models(preset, torch.device("cpu"))
        ours.save_pretrained(folder / "hf_mae")
        theirs.save_pretrained(folder / "transformers")
        del ours, theirs
        ours_amp = resolve_mixed_precision("auto")
        sides = {"hf_mae": {"amp": ours_amp, "fused": True if equal else None, "keep_freed_memory": True,
                            "compile": compile_ours},
                 "transformers": {"amp": ours_amp if equal else "no", "fused": equal, "keep_freed_memory": equal}}
        workers = [Worker({"side": side, "folder": str(folder / side), "batch": batch, "device": device.type,
                           **settings}) for side, settings in sides.items()]
        try:
            yield workers
        finally:
            for worker in workers:
                worker.close()


def bench_train(preset: str, batch: int, args, device) -> dict:
    with training_workers(preset, batch, args.equal, device, args.compile) as workers:
        result = interleave(workers[0].run, workers[1].run, args.rounds, args.warmup, args.repeats)
        peaks = [worker.ask("peak")["peak_mb"] for worker in workers]
    result["images_per_s_hf_mae"] = batch / result["hf_mae_s"]
    result["images_per_s_transformers"] = batch / result["transformers_s"]
    result["hf_mae_peak_mb"], result["transformers_peak_mb"] = peaks
    return result


def bench_infer(args, device) -> dict:
    torch.manual_seed(0)
    ours_full, _ = make_models("mae-vit-base-patch16", device, transformers=False)
    ours = ours_full.encoder
    theirs_config = config_to_transformers(ours_full.config)
    theirs_config.mask_ratio = 0.0  # transformers' ViTMAEModel always masks: ratio 0 keeps every patch
    theirs = ViTMAEModel(theirs_config).to(device)
    theirs.load_state_dict({k.removeprefix("vit."): v for k, v in to_transformers(ours_full.cpu()).state_dict().items()
                            if k.startswith("vit.")})
    ours.to(device)
    amp = {"bf16": torch.bfloat16}.get(resolve_mixed_precision("auto")) if args.equal else None
    return interleave(timed(infer_fn(ours, device, 32, amp)), timed(infer_fn(theirs, device, 32, amp)),
                      args.rounds, args.warmup, args.repeats)


def make_jpegs(count: int = 64, width: int = 500, height: int = 375, seed: int = 0) -> list[bytes]:
    """Photo-like quality-90 JPEGs (~93 KB at 500x375, ImageNet's most common size), generated here."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):  # smooth gradients + noise: compresses like a photo, not like white noise
        y, x = np.mgrid[0:height, 0:width] * (375 / height)  # the same content scale at any size
        base = np.stack([(x * rng.uniform(0.2, 0.6) + y * rng.uniform(0.1, 0.4)) % 256,
                         (x * rng.uniform(0.1, 0.5)) % 256, (y * rng.uniform(0.2, 0.7)) % 256], axis=-1)
        image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def bench_data(args) -> dict:
    """One core: hf_mae's TrainTransform vs plain PIL decode + RandomResizedCrop-like crop + resize + flip."""
    from hf_mae.data.transforms import (
        TrainTransform,  # imported here: the GPU check runs where `datasets` may be absent
    )

    torch.set_num_threads(1)
    jpegs = make_jpegs()
    transform = TrainTransform(224, output="float")  # normalised floats, as the plain pipeline makes
    rng = np.random.default_rng(0)

    def ours():
        for data in jpegs:
            transform(Image.open(io.BytesIO(data)))

    def plain():
        for data in jpegs:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            w, h = image.size
            cw, ch = int(w * rng.uniform(0.45, 1)), int(h * rng.uniform(0.45, 1))
            left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            image = image.crop((left, top, left + cw, top + ch)).resize((224, 224), Image.Resampling.BICUBIC)
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            (torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255 - 0.45) / 0.225

    result = interleave(timed(ours), timed(plain), args.rounds, 1, 1)
    result["images_per_s_hf_mae"] = len(jpegs) / result["hf_mae_s"]
    result["images_per_s_plain_pil"] = len(jpegs) / result["transformers_s"]
    result["note"] = "transformers_s is the plain PIL pipeline here (one core)"
    torch.set_num_threads(os.cpu_count() or 1)
    return result


# --------------------------------------------------------------------------------------------------------
# The training data path: per-stage costs, the whole DataLoader per storage layout, prepared copies
# --------------------------------------------------------------------------------------------------------


def write_layouts(root: Path, jpegs: list[bytes], classes: int = 4) -> dict:
    """The same JPEGs as an imagefolder, one parquet file and one webdataset shard: load_image_datasets kwargs."""
    import tarfile

    import datasets

    labels = [i % classes for i in range(len(jpegs))]
    for i, (data, label) in enumerate(zip(jpegs, labels)):
        folder = root / "imagefolder" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(data)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class_{k}" for k in range(classes)])})
    (root / "parquet").mkdir()
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in jpegs], "label": labels},
                               features=features).to_parquet(str(root / "parquet" / "train.parquet"))
    (root / "webdataset").mkdir()
    with tarfile.open(root / "webdataset" / "train-000000.tar", "w") as tar:
        for i, (data, label) in enumerate(zip(jpegs, labels)):
            for name, payload in ((f"{i:06d}.jpg", data), (f"{i:06d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return {"imagefolder": {"train_dir": str(root / "imagefolder")},
            "parquet": {"data_files": str(root / "parquet" / "train.parquet")},
            "webdataset": {"data_files": str(root / "webdataset" / "train-000000.tar")}}


def float_pil_transform(size: int = 224):
    """The comparison path: PIL's resize and normalised float32 made in the workers (not the library default)."""
    from hf_mae.data.transforms import TrainTransform

    return TrainTransform(size, resize="pil", output="float")


def program_transform(size: int = 224):
    """The programs' training transform (the library default): OpenCV's resize, uint8 out of the workers
    (normalised on the device)."""
    from hf_mae.data.transforms import TrainTransform

    return TrainTransform(size)


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and the given child processes so far (Linux /proc)."""
    total = time.process_time()
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def epoch_timer(dataset, transform, batch: int, workers: int):
    """A function of the epoch that runs one epoch of hf_mae's training DataLoader and returns (wall seconds,
    CPU seconds of the main process and its workers together)."""
    from hf_mae.data.decoding import make_transform_fn
    from hf_mae.data.train_loader import train_dataloader

    loader = train_dataloader(dataset, make_transform_fn(transform), batch, num_workers=workers, seed=0)

    def run(epoch: int) -> tuple[float, float]:
        loader.sampler.set_epoch(epoch)
        iterator = iter(loader)  # persistent workers: the same processes every epoch
        pids = [w.pid for w in getattr(iterator, "_workers", [])]
        start, cpu_start = time.perf_counter(), _cpu_seconds(pids)
        for batch_ in iterator:
            assert len(batch_["pixel_values"])
        return time.perf_counter() - start, _cpu_seconds(pids) - cpu_start

    return run, len(loader) * batch


def interleaved_loaders(timers: dict, rounds: int) -> dict:
    """One warm-up epoch each, then `rounds` rounds running every loader once, in order: (wall, CPU) seconds
    per round."""
    for run, _ in timers.values():
        run(0)
    seconds = {name: [] for name in timers}
    for r in range(rounds):
        for name, (run, _) in timers.items():
            seconds[name].append(run(1 + r))
    return seconds


def bench_loader(args) -> dict:
    """Images/s through the whole training DataLoader, one worker process (= one core decoding), per layout:
    the float/PIL comparison path ("old": PIL resize, float32 normalised in the worker) against the programs'
    path ("new": OpenCV, uint8)."""
    from hf_mae.data.sources import load_image_datasets

    torch.set_num_threads(1)
    jpegs = make_jpegs(args.images)
    with tempfile.TemporaryDirectory() as tmp:
        timers = {}
        for layout, kwargs in write_layouts(Path(tmp), jpegs).items():
            train, _, _ = load_image_datasets(**kwargs, eval_split=None)
            for path, transform in (("old", float_pil_transform()), ("new", program_transform())):
                timers[(layout, path)] = epoch_timer(train, transform, args.loader_batch, args.loader_workers)
        seconds = interleaved_loaders(timers, args.rounds)
    result = {"images": args.images, "batch": args.loader_batch, "workers": args.loader_workers,
              "jpeg_kb": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1), "layouts": {}}
    pooled, pooled_wall = [], []
    for layout in ("imagefolder", "parquet", "webdataset"):
        images = timers[(layout, "new")][1]
        old, new = seconds[(layout, "old")], seconds[(layout, "new")]
        ratios = [o[1] / n[1] for o, n in zip(old, new)]
        wall_ratios = [o[0] / n[0] for o, n in zip(old, new)]
        pooled += ratios
        pooled_wall += wall_ratios
        result["layouts"][layout] = {
            "old_images_per_s": round(images / statistics.median(o[1] for o in old), 1),
            "new_images_per_s": round(images / statistics.median(n[1] for n in new), 1),
            "speedup": round(statistics.median(ratios), 3), "per_round_speedups": [round(r, 3) for r in ratios],
            "old_wall_images_per_s": round(images / statistics.median(o[0] for o in old), 1),
            "new_wall_images_per_s": round(images / statistics.median(n[0] for n in new), 1),
            "wall_speedup": round(statistics.median(wall_ratios), 3)}
    result["speedup"] = round(statistics.median(pooled), 3)
    result["wall_speedup"] = round(statistics.median(pooled_wall), 3)
    result["note"] = ("images/s per core = images per CPU-second of the main process and its DataLoader workers "
                      "together (robust to other load on the host); *_wall_* = elapsed time with --loader_workers "
                      "workers. old = PIL resize + float32 normalised in the worker, new = OpenCV resize + uint8. "
                      "Interleaved rounds, medians.")
    torch.set_num_threads(os.cpu_count() or 1)
    return result


def bench_stages(args) -> dict:
    """Milliseconds per image of each stage of the training transform, float/PIL path ("old") and the programs'
    path ("new"), one core."""
    import cv2
    import simplejpeg

    from hf_mae.data.decoding import collate
    from hf_mae.data.transforms import DeviceNormalize, _planes, resize_box

    torch.set_num_threads(1)
    jpegs = make_jpegs(args.images)
    old, new = float_pil_transform(), program_transform()
    torch.manual_seed(0)
    boxes = [old.sample_crop(500, 375) for _ in jpegs]
    boxes = [(left, top, left + w, top + h) for left, top, w, h in boxes]
    arrays = [simplejpeg.decode_jpeg(j) for j in jpegs]
    pil_images = [Image.fromarray(a) for a in arrays]
    pil_crops = [p.resize((224, 224), Image.Resampling.BICUBIC, box=b) for p, b in zip(pil_images, boxes)]
    cv_crops = [resize_box(a, b, (224, 224)) for a, b in zip(arrays, boxes)]
    floats = [old.to_tensor(_planes(c)) for c in pil_crops]
    uint8s = [torch.from_numpy(c).permute(2, 0, 1) for c in cv_crops]
    batch = collate([{"pixel_values": u} for u in uint8s])
    normalize = DeviceNormalize()
    stages = {
        "decode (simplejpeg)": (lambda: [Image.fromarray(simplejpeg.decode_jpeg(j)) for j in jpegs],
                                lambda: [simplejpeg.decode_jpeg(j) for j in jpegs]),
        "crop + resize to 224": (lambda: [p.resize((224, 224), Image.Resampling.BICUBIC, box=b)
                                          for p, b in zip(pil_images, boxes)],
                                 lambda: [resize_box(a, b, (224, 224)) for a, b in zip(arrays, boxes)]),
        "flip": (lambda: [c.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for c in pil_crops],
                 lambda: [cv2.flip(c, 1) for c in cv_crops]),
        "to tensor (float32 normalised / uint8 view)": (lambda: [old.to_tensor(_planes(c)) for c in pil_crops],
                                                         lambda: [torch.from_numpy(c).permute(2, 0, 1)
                                                                  for c in cv_crops]),
        "collate": (lambda: collate([{"pixel_values": f} for f in floats]),
                    lambda: collate([{"pixel_values": u} for u in uint8s])),
        "whole transform (open + all of the above but collate)": (
            lambda: [old(Image.open(io.BytesIO(j))) for j in jpegs],
            lambda: [new(Image.open(io.BytesIO(j))) for j in jpegs]),
        "normalise on the device (here: the CPU)": (lambda: None, lambda: normalize(batch)),
    }
    result = {"images": len(jpegs), "stages": {}}
    for name, (run_old, run_new) in stages.items():
        timing = interleave(timed(run_old), timed(run_new), args.rounds, 1, 1)
        result["stages"][name] = {"old_ms": round(timing["hf_mae_s"] / len(jpegs) * 1000, 3),
                                  "new_ms": round(timing["transformers_s"] / len(jpegs) * 1000, 3)}
    torch.set_num_threads(os.cpu_count() or 1)
    return result


def bench_prepared(args) -> dict:
    """The programs' loader on a parquet copy of the source against prepared copies (shorter side N, quality 90):
    images per CPU-second of the loader's processes (see bench_loader), interleaved rounds."""
    from hf_mae.cli import prepare_dataset
    from hf_mae.data.sources import load_image_datasets

    torch.set_num_threads(1)
    width, height = args.source_size
    jpegs = make_jpegs(args.images, width, height)
    result = {"images": args.images, "source_size": [width, height], "workers": args.loader_workers, "copies": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_layouts(root, jpegs)
        timers, sizes = {}, {}
        train, _, _ = load_image_datasets(data_files=str(root / "parquet" / "train.parquet"), eval_split=None)
        timers["source"] = epoch_timer(train, program_transform(), args.loader_batch, args.loader_workers)
        sizes["source"] = (root / "parquet" / "train.parquet").stat().st_size
        for side in args.shorter_sides:
            out = root / f"prepared_{side}"
            with contextlib.redirect_stderr(io.StringIO()):
                prepare_dataset.main(prepare_dataset.parse_args([
                    "--train_dir", str(root / "imagefolder"), "--output_dir", str(out), "--shorter_side", str(side),
                    "--quality", "90", "--format", "parquet", "--num_proc", "1", "--eval_split", ""]))
            copy, _, _ = load_image_datasets(dataset_name=str(out))
            timers[side] = epoch_timer(copy, program_transform(), args.loader_batch, args.loader_workers)
            sizes[side] = sum(p.stat().st_size for p in (out / "data").iterdir())
        seconds = interleaved_loaders(timers, args.rounds)
    images = timers["source"][1]
    for name, times in seconds.items():
        ratios = [s[1] / t[1] for s, t in zip(seconds["source"], times)]
        result["copies"][str(name)] = {"images_per_s": round(images / statistics.median(t[1] for t in times), 1),
                                       "speedup_vs_source": round(statistics.median(ratios), 3),
                                       "kb_per_image": round(sizes[name] / args.images / 1024, 1)}
    torch.set_num_threads(os.cpu_count() or 1)
    return result


def bench_memory(args, device) -> dict:
    """Peak memory of train_base steps (one warm-up, two measured), each side alone in its own process."""
    with training_workers("mae-vit-base-patch16", 8, args.equal, device) as workers:
        for worker in workers:
            worker.run(3)
        peaks = [worker.ask("peak")["peak_mb"] for worker in workers]
    return {"hf_mae_peak_mb": peaks[0], "transformers_peak_mb": peaks[1], "ratio": peaks[0] / peaks[1]}


def machine_info(device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "device": str(device),
            "mixed_precision_auto": resolve_mixed_precision("auto")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown(results: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: `{json.dumps(results['machine'])}`", "",
             "| case | hf_mae | transformers | speedup (median of per-round ratios) |", "|---|---|---|---|"]
    for case, r in results["cases"].items():
        if case == "memory":
            lines.append(f"| peak memory, train_base | {r['hf_mae_peak_mb']:.0f} MB | "
                         f"{r['transformers_peak_mb']:.0f} MB | {r['ratio']:.2f}x of transformers |")
        elif case == "loader":
            for layout, f in r["layouts"].items():
                lines.append(f"| loader, {layout}, per core | {f['new_images_per_s']:.0f} img/s (uint8, OpenCV) | "
                             f"{f['old_images_per_s']:.0f} img/s (old: float, PIL) | {f['speedup']:.2f}x |")
            lines.append(f"| loader, all layouts | | | **{r['speedup']:.2f}x** |")
        elif case == "stages":
            for stage, f in r["stages"].items():
                lines.append(f"| stage: {stage} | {f['new_ms']:.3f} ms (new) | {f['old_ms']:.3f} ms (old) | |")
        elif case == "prepared":
            for name, f in r["copies"].items():
                lines.append(f"| prepared copy, shorter side {name} | {f['images_per_s']:.0f} img/s, "
                             f"{f['kb_per_image']:.0f} KB/image | | {f['speedup_vs_source']:.2f}x vs source |")
        elif case == "data":
            lines.append(f"| data, 1 core, 500x375 JPEG -> 224 | {r['images_per_s_hf_mae']:.0f} img/s | "
                         f"{r['images_per_s_plain_pil']:.0f} img/s (plain PIL) | {r['speedup']:.2f}x |")
        else:
            lines.append(f"| {case} | {r['hf_mae_s'] * 1000:.0f} ms | {r['transformers_s'] * 1000:.0f} ms | "
                         f"{r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES + DATA_CASES + ("all",), default="all")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measured rounds per case")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured calls of each side first")
    parser.add_argument("--repeats", type=int, default=2, help="calls per round (averaged)")
    parser.add_argument("--equal", action="store_true",
                        help="same precision and optimizer implementation on both sides")
    parser.add_argument("--compile", action="store_true",
                        help="training cases: hf_mae under torch.compile (the training scripts' --compile)")
    parser.add_argument("--images", type=int, default=256, help="loader/stages/prepared: JPEGs generated")
    parser.add_argument("--loader_batch", type=int, default=32, help="loader/prepared: batch size")
    parser.add_argument("--loader_workers", type=int, default=1,
                        help="loader/prepared: DataLoader workers (figures are per worker)")
    parser.add_argument("--source_size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"),
                        help="prepared: size of the source JPEGs (default 500 375)")
    parser.add_argument("--shorter_sides", type=int, nargs="+", default=(256, 320, 384),
                        help="prepared: the shorter-side caps compared")
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--markdown", default=None, help="append a results table to this file (BENCHMARKS.md)")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile and args.warmup < 1:
        parser.error("--compile needs --warmup >= 1 (compilation happens on the first step)")
    if args._worker:
        worker_main(json.loads(args._worker))
        return {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = CASES if args.case == "all" else (args.case,)
    results = {"machine": machine_info(device), "equal_settings": args.equal, "cases": {}}
    for case in cases:
        print(f"running {case} ...", flush=True)
        if case == "train_base":
            results["cases"][case] = bench_train("mae-vit-base-patch16", 8, args, device)
        elif case == "train_small":
            results["cases"][case] = bench_train("mae-vit-mnist-patch4", 64, args, device)
        elif case == "infer_base":
            results["cases"][case] = bench_infer(args, device)
        elif case == "data":
            results["cases"][case] = bench_data(args)
        elif case == "memory":
            results["cases"][case] = bench_memory(args, device)
        elif case == "loader":
            results["cases"][case] = bench_loader(args)
        elif case == "stages":
            results["cases"][case] = bench_stages(args)
        elif case == "prepared":
            results["cases"][case] = bench_prepared(args)
        print(json.dumps(results["cases"][case], indent=1), flush=True)
    command = "python benchmarks/benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown(results, command)
    print(table)
    if args.json:
        from hf_mae.atomic import write_json

        write_json(args.json, results)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n" + table)
    return results


if __name__ == "__main__":
    main()
