"""The benchmark scripts run end to end (tiny settings: a smoke test, no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_timeout

pytestmark = pytest.mark.benchmarks

REPO = Path(__file__).resolve().parents[1]


def run(args, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, *args, "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=subprocess_timeout(600))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_cpu_benchmark_small_training_step(tmp_path):
    results, stdout = run(["benchmarks/benchmark.py", "--case", "train_small", "--rounds", "1", "--repeats", "1",
                           "--warmup", "0"], tmp_path)
    case = results["cases"]["train_small"]
    assert case["hf_mae_s"] > 0 and case["transformers_s"] > 0 and case["speedup"] > 0
    assert "| train_small |" in stdout


@pytest.mark.slow
def test_gpu_benchmark_dry_run_on_cpu(tmp_path):
    results, stdout = run(["benchmarks/benchmark_gpu.py", "--dry_run", "--no_compile", "--rounds", "1", "--repeats",
                           "1", "--warmup", "1"], tmp_path)
    variants = results["variants"]
    assert set(variants) == {"hf_mae", "transformers_bf16", "transformers_defaults"}
    assert variants["hf_mae"]["images_per_s"] > 0 and variants["hf_mae"]["mfu"] is None  # no peak known on a CPU
    assert "speedup_vs_transformers_bf16" in variants["hf_mae"] and "| hf_mae |" in stdout


def test_gpu_benchmark_refuses_without_a_gpu():
    proc = subprocess.run([sys.executable, "benchmarks/benchmark_gpu.py"], cwd=REPO, capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""}, timeout=subprocess_timeout(300))
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.slow
def test_gpu_benchmark_deadline_drops_optional_variants_only(tmp_path):
    results, stdout = run(["benchmarks/benchmark_gpu.py", "--dry_run", "--no_compile", "--sdpa_backends", "MATH",
                           "--deadline_s", "0.001", "--rounds", "1", "--repeats", "1", "--warmup", "1"], tmp_path)
    assert set(results["variants"]) == {"hf_mae", "transformers_bf16"}  # the baselines are never dropped
    assert "warm-up hf_mae_math FAILED, dropped: TimeoutError" in stdout


def load_gpu_benchmark():
    import benchmark_gpu  # benchmarks/ is on pytest's pythonpath (pyproject.toml)

    return benchmark_gpu


def test_alarm_interrupts_a_long_warm_up_and_is_cleared():
    import signal
    import time

    import pytest

    benchmark_gpu = load_gpu_benchmark()
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="deadline"), benchmark_gpu.alarm_after(1):
        time.sleep(10)
    assert time.perf_counter() - start < 5
    assert signal.alarm(0) == 0  # no alarm left pending
    with benchmark_gpu.alarm_after(None):  # no limit: nothing armed
        assert signal.alarm(0) == 0


def test_kernel_categories():
    category = load_gpu_benchmark().kernel_category
    assert category("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert category("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16") == "attention"
    assert category("void cudnn::fusion::convert_dq_to_16bits<true>(void const*)") == "attention"
    assert category("triton_poi_fused_gelu_gelu_backward_view_9") == "fused elementwise/norm"
    assert category("void at::native::multi_tensor_apply_kernel<adam>") == "optimizer"
    assert category("void at::native::reduce_kernel<128, 4>") == "other"


def test_encoder_only_attention_switch_leaves_the_decoder_alone():
    import torch

    from hf_mae import MAEConfig, MAEForPreTraining

    model = MAEForPreTraining(MAEConfig.from_preset("mae-vit-mnist-patch4"))
    pixels = torch.randn(2, 1, 28, 28)
    noise = torch.rand(2, model.config.num_patches)
    before = model(pixel_values=pixels, noise=noise).loss
    load_gpu_benchmark().with_encoder_attention(model, "eager")
    encoder = {m.config._attn_implementation for m in model.encoder.modules() if hasattr(m, "qkv")}
    decoder = {m.config._attn_implementation for m in model.decoder_blocks.modules() if hasattr(m, "qkv")}
    assert encoder == {"eager"} and decoder == {model.config._attn_implementation} != {"eager"}
    assert torch.allclose(model(pixel_values=pixels, noise=noise).loss, before, atol=1e-5)  # same function


@pytest.mark.slow
def test_loader_case_writes_the_speedup_and_every_layout(tmp_path):
    results, stdout = run(["benchmarks/benchmark.py", "--case", "loader", "--images", "8", "--rounds", "1",
                           "--loader_batch", "4"], tmp_path)
    case = results["cases"]["loader"]
    assert case["speedup"] > 0 and set(case["layouts"]) == {"imagefolder", "parquet", "webdataset"}
    for figures in case["layouts"].values():
        assert figures["old_images_per_s"] > 0 and figures["new_images_per_s"] > 0 and figures["speedup"] > 0
    assert "| loader, parquet, per core |" in stdout


@pytest.mark.slow
def test_stages_and_prepared_cases_run(tmp_path):
    results, _ = run(["benchmarks/benchmark.py", "--case", "stages", "--images", "4", "--rounds", "1"], tmp_path)
    stages = results["cases"]["stages"]["stages"]
    assert {"decode (simplejpeg)", "crop + resize to 224", "collate"} <= set(stages)
    assert all(s["old_ms"] >= 0 and s["new_ms"] > 0 for s in stages.values())
    results, _ = run(["benchmarks/benchmark.py", "--case", "prepared", "--images", "8", "--rounds", "1",
                      "--loader_batch", "4", "--shorter_sides", "256"], tmp_path)
    copies = results["cases"]["prepared"]["copies"]
    assert set(copies) == {"source", "256"} and copies["256"]["kb_per_image"] < copies["source"]["kb_per_image"]


def test_mfu_flops_per_image_from_the_config():
    from hf_mae import MAEConfig

    flops = load_gpu_benchmark().train_gflop_per_image
    base, large = (flops(MAEConfig.from_preset(p)) for p in ("mae-vit-base-patch16", "mae-vit-large-patch16"))
    assert round(base, 1) == 58.2  # the figure every MFU in BENCHMARKS.md uses
    assert round(large, 1) == 123.8 and flops(MAEConfig.from_preset("mae-vit-base-patch16", mask_ratio=0.5)) > base


@pytest.mark.slow
def test_gpu_end_to_end_script_dry_run(tmp_path):
    """Everything tiny on the CPU (~1-2 minutes on 2 cores): data, pretrain, synthetic step, loader, FSDP resume."""
    proc = subprocess.run([sys.executable, "benchmarks/gpu_end_to_end.py", "--dry_run", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=subprocess_timeout(900))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["data"]["images"] == 48 and summary["data"]["shards"] == 3
    assert summary["pretrain"]["returncode"] == 0 and summary["pretrain"]["images_per_s"] > 0
    assert 0 <= summary["pretrain"]["data_wait_fraction"] <= 1
    assert summary["step"]["variants"]["hf_mae"]["images_per_s"] > 0
    assert summary["loader"]["speedup_vs_old"] > 0 and summary["loader"]["per_core_images_per_s"]["parquet"] > 0
    fsdp = summary["fsdp"]
    assert fsdp["first"]["returncode"] == 0 and fsdp["checkpoints_after_first"]["checkpoints"]
    assert fsdp["resumed_from"] and fsdp["optimizer_steps"] == 6
    assert summary["verdict"]["fsdp_resumed"] is True
    for name in ("logs/pretrain.stdout.txt", "logs/pretrain.stderr.txt", "logs/fsdp_resumed.command.txt",
                 "pretrain/log.jsonl", "fsdp/results.json"):
        assert (tmp_path / name).exists(), name
