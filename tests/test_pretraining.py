"""Tiny end-to-end pretraining runs on datasets generated here (every source the script accepts)."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, assert_same_weights, subprocess_timeout, two_class_picture, write_two_class_folders
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from hf_mae.cli.pretrain import build_model, main, parse_args
from hf_mae.training.output_dir import OutputDirError

REPO = Path(__file__).resolve().parents[1]


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_two_class_folders(root / "folder", {"train": 16, "val": 8})
    (root / "folder" / "train" / "a_left" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows = [(jpeg_bytes(two_class_picture(i % 2, i)), i % 2) for i in range(32)]
    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b, _ in rows],
                             "label": [lab for _, lab in rows]}), root / "train.parquet")
    pq.write_table(pa.table({"__key__": [f"{i:05d}" for i in range(32)], "jpg": [b for b, _ in rows],
                             "cls": [lab for _, lab in rows]}), root / "wds.parquet")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return root


def run(data_root: Path, out: Path, *extra: str) -> dict:
    argv = ["--model_config", str(data_root / "tiny.json"), "--output_dir", str(out), "--per_device_batch_size",
            "8", "--epochs", "2", "--num_workers", "0", "--logging_steps", "1", "--image_log_every", "1",
            "--mixed_precision", "no", "--blr", "1e-3", "--warmup_epochs", "1", *extra]
    return main(parse_args(argv))


@pytest.mark.slow
def test_imagefolder_run_writes_every_output(data_root, tmp_path):
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="corrupt.png"):
        results = run(data_root, out, "--train_dir", str(data_root / "folder" / "train"), "--eval_dir",
                      str(data_root / "folder" / "val"))
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_mae.py",
                 "encoder/config.json", "encoder/model.safetensors", "training_args.json", "log.jsonl",
                 "results.json", "loss_curve.png", "reconstruction_final.png",
                 "reconstruction_final_visible_statistics.png", "reconstructions/epoch_0001.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["final_loss"] == results["final_loss"] and math.isfinite(saved["final_loss"])
    assert 0 <= saved["knn_top1"] <= 100 and "knn_top1_init" in saved and "knn_top1_raw_pixels" in saved
    for key in ("probe_top1_cls", "probe_top1_mean", "probe_top1_raw_pixels", "probe_top1_init"):  # the monitor
        assert 0 <= saved[key] <= 100, key
    monitor = [r for r in (json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
               if r.get("event") == "monitor"]
    assert [r["step"] for r in monitor] == [0, 8] and monitor[-1]["probe_top1_cls"] == saved["probe_top1_cls"]
    assert saved["effective_batch_size"] == 8 and saved["lr"] == pytest.approx(1e-3 * 8 / 256)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))  # 33 images -> 4 steps/epoch
    assert len(steps) == 8 and all({"lr", "epoch", "images_per_s", "data_wait_fraction"} <= set(r) for r in steps)
    full = AutoModelForPreTraining.from_pretrained(out)
    encoder = AutoModel.from_pretrained(out / "encoder")
    assert type(full).__name__ == "MAEForPreTraining" and type(encoder).__name__ == "MAEModel"
    assert torch.equal(encoder.blocks[0].attn.qkv.weight, full.encoder.blocks[0].attn.qkv.weight)
    with pytest.raises(OutputDirError, match="finished pretraining run"):  # never overwrite a finished run silently
        run(data_root, out, "--train_dir", str(data_root / "folder" / "train"))


def test_strict_images_fails_on_the_corrupt_file(data_root, tmp_path):
    with pytest.raises(ValueError, match="corrupt.png"):
        run(data_root, tmp_path / "strict", "--train_dir", str(data_root / "folder" / "train"), "--strict_images")


@pytest.mark.parametrize("source", ["parquet", "webdataset", "streaming"])
def test_other_sources(data_root, tmp_path, source):
    name = "wds.parquet" if source == "webdataset" else "train.parquet"
    extra = ["--data_files", str(data_root / name)]
    if source == "streaming":
        extra += ["--streaming", "--max_train_steps", "3"]
    results = run(data_root, tmp_path / source, *extra, "--knn_every", "-1")
    assert math.isfinite(results["final_loss"])
    assert results["optimizer_steps"] == (3 if source == "streaming" else 8)


def test_resume_at_epoch_boundary_reproduces_the_uninterrupted_run(data_root, tmp_path):
    data = ["--data_files", str(data_root / "train.parquet"), "--knn_every", "-1", "--image_log_every", "0",
            "--checkpoints_total_limit", "5"]
    run(data_root, tmp_path / "full", *data)
    checkpoints = sorted((tmp_path / "full" / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-4", "checkpoint-8"]
    run(data_root, tmp_path / "resumed", *data, "--resume_from_checkpoint", str(checkpoints[0]))
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")


def test_mid_epoch_resume_reproduces_the_uninterrupted_run(data_root, tmp_path):
    """Crops are seeded per (seed, epoch, image) and masks per (seed, epoch, batch, process), so resuming in
    the middle of an epoch draws what the uninterrupted run drew (with any number of data workers): same
    schedule, same final weights."""
    data = ["--data_files", str(data_root / "train.parquet"), "--knn_every", "-1", "--image_log_every", "0",
            "--checkpointing_steps", "3", "--checkpoints_total_limit", "2"]
    run(data_root, tmp_path / "full", *data)
    names = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert names == ["checkpoint-6", "checkpoint-8"]  # every 3 steps and each epoch's end; older ones rotated away
    state = json.loads((tmp_path / "full" / "checkpoints" / "checkpoint-6" / "training_state.json").read_text())
    assert {k: state[k] for k in ("update_step", "epoch", "batches_in_epoch", "nonfinite_steps")} == {
        "update_step": 6, "epoch": 1, "batches_in_epoch": 2, "nonfinite_steps": 0}
    run(data_root, tmp_path / "resumed", *data, "--num_workers", "2", "--resume_from_checkpoint",
        str(tmp_path / "full" / "checkpoints" / "checkpoint-6"))  # other workers than the full run: same draws

    def lr_by_step(folder):
        records = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
        return {r["step"]: (r["lr"], r["epoch"]) for r in records if "loss" in r}

    full, resumed = lr_by_step(tmp_path / "full"), lr_by_step(tmp_path / "resumed")
    assert sorted(resumed) == [7, 8] and all(resumed[s] == full[s] for s in resumed)
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")


def test_init_from_keeps_the_checkpoint_loss_target(data_root, tmp_path):
    from hf_mae import MAEConfig, MAEForPreTraining

    MAEForPreTraining(MAEConfig(**TINY, norm_pix_loss=False)).save_pretrained(tmp_path / "pixels")
    data = ["--data_files", str(data_root / "train.parquet"), "--knn_every", "-1", "--max_train_steps", "1"]
    run(data_root, tmp_path / "a", *data, "--init_from", str(tmp_path / "pixels"))
    assert json.loads((tmp_path / "a" / "config.json").read_text())["norm_pix_loss"] is False
    run(data_root, tmp_path / "b", *data, "--init_from", str(tmp_path / "pixels"), "--norm_pix_loss")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["norm_pix_loss"] is True


def test_nonfinite_losses_stop_the_run_with_the_checkpoint_intact(data_root, tmp_path, monkeypatch):
    from hf_mae.models.mae.modeling_mae import MAEForPreTraining

    real = MAEForPreTraining.forward_loss
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        loss = real(self, *args)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(MAEForPreTraining, "forward_loss", poisoned)
    with pytest.raises(RuntimeError, match="non-finite.*checkpoint-4"):
        run(data_root, tmp_path / "nan", "--data_files", str(data_root / "train.parquet"), "--knn_every", "-1",
            "--max_nonfinite_steps", "3")
    saved = load_file(tmp_path / "nan" / "checkpoints" / "checkpoint-4" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in saved.values())


def _script(*args: str, env=None, **kwargs):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.Popen(list(args), cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


@pytest.mark.slow
def test_sigkill_then_resume_latest(data_root, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "scripts/pretrain.py", "--model_config", str(data_root / "tiny.json"), "--data_files",
            str(data_root / "train.parquet"), "--output_dir", str(out), "--per_device_batch_size", "8",
            "--epochs", "20", "--num_workers", "0", "--checkpointing_steps", "2", "--knn_every", "-1",
            "--image_log_every", "0", "--mixed_precision", "no"]
    proc = _script(*args)
    deadline = time.time() + subprocess_timeout(120)
    while time.time() < deadline and not list((out / "checkpoints").glob("checkpoint-*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # 80 steps with a checkpoint every 2: killed long before the end
    proc.wait()
    assert not (out / "results.json").exists()
    assert not list((out / "checkpoints").glob(".checkpoint-*.tmp/training_state.json"))
    finished = _script(*args, "--resume_from_checkpoint", "latest")  # the same command, resumed
    output, _ = finished.communicate(timeout=subprocess_timeout(300))
    assert finished.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = [r for r in records if r.get("event") == "start"]  # a resume continues the log: two starts
    assert len(starts) == 2 and "checkpoint-" in starts[1]["resumed_from"]
    assert json.loads((out / "results.json").read_text())["optimizer_steps"] == 80


@pytest.mark.slow
def test_two_processes_see_different_data_and_write_once(data_root, tmp_path):
    out = tmp_path / "ddp"
    proc = _script(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--main_process_port", "29512", "scripts/pretrain.py",
                   "--model_config", str(data_root / "tiny.json"), "--data_files", str(data_root / "train.parquet"),
                   "--output_dir", str(out), "--per_device_batch_size", "4", "--epochs", "1", "--num_workers", "0",
                   "--knn_every", "-1", "--mixed_precision", "no", env={"ACCELERATE_USE_CPU": "1"})
    output, _ = proc.communicate(timeout=subprocess_timeout(300))
    assert proc.returncode == 0, output[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = [r for r in log if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["processes"] == 2 and starts[0]["effective_batch_size"] == 8
    sums = next(r for r in log if r.get("event") == "first_batch")["pixel_sums_per_process"]
    assert len(sums) == 2 and sums[0] != sums[1]
    assert json.loads((out / "results.json").read_text())["optimizer_steps"] == 4  # 32 images / 8 per step


@pytest.mark.parametrize("name, kind, processes", [("single_gpu", "NO", 1), ("multi_gpu", "MULTI_GPU", 8),
                                                    ("fsdp", "FSDP", 8), ("multi_node", "MULTI_GPU", 16),
                                                    ("cpu_2proc", "MULTI_GPU", 2)])
def test_shipped_accelerate_configs_parse(name, kind, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "scripts" / "configs" / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.num_processes == processes


def test_schedule_is_set_per_optimizer_step_under_accumulation(data_root, tmp_path):
    from hf_mae.training.optim import lr_at_step

    out = tmp_path / "accum"
    results = run(data_root, out, "--data_files", str(data_root / "train.parquet"), "--knn_every", "-1",
                  "--image_log_every", "0", "--gradient_accumulation_steps", "2")
    lr = 1e-3 * 16 / 256  # effective batch: 8 per device x 2 accumulation steps
    assert results["effective_batch_size"] == 16 and results["lr"] == pytest.approx(lr)
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]  # 4 batches per epoch / 2 = 2 optimizer steps per epoch
    for r in steps:  # warmup 1 epoch = 2 optimizer steps, then cosine; the logged lr is the step's own
        assert r["lr"] == pytest.approx(lr_at_step(r["step"] - 1, 4, 2, lr), abs=1e-12)


def test_missing_tracker_is_a_clear_warning(capsys):
    from hf_mae.training.run import trackers_from

    assert trackers_from("none") is None and trackers_from("all") == "all"
    assert trackers_from("surely_not_a_tracker_pkg") is None
    assert "not installed" in capsys.readouterr().err


def test_mask_noise_depends_on_its_seed_parts_only():
    from hf_mae.cli.pretrain import mask_noise

    pixels = torch.zeros(4, 1, 8, 8)
    first = mask_noise(pixels, 16, 0, 1, 2, 0)
    torch.rand(10)  # whatever else draws from the global RNG in between
    assert first.shape == (4, 16) and torch.equal(mask_noise(pixels, 16, 0, 1, 2, 0), first)
    for other in [(1, 1, 2, 0), (0, 2, 2, 0), (0, 1, 3, 0), (0, 1, 2, 1)]:  # seed, epoch, batch, process
        assert not torch.equal(mask_noise(pixels, 16, *other), first)


def test_embedded_recipe_model_fields_belong_to_the_preset(tmp_path):
    """The embedded recipe's mask ratio (0.6) and plain-pixel loss go with its preset; a model the user brings
    keeps its own; the whole-digit crop is the embedded recipe's, the paper's 0.2 everywhere else."""
    from hf_mae import MAEConfig

    embedded = parse_args([])
    assert (embedded.preset, embedded.mask_ratio, embedded.per_device_batch_size) == ("mae-vit-mnist-patch4", 0.6, 64)
    assert embedded.norm_pix_loss is False and embedded.crop_min_scale == 1.0
    assert build_model(embedded)[0].config.norm_pix_loss is False
    (tmp_path / "model.json").write_text(json.dumps({**TINY, "mask_ratio": 0.5}))
    own = parse_args(["--model_config", str(tmp_path / "model.json")])
    assert own.mask_ratio is None and build_model(own)[0].config.mask_ratio == 0.5
    assert own.norm_pix_loss is None and build_model(own)[0].config.norm_pix_loss is True  # MAEConfig's own
    assert own.crop_min_scale == 1.0  # a recipe field: still the embedded data's
    MAEConfig(**TINY, mask_ratio=0.5).save_pretrained(tmp_path / "ckpt")
    resumed = parse_args(["--init_from", str(tmp_path / "ckpt")])
    assert resumed.mask_ratio is None and resumed.norm_pix_loss is None
    assert parse_args(["--mask_ratio", "0.7", "--norm_pix_loss"]).mask_ratio == 0.7
    assert parse_args(["--norm_pix_loss"]).norm_pix_loss is True
    assert parse_args(["--crop_min_scale", "0.3"]).crop_min_scale == 0.3
    named = parse_args(["--dataset_name", "some/dataset"])
    assert named.mask_ratio is None and named.norm_pix_loss is None  # the preset's own 0.75 and norm-pix
    assert named.crop_min_scale == 0.2


def test_saved_cards_name_the_training_data(data_root, tmp_path):
    """The short cards of the saved model and encoder carry `datasets:`: the Hub's MNIST for the embedded digits
    (what the Hub links a card to), nothing for local image folders (never published)."""
    from huggingface_hub.repocard import metadata_load

    embedded = tmp_path / "embedded"
    main(parse_args(["--model_config", str(data_root / "tiny.json"), "--output_dir", str(embedded),
                     "--max_train_steps", "1", "--monitor_every", "-1", "--num_workers", "0",
                     "--mixed_precision", "no"]))
    for folder in (embedded, embedded / "encoder"):
        card = metadata_load(folder / "README.md")
        assert card["datasets"] == ["ylecun/mnist"] and card["license"] == "apache-2.0", folder
    local = tmp_path / "local"
    run(data_root, local, "--train_dir", str(data_root / "folder" / "train"), "--epochs", "1", "--monitor_every", "-1")
    assert "datasets" not in metadata_load(local / "README.md")
