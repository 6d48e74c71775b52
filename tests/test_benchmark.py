"""The benchmark scripts run end to end (tiny settings: a smoke test, no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, *args, "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_cpu_benchmark_small_training_step(tmp_path):
    results, stdout = run(["scripts/benchmark.py", "--case", "train_small", "--rounds", "1", "--repeats", "1",
                           "--warmup", "0"], tmp_path)
    case = results["cases"]["train_small"]
    assert case["hf_mae_s"] > 0 and case["transformers_s"] > 0 and case["speedup"] > 0
    assert "| train_small |" in stdout


def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    results, stdout = run(["scripts/benchmark_gpu.py", "--dry_run", "--no_compile", "--rounds", "1", "--repeats", "1",
                           "--warmup", "1"], tmp_path)
    variants = results["variants"]
    assert set(variants) == {"hf_mae", "transformers_bf16", "transformers_defaults"}
    assert variants["hf_mae"]["images_per_s"] > 0 and variants["hf_mae"]["mfu"] is None  # no peak known on a CPU
    assert "speedup_vs_transformers_bf16" in variants["hf_mae"] and "| hf_mae |" in stdout


def test_gpu_benchmark_refuses_without_a_gpu():
    proc = subprocess.run([sys.executable, "scripts/benchmark_gpu.py"], cwd=REPO, capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""}, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
