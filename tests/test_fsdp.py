"""Sharded training for real: the pretraining program under FSDP2 on two gloo CPU processes (accelerate's own
FSDP path, enabled on CPU by the testing switch HF_MAE_FSDP_ON_CPU=1), against DDP, killed and resumed, and
resharded between 1 and 2 processes. Each run asserts from its log that it really was sharded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
from conftest import TINY, subprocess_timeout, write_two_class_folders
from safetensors.torch import load_file

from hf_mae import MAEConfig, MAEForPreTraining, MAEModel
from hf_mae.training.checkpointing import CheckpointError, check_layout

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "scripts" / "configs"
pytestmark = pytest.mark.slow
STEPS = 12  # 32 images, 4 per process x 2 processes: 4 optimizer steps an epoch, 3 epochs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """32 training images and 8 held-out ones (the pictures are drawn from those)."""
    root = write_two_class_folders(tmp_path_factory.mktemp("fsdp_data"), {"train": 16, "val": 4})
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


_PORTS = iter(range(29541, 29600))


def accelerate_launch(script: str, *args: str, config: str = "fsdp_cpu_2proc", processes: int = 2,
                      switch: bool = True) -> subprocess.Popen:
    """A real program through `accelerate launch`, on CPU processes."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    env.pop("HF_MAE_FSDP_ON_CPU", None)
    if switch:
        env["HF_MAE_FSDP_ON_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
               "--num_processes", str(processes), "--main_process_port", str(next(_PORTS)), script, *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch(data: Path, out: Path, *extra: str, **how) -> subprocess.Popen:
    """The pretraining program on the tiny recipe, a checkpoint every step."""
    return accelerate_launch(
        "scripts/pretrain.py", "--model_config", str(data / "tiny.json"), "--train_dir", str(data / "train"),
        "--eval_dir", str(data / "val"), "--output_dir", str(out), "--per_device_batch_size", "4", "--epochs", "3",
        "--num_workers", "0", "--knn_every", "-1", "--image_log_every", "1", "--mixed_precision", "no",
        "--logging_steps", "1", "--checkpointing_steps", "1", "--checkpoints_total_limit", "20", "--blr", "0.05",
        "--warmup_epochs", "1", *extra, **how)


def finish(proc: subprocess.Popen, expect_ok: bool = True) -> str:
    output, _ = proc.communicate(timeout=subprocess_timeout(300))
    if expect_ok:
        assert proc.returncode == 0, output[-4000:]
    return output


def records(out: Path, event: str | None = None) -> list[dict]:
    found = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [r for r in found if r.get("event") == event] if event else found


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r and "event" not in r}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_sharded(out: Path, processes: int = 2) -> None:
    """The run log says FSDP, and each process held about 1/N of the parameters and of the optimizer state."""
    start = records(out, "start")[-1]
    shards = records(out, "sharding")[-1]
    assert start["distributed_type"] == shards["distributed_type"] == "FSDP"
    total = sum(p.numel() for p in MAEForPreTraining(MAEConfig(**TINY)).parameters())
    per_process = start["parameters_per_process"]
    assert len(per_process) == processes and per_process == shards["parameters_per_process"]
    assert sum(per_process) == total
    state = shards["optimizer_state_per_process"]
    assert sum(state) == 2 * sum(per_process)  # Adam: exp_avg and exp_avg_sq of every parameter element
    for count, moments in zip(per_process, state):
        assert count == pytest.approx(sum(per_process) / processes, rel=0.02)
        assert moments == pytest.approx(sum(state) / processes, rel=0.02)


def assert_complete_checkpoints(out: Path, steps: range, sharded: bool) -> None:
    """Every step's checkpoint is complete (a race loses files or the whole folder); no staging folder is left."""
    root = out / "checkpoints"
    assert sorted(int(p.name.split("-")[1]) for p in root.glob("checkpoint-*")) == list(steps)
    assert not list(root.glob(".*.tmp"))
    for step in steps:
        folder = root / f"checkpoint-{step}"
        assert (folder / "random_states_0.pkl").exists() and (folder / "random_states_1.pkl").exists()
        assert (folder / "model" / "model.safetensors").exists()
        if sharded:
            assert (folder / "pytorch_model_fsdp_0" / ".metadata").exists()
            assert (folder / "optimizer_0" / ".metadata").exists()


@pytest.fixture(scope="module")
def fsdp_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "run"
    finish(launch(data, out))
    return out


def test_fsdp_run_is_sharded_saves_full_weights_and_never_races(fsdp_run):
    assert_sharded(fsdp_run)
    assert_complete_checkpoints(fsdp_run, range(1, STEPS + 1), sharded=True)
    final = weights(fsdp_run)
    assert_same(final, weights(fsdp_run / "checkpoints" / f"checkpoint-{STEPS}" / "model"))  # gathered: full
    model = MAEForPreTraining.from_pretrained(fsdp_run)  # loadable, and equal to the gathered weights
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, final[name]), name
    assert all(torch.isfinite(v).all() for v in final.values())
    encoder = MAEModel.from_pretrained(fsdp_run / "encoder")
    assert torch.equal(encoder.state_dict()["blocks.0.attn.qkv.weight"], final["encoder.blocks.0.attn.qkv.weight"])
    assert (fsdp_run / "reconstructions" / "epoch_0003.png").exists()  # pictures from the gathered weights
    assert (fsdp_run / "reconstruction_final.png").exists()


def test_fsdp_losses_match_ddp(data, fsdp_run, tmp_path):
    out = tmp_path / "ddp"
    finish(launch(data, out, config="cpu_2proc", switch=False))
    assert records(out, "start")[0]["distributed_type"] == "MULTI_CPU"
    full = records(out, "sharding")[0]["parameters_per_process"]
    assert full[0] == full[1] == sum(records(fsdp_run, "sharding")[0]["parameters_per_process"])  # DDP: whole
    assert_complete_checkpoints(out, range(1, STEPS + 1), sharded=False)
    sharded, replicated = losses(fsdp_run), losses(out)
    assert sorted(sharded) == sorted(replicated) == list(range(1, STEPS + 1))
    for step in sharded:
        assert sharded[step] == pytest.approx(replicated[step], abs=1e-5), step
    for name, tensor in weights(out).items():
        assert torch.allclose(tensor, weights(fsdp_run)[name], atol=1e-5), name


def test_sigkill_after_a_checkpoint_then_resume_equals_uninterrupted(data, fsdp_run, tmp_path):
    out = tmp_path / "killed"
    proc = launch(data, out)
    deadline = time.time() + subprocess_timeout(180)
    while time.time() < deadline and not (out / "checkpoints" / "checkpoint-2").exists():
        time.sleep(0.05)
    for process in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
        process.send_signal(signal.SIGKILL)  # both ranks (torchrun starts them in sessions of their own), mid-run
    proc.communicate()
    assert (out / "checkpoints" / "checkpoint-2").exists() and not (out / "results.json").exists()
    finish(launch(data, out, "--resume_from_checkpoint", "latest"))
    assert "checkpoint-" in (records(out, "start")[-1]["resumed_from"] or "")
    assert_sharded(out)
    assert_same(weights(out), weights(fsdp_run))
    assert losses(out) == losses(fsdp_run)


def test_resharding_two_to_one_and_one_to_two(data, fsdp_run, tmp_path):
    # 2 -> 1: the end-of-epoch checkpoint of the 2-process run, loaded on 1 process, gives back its weights
    two = fsdp_run / "checkpoints" / "checkpoint-4"
    out = tmp_path / "on_one"
    finish(launch(data, out, "--resume_from_checkpoint", str(two), "--max_train_steps", "4",
                  "--allow_changed_resume", processes=1))
    assert records(out, "start")[-1]["distributed_type"] == "FSDP"
    assert_same(weights(out), weights(two / "model"))
    # 1 -> 2: a 1-process sharded checkpoint (one epoch: 8 steps), loaded on 2 processes
    single = tmp_path / "single"
    finish(launch(data, single, "--epochs", "1", "--checkpointing_steps", "epoch", processes=1))
    assert_sharded(single, processes=1)
    one = single / "checkpoints" / "checkpoint-8"
    out = tmp_path / "on_two"
    finish(launch(data, out, "--epochs", "1", "--checkpointing_steps", "epoch", "--resume_from_checkpoint", str(one)))
    assert_same(weights(out), weights(one / "model"))
    assert records(out, "start")[-1]["parameters_per_process"] != records(single, "start")[0]["parameters_per_process"]


def test_finetune_under_fsdp_saves_full_best_and_final_models(data, fsdp_run, tmp_path):
    out = tmp_path / "finetune"
    finish(accelerate_launch("scripts/finetune.py", "--model", str(fsdp_run), "--train_dir", str(data / "train"),
                             "--eval_dir", str(data / "val"), "--output_dir", str(out), "--per_device_batch_size", "4",
                             "--epochs", "2", "--num_workers", "0", "--mixed_precision", "no",
                             "--checkpointing_steps", "2"))
    start, shards = records(out, "start")[0], records(out, "sharding")[0]
    assert start["distributed_type"] == shards["distributed_type"] == "FSDP"
    held = start["parameters_per_process"]
    assert held[0] == pytest.approx(held[1], rel=0.02)
    state = shards["optimizer_state_per_process"]
    assert state[0] == pytest.approx(state[1], rel=0.02) and sum(state) <= 2 * sum(held)
    from transformers import AutoModelForImageClassification

    final = AutoModelForImageClassification.from_pretrained(out)
    assert sum(p.numel() for p in final.parameters()) == sum(held)  # gathered: every element, once
    for name, tensor in final.state_dict().items():
        assert torch.equal(tensor, weights(out / "checkpoints" / "checkpoint-8" / "model")[name]), name
    assert AutoModelForImageClassification.from_pretrained(out / "best").config.num_labels == 2


def test_fsdp_config_without_sharding_stops_at_start(data, tmp_path):
    out = tmp_path / "fallback"
    proc = launch(data, out, switch=False)  # accelerate would run this FSDP config as DDP on CPU processes
    output = finish(proc, expect_ok=False)
    assert proc.returncode != 0
    assert "asks for FSDP" in output and "MULTI_CPU" in output and "HF_MAE_FSDP_ON_CPU=1" in output
    assert not (out / "checkpoints").exists()


def test_mid_epoch_checkpoint_on_another_world_size_is_a_clear_error(tmp_path):
    (tmp_path / "pytorch_model_fsdp_0").mkdir()
    accelerator = SimpleNamespace(distributed_type="DistributedType.FSDP", num_processes=1, print=print)
    with pytest.raises(CheckpointError, match="on 1 processes: it was written by 2 processes in the middle"):
        check_layout(accelerator, tmp_path, {"num_processes": 2, "batches_in_epoch": 3})
    check_layout(accelerator, tmp_path, {"num_processes": 2, "batches_in_epoch": 0})  # an epoch's end: resharded
    ddp = SimpleNamespace(distributed_type="DistributedType.MULTI_CPU", num_processes=2, print=print)
    with pytest.raises(CheckpointError, match=r"sharded \(FSDP\) and this run is MULTI_CPU"):
        check_layout(ddp, tmp_path, {"num_processes": 2})
