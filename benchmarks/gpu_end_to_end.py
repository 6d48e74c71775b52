"""The end-to-end GPU run: scripts/pretrain.py as a user runs it, against benchmark_gpu.py's synthetic step.

One script for a lent GPU session. Results go under --out (default: $OUT, else outputs/gpu_end_to_end) as it
goes: each step's command, stdout and stderr in its own file, each run's log.jsonl / results.json and
checkpoint listing, `summary.json` rewritten after every step, so a session cut short still leaves what it
measured. The bulky files (the dataset, run folders with weights and checkpoints) stay in --work_dir (default
outputs/gpu_end_to_end_work, git-ignored), where a second call on the same machine finds the dataset again.

1. data: a synthetic ImageNet-like dataset (photo-like 500x375 quality-90 JPEGs, --images of them, 100 classes)
   written as parquet shards with a dataset card (the fastest layout measured, BENCHMARKS.md), on all cores.
2. pretrain: `accelerate launch scripts/pretrain.py --compile --mixed_precision bf16 --preset
   mae-vit-base-patch16 --per_device_batch_size 256 --num_workers <cores-1>` for --steps optimizer steps;
   images/s and the data-wait fraction from its log.jsonl (the first logging window, which holds the
   compilation, left out).
3. step: benchmark_gpu.py's synthetic-tensor step in the same session (hf_mae compiled, same batch): the
   end-to-end images/s as a fraction of it (aim: >= 90%); ViT-L/16 too, for its MFU (--large).
4. loader: images/s per core of the training DataLoader on this machine's CPUs (benchmark.py --case loader),
   and from it the workers one GPU needs: ceil(step images/s / per-core images/s).
5. fsdp: scripts/configs/fsdp.yaml with one process (with --dry_run: scripts/configs/fsdp_cpu_2proc.yaml on two
   CPU processes, HF_MAE_FSDP_ON_CPU=1, the tests' path): a short run writing sharded checkpoints, then a run
   resumed from them; the checkpoint files are listed (sharded: `*.distcp` files), the run log's
   `distributed_type` and `parameters_per_process` kept, and the resume checked.

    python benchmarks/gpu_end_to_end.py --out $OUT                 # on the GPU machine (about 10 minutes)
    python benchmarks/gpu_end_to_end.py --dry_run --out /tmp/e2e   # everything tiny, on the CPU
    # within a 10-minute limit per command: two calls on the same (warm) machine
    python benchmarks/gpu_end_to_end.py --out $OUT --skip fsdp --no-large
    python benchmarks/gpu_end_to_end.py --out $OUT --skip pretrain step loader   # ViT-L step + FSDP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
TINY = {"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "decoder_hidden_size": 16, "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 2, "decoder_intermediate_size": 32}


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------------------
# 1. data
# --------------------------------------------------------------------------------------------------------


def write_shard(path: str, start: int, count: int, classes: int) -> int:
    import datasets
    from benchmark import make_jpegs  # the shared module beside this script

    jpegs = make_jpegs(count, seed=start)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class_{k:03d}" for k in range(classes)])})
    datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in jpegs],
                                "label": [(start + i) % classes for i in range(count)]},
                               features=features).to_parquet(path + ".tmp")
    os.replace(path + ".tmp", path)
    return count


def make_dataset(folder: Path, images: int, classes: int = 100, shard: int = 1000) -> dict:
    """Parquet shards data/train-*.parquet + a card: `--dataset_name folder` loads them."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    count = math.ceil(images / shard)
    jobs = [(str(folder / "data" / f"train-{k:05d}-of-{count:05d}.parquet"), k * shard,
             min(shard, images - k * shard), classes) for k in range(count)]
    start = time.perf_counter()
    todo, written = [job for job in jobs if not os.path.exists(job[0])], 0  # shards of an earlier call are kept
    if todo:
        with ProcessPoolExecutor(max(1, cores())) as pool:
            written = sum(pool.map(write_shard, *zip(*todo)))
    (folder / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                      "    path: data/train-*.parquet\n---\nSynthetic photo-like 500x375 JPEGs.\n")
    size = sum(p.stat().st_size for p in (folder / "data").glob("*.parquet"))
    return {"images": images, "written_now": written, "shards": count, "mb": round(size / 2**20, 1),
            "seconds": round(time.perf_counter() - start, 1)}


# --------------------------------------------------------------------------------------------------------
# Running the steps
# --------------------------------------------------------------------------------------------------------


def run_logged(name: str, command: list[str], out: Path, timeout: float, env: dict | None = None) -> dict:
    """Run a command with its stdout and stderr going straight to files under out/logs (never through a pipe)."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"{name}.command.txt").write_text(" ".join(command) + "\n")
    start = time.perf_counter()
    with open(logs / f"{name}.stdout.txt", "w") as stdout, open(logs / f"{name}.stderr.txt", "w") as stderr:
        try:
            code = subprocess.run(command, cwd=REPO, stdout=stdout, stderr=stderr, timeout=timeout,
                                  env={**os.environ, **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    result = {"returncode": code, "seconds": round(time.perf_counter() - start, 1)}
    if code != 0:
        tail = (logs / f"{name}.stderr.txt").read_text()[-1500:]
        result["stderr_tail"] = tail
    return result


def launch(*extra: str, config_file: str | None = None, dry_run: bool = False, processes: int = 1) -> list[str]:
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file:
        command += ["--config_file", config_file]
    command += ["--num_processes", str(processes), "--num_machines", "1"]
    if not config_file:
        command += ["--mixed_precision", "no" if dry_run else "bf16", "--dynamo_backend", "no"]
    return command + ["scripts/pretrain.py", *extra]


def log_records(folder: Path) -> list[dict]:
    path = folder / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def throughput(folder: Path) -> dict:
    """Images/s and data-wait fraction of the logged windows, the first one (compilation) left out."""
    windows = [r for r in log_records(folder) if "images_per_s" in r]
    steady = windows[1:] or windows
    if not steady:
        return {"windows": 0}
    return {"windows": len(windows), "images_per_s": round(statistics.median(r["images_per_s"] for r in steady), 1),
            "data_wait_fraction": round(statistics.median(r["data_wait_fraction"] for r in steady), 4),
            "per_window": [(r["step"], r["images_per_s"], r["data_wait_fraction"]) for r in windows]}


def keep_run_files(folder: Path, into: Path) -> None:
    """The small files of a run folder (its log, results, banner arguments) copied into the results."""
    into.mkdir(parents=True, exist_ok=True)
    for name in ("log.jsonl", "results.json", "training_args.json", "hf_mae_run.json"):
        if (folder / name).exists():
            (into / name).write_bytes((folder / name).read_bytes())


def checkpoint_files(folder: Path) -> dict:
    checkpoints = sorted(p for p in (folder / "checkpoints").glob("*") if p.is_dir()) if folder.exists() else []
    listing = {p.name: sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file())[:40] for p in checkpoints}
    sharded = any(name.endswith(".distcp") for files in listing.values() for name in files)
    return {"checkpoints": list(listing), "sharded": sharded, "files": listing}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/gpu_end_to_end")
    parser.add_argument("--work_dir", default=None,
                        help="dataset and run folders (default outputs/gpu_end_to_end_work; dry run: <out>/work)")
    parser.add_argument("--images", type=int, default=20000, help="synthetic JPEGs (default 20000)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of the end-to-end run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, cores() - 1), help="DataLoader workers (cores - 1)")
    parser.add_argument("--large", action=argparse.BooleanOptionalAction, default=True,
                        help="also time ViT-L/16's step for its MFU (default on)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pretrain", "step", "loader", "fsdp"],
                        help="steps to leave out")
    parser.add_argument("--step_timeout", type=float, default=420, help="seconds allowed to each step")
    parser.add_argument("--dry_run", action="store_true",
                        help="everything tiny on the CPU: 48 images, a 32 px model, batch 8, 3 steps, no compile")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or (out / "work" if args.dry_run else REPO / "outputs" / "gpu_end_to_end_work"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        args.images, args.steps, args.batch, args.workers, args.large = 48, 3, 8, 1, False
        (out / "tiny.json").write_text(json.dumps(TINY))
    model = ["--model_config", str(out / "tiny.json")] if args.dry_run else ["--preset", "mae-vit-base-patch16"]
    precision = ["--mixed_precision", "no"] if args.dry_run else ["--compile", "--mixed_precision", "bf16"]
    summary: dict = {"dry_run": args.dry_run, "cores": cores(), "workers": args.workers, "batch": args.batch}
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

    def save():
        (out / "summary.json").write_text(json.dumps(summary, indent=2))

    def step(name: str, fn):
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            summary[name] = fn()
        except Exception as error:  # one failed step is recorded; the others still run
            summary[name] = {"error": f"{type(error).__name__}: {error}"}
        save()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {json.dumps(summary[name])[:600]}", flush=True)

    data = work / "data_dry_run" if args.dry_run else work / f"data_{args.images}"
    step("data", lambda: make_dataset(data, args.images, classes=4 if args.dry_run else 100,
                                      shard=16 if args.dry_run else 1000))

    if "pretrain" not in args.skip:
        def pretrain():
            folder = work / "pretrain"
            result = run_logged("pretrain", launch(
                "--dataset_name", str(data), *model, *precision, "--per_device_batch_size", str(args.batch),
                "--num_workers", str(args.workers), "--max_train_steps", str(args.steps), "--warmup_steps", "5",
                "--logging_steps", "1" if args.dry_run else "10", "--monitor_every", "-1", "--image_log_every", "0",
                "--output_dir", str(folder), "--overwrite_output_dir", dry_run=args.dry_run),
                out, args.step_timeout, env)
            keep_run_files(folder, out / "pretrain")
            return {**result, **throughput(folder)}
        step("pretrain", pretrain)

    if "step" not in args.skip:
        def synthetic_step(preset: str):
            name = "step_" + preset.replace("mae-vit-", "").replace("-patch", "_p")
            command = [sys.executable, str(BENCHMARKS / "benchmark_gpu.py"), "--json", str(out / f"{name}.json"),
                       "--no_fp32", "--rounds", "1" if args.dry_run else "3",
                       "--repeats", "1" if args.dry_run else "10", "--warmup", "1" if args.dry_run else "3"]
            command += ["--dry_run", "--no_compile"] if args.dry_run else ["--batch", str(args.batch), "--preset",
                                                                           preset]
            result = run_logged(name, command, out, args.step_timeout, env)
            if (out / f"{name}.json").exists():
                report = json.loads((out / f"{name}.json").read_text())
                result["machine"] = report["machine"]
                result["variants"] = {k: {"images_per_s": round(v["images_per_s"], 1),
                                          "mfu": None if v["mfu"] is None else round(v["mfu"], 4)}
                                      for k, v in report["variants"].items()}
            return result
        step("step", lambda: synthetic_step("mae-vit-base-patch16"))
        if args.large:
            step("step_large", lambda: synthetic_step("mae-vit-large-patch16"))

    if "loader" not in args.skip:
        def loader():
            command = [sys.executable, str(BENCHMARKS / "benchmark.py"), "--case", "loader", "--json",
                       str(out / "loader.json"), "--images", "16" if args.dry_run else "256", "--rounds",
                       "1" if args.dry_run else "3", "--loader_batch", "4" if args.dry_run else "32"]
            result = run_logged("loader", command, out, args.step_timeout, env)
            if (out / "loader.json").exists():
                cases = json.loads((out / "loader.json").read_text())["cases"]["loader"]
                result["per_core_images_per_s"] = {k: v["new_images_per_s"] for k, v in cases["layouts"].items()}
                result["speedup_vs_old"] = cases["speedup"]
            return result
        step("loader", loader)

    if "fsdp" not in args.skip:
        def fsdp():
            folder = work / "fsdp"
            common = ["--dataset_name", str(data), *model, "--per_device_batch_size", str(min(args.batch, 64)),
                      "--num_workers", str(args.workers), "--checkpointing_steps", "2", "--monitor_every", "-1",
                      "--image_log_every", "0", "--logging_steps", "1", "--warmup_steps", "2",
                      "--output_dir", str(folder)]
            # on the CPU: two gloo processes through the testing switch, as tests/test_fsdp.py
            config = str(REPO / "scripts" / "configs" / ("fsdp_cpu_2proc.yaml" if args.dry_run else "fsdp.yaml"))
            how = {"config_file": config, "processes": 2 if args.dry_run else 1}
            extra_env = {**env, **({"ACCELERATE_USE_CPU": "1", "HF_MAE_FSDP_ON_CPU": "1"} if args.dry_run else {})}
            first = run_logged("fsdp_first", launch(*common, "--max_train_steps", "4", "--overwrite_output_dir", **how),
                               out, args.step_timeout, extra_env)
            written = checkpoint_files(folder)
            resumed = run_logged("fsdp_resumed", launch(*common, "--max_train_steps", "6", "--resume_from_checkpoint",
                                                        "latest", "--allow_changed_resume", **how), out,
                                 args.step_timeout, extra_env)
            start = next((r for r in log_records(folder) if r.get("event") == "start"), {})
            keep_run_files(folder, out / "fsdp")
            results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").exists() else {}
            return {"first": first, "checkpoints_after_first": written, "resumed": resumed,
                    "distributed_type": start.get("distributed_type"),
                    "parameters_per_process": start.get("parameters_per_process"),
                    "resumed_from": results.get("resumed_from"), "optimizer_steps": results.get("optimizer_steps"),
                    "final_loss": results.get("final_loss")}
        step("fsdp", fsdp)

    pretrain_rate = summary.get("pretrain", {}).get("images_per_s")
    step_rate = summary.get("step", {}).get("variants", {}).get("hf_mae" if args.dry_run else "hf_mae_compiled",
                                                                {}).get("images_per_s")
    per_core = summary.get("loader", {}).get("per_core_images_per_s", {}).get("parquet")
    summary["verdict"] = {
        "end_to_end_images_per_s": pretrain_rate, "step_images_per_s": step_rate,
        "end_to_end_fraction_of_step": round(pretrain_rate / step_rate, 3) if pretrain_rate and step_rate else None,
        "data_wait_fraction": summary.get("pretrain", {}).get("data_wait_fraction"),
        "workers_needed": math.ceil(step_rate / per_core) if step_rate and per_core else None,
        "fsdp_sharded": summary.get("fsdp", {}).get("checkpoints_after_first", {}).get("sharded"),
        "fsdp_distributed_type": summary.get("fsdp", {}).get("distributed_type"),
        "fsdp_resumed": bool(summary.get("fsdp", {}).get("resumed_from"))}
    save()
    print(json.dumps(summary["verdict"], indent=1), flush=True)
    return summary


if __name__ == "__main__":
    main()
