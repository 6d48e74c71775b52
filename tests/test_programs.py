"""The same behaviour in every program, written as a user's failure cases: output folders are never lost or
mixed, bad batches and non-finite losses are skipped and counted, damaged checkpoints are named, bad flag
values are refused at parse time, and the transformers-style flag names work."""

import hashlib
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import copy_of, save_tiny_checkpoint, two_class_picture
from safetensors.torch import load_file

from hf_mae.cli import finetune as finetuning
from hf_mae.cli import knn_eval, linear_probe
from hf_mae.cli import pretrain as pretraining
from hf_mae.data.sources import DatasetLoadError
from hf_mae.data.train_loader import seeded_generator
from hf_mae.evaluation.probe import ProbeHead
from hf_mae.training.checkpointing import CheckpointError
from hf_mae.training.loop import NoDecodableImagesError, NonFiniteLossError, WarmupWarning, plan_schedule
from hf_mae.training.output_dir import OutputDirError

PROGRAMS = {"pretrain": pretraining, "probe": linear_probe, "finetune": finetuning, "knn": knn_eval}


def png_bytes(label: int, seed: int) -> bytes:
    import io

    buffer = io.BytesIO()
    two_class_picture(label, seed, size=16, low=180).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def root(two_class_root, tmp_path_factory) -> Path:
    """A copy of the shared data (image folders train 16 + val 8 per class, `pretrain`, `tiny.json`) plus a parquet
    training set of 16 images whose first batch of 8 (in the seed-0 epoch-0 order) is all undecodable."""
    root = copy_of(two_class_root, tmp_path_factory.mktemp("programs") / "data")
    first_batch = set(torch.randperm(16, generator=seeded_generator(0, 0))[:8].tolist())  # the sampler's order
    rows = [(b"not an image" if i in first_batch else png_bytes(i % 2, i), i % 2) for i in range(16)]
    table = {"image": [{"bytes": b, "path": None} for b, _ in rows], "label": [label for _, label in rows]}
    (root / "first_bad").mkdir()
    pq.write_table(pa.table(table), root / "first_bad" / "train.parquet")
    second_batch = set(torch.randperm(16, generator=seeded_generator(0, 0))[8:].tolist())
    rows = [(b"not an image" if i in second_batch else png_bytes(i % 2, i), i % 2) for i in range(16)]
    (root / "last_bad").mkdir()
    pq.write_table(pa.table({"image": [{"bytes": b, "path": None} for b, _ in rows],
                             "label": [label for _, label in rows]}), root / "last_bad" / "train.parquet")
    held_out = {"image": [{"bytes": png_bytes(i % 2, 100 + i), "path": None} for i in range(6)] +
                [{"bytes": b"junk", "path": None}] * 2, "label": [i % 2 for i in range(8)]}
    pq.write_table(pa.table(held_out), root / "first_bad" / "validation.parquet")
    pq.write_table(pa.table(held_out), root / "last_bad" / "validation.parquet")
    return root


def args_for(program: str, root: Path, out: Path, *extra: str, data=None) -> list[str]:
    common = ["--output_dir", str(out), "--num_workers", "0", "--mixed_precision", "no", "--cpu_threads", "1"]
    # 32 training images / 8 per batch: 4 optimizer steps per epoch
    data = ["--train_dir", str(root / "train"), "--eval_dir", str(root / "val")] if data is None else data
    if program == "pretrain":
        return [*common, *data, "--model_config", str(root / "tiny.json"), "--per_device_batch_size", "8",
                "--epochs", "2", "--knn_every", "-1", "--image_log_every", "0", "--warmup_epochs", "0", *extra]
    if program == "knn":
        return [*common, *data, "--model", str(root / "pretrain"), "--k", "3", *extra]
    return [*common, *data, "--model", str(root / "pretrain"), "--per_device_batch_size", "8", "--epochs", "2",
            "--warmup_epochs", "0", *extra]


def run(program: str, root: Path, out: Path, *extra: str, data=None) -> dict:
    module = PROGRAMS[program]
    return module.main(module.parse_args(args_for(program, root, out, *extra, data=data)))


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- output folders ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", ["probe", "knn", "finetune"])
def test_a_program_never_writes_into_its_input_folder(root, tmp_path, program):
    pre = tmp_path / "pre"
    run("pretrain", root, pre, "--epochs", "1")
    before = digest(pre)
    with pytest.raises(OutputDirError, match="where this run reads its input"):
        run(program, root, pre, "--model", str(pre))
    with pytest.raises(OutputDirError, match="where this run reads its input"):  # not even when asked to overwrite
        run(program, root, pre, "--model", str(pre), "--overwrite_output_dir")
    assert digest(pre) == before


def test_finished_runs_and_other_programs_outputs_are_refused(root, tmp_path):
    knn = tmp_path / "knn"
    first = run("knn", root, knn)
    saved = (knn / "results.json").read_bytes()
    with pytest.raises(OutputDirError, match="finished kNN evaluation run"):
        run("knn", root, knn)
    with pytest.raises(OutputDirError, match="the outputs of kNN evaluation"):
        run("probe", root, knn)
    assert (knn / "results.json").read_bytes() == saved
    again = run("knn", root, knn, "--overwrite_output_dir")
    assert again["knn_top1"] == first["knn_top1"]
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(OutputDirError, match="not a folder"):
        run("knn", root, tmp_path / "a_file")


def test_overwrite_is_a_clean_start_and_an_interrupted_run_needs_resume(root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run("pretrain", root, out, "--epochs", "3", "--checkpoints_total_limit", "5")  # checkpoints 4, 8, 12
    (out / "my_notes.txt").write_text("mine")
    run("pretrain", root, out, "--epochs", "1", "--overwrite_output_dir")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4"]  # nothing of the old run
    assert (out / "my_notes.txt").read_text() == "mine"  # files hf_mae did not write are left alone
    assert json.loads((out / "results.json").read_text())["optimizer_steps"] == 4

    # an interrupted run (killed after its first checkpoint): a fresh command is refused, the log kept
    interrupted = tmp_path / "interrupted"
    real = pretraining.TrainingLoop.checkpoint

    def die_after_first_checkpoint(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretraining.TrainingLoop, "checkpoint", die_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run("pretrain", root, interrupted)
    monkeypatch.setattr(pretraining.TrainingLoop, "checkpoint", real)
    log = (interrupted / "log.jsonl").read_text()
    with pytest.raises(OutputDirError, match="(?s)interrupted pretraining run.*--resume_from_checkpoint latest"):
        run("pretrain", root, interrupted)
    assert (interrupted / "log.jsonl").read_text() == log
    results = run("pretrain", root, interrupted, "--resume_from_checkpoint", "latest")
    assert results["resumed_from"].endswith("checkpoint-4") and results["optimizer_steps"] == 8


# --- bad batches and non-finite losses -----------------------------------------------------------------------


@pytest.mark.parametrize("program, extra", [("pretrain", ()), ("finetune", ()), ("probe", ("--augment",))])
def test_a_first_batch_with_no_decodable_image_is_skipped_and_counted(root, tmp_path, program, extra):
    out = tmp_path / program
    with pytest.warns(UserWarning, match="Skipping undecodable image"):
        results = run(program, root, out, *extra, "--per_device_batch_size", "8", "--logging_steps", "1",
                      data=["--dataset_name", str(root / "first_bad")])
    optimizer_steps = results.get("optimizer_steps")  # the probe reports its steps in its history
    assert optimizer_steps == 4  # 16 images / 8 = 2 batches per epoch, 2 epochs: the run went on
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "skipped_batches" in r]
    assert steps and steps[-1]["skipped_batches"] >= 1 and steps[-1]["skipped_images"] == 16  # 8 per epoch
    saved = json.loads((out / "results.json").read_text())
    skipped = saved["skipped_images"]
    assert (skipped["train"] if isinstance(skipped, dict) else skipped) == 16


def test_a_resume_whose_rest_of_the_epoch_is_undecodable_goes_on(root, tmp_path):
    """Killed after the first batch of an epoch whose second batch is all undecodable: the resumed run skips
    that batch (the epoch as a whole had images) instead of calling the data empty."""
    out = tmp_path / "run"
    data = ["--dataset_name", str(root / "last_bad")]
    with pytest.warns(UserWarning, match="Skipping undecodable image"):
        full = run("pretrain", root, out, "--per_device_batch_size", "8", "--epochs", "1", "--checkpointing_steps",
                   "1", data=data)
    assert full["skipped_batches"] == 1
    with pytest.warns(UserWarning, match="Skipping undecodable image"):
        resumed = run("pretrain", root, tmp_path / "resumed", "--per_device_batch_size", "8", "--epochs", "1",
                      "--resume_from_checkpoint", str(out / "checkpoints" / "checkpoint-1"), data=data)
    assert resumed["optimizer_steps"] == 2 and resumed["skipped_batches"] == 1


def test_no_decodable_training_image_is_an_error_not_a_result(root, tmp_path):
    bad = tmp_path / "all_bad"
    bad.mkdir()
    junk = {"image": [{"bytes": b"\x89PNG\r\n\x1a\nbroken", "path": None}] * 8, "label": [0, 1] * 4}
    pq.write_table(pa.table(junk), bad / "train.parquet")
    (bad / "validation.parquet").write_bytes((root / "first_bad" / "validation.parquet").read_bytes())
    with pytest.warns(UserWarning), pytest.raises(NoDecodableImagesError, match="no decodable image"):
        run("finetune", root, tmp_path / "ft", data=["--dataset_name", str(bad)])
    assert not (tmp_path / "ft" / "results.json").exists()


def test_held_out_batches_with_bad_images_are_skipped_and_counted(root, tmp_path):
    out = tmp_path / "knn"
    argv = ["--output_dir", str(out), "--num_workers", "0", "--model", str(root / "pretrain"), "--dataset_name",
            str(root / "first_bad"), "--eval_batch_size", "2", "--k", "3"]
    with pytest.warns(UserWarning, match="Skipping undecodable image"):
        results = knn_eval.main(knn_eval.parse_args(argv))  # the last held-out batch is all junk
    assert results["num_eval"] == 6 and results["skipped_images"] == {"train": 8, "eval": 2}


def nan_after(monkeypatch, cls, method: str, calls: int):
    """Make `cls.method`'s training result (a tensor, or an output's loss) NaN after `calls` such calls."""
    real, count = getattr(cls, method), {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if not self.training or (not torch.is_tensor(out) and out.loss is None):
            return out  # evaluation is left alone
        count["n"] += 1
        if count["n"] <= calls:
            return out
        if torch.is_tensor(out):
            return out * float("nan")
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(cls, method, poisoned)


@pytest.mark.parametrize("program", ["finetune", "probe_augment", "probe"])
def test_nonfinite_losses_are_skipped_logged_and_stop_with_an_intact_checkpoint(root, tmp_path, monkeypatch,
                                                                               program):
    from hf_mae import MAEForImageClassification

    out = tmp_path / program
    if program == "finetune":
        nan_after(monkeypatch, MAEForImageClassification, "forward", 4)  # epoch 1 (4 steps) is healthy
        argv = ("finetune", "--epochs", "3", "--max_nonfinite_steps", "3", "--logging_steps", "1")
    else:
        nan_after(monkeypatch, ProbeHead, "forward", 4)
        argv = ("probe", "--epochs", "3", "--max_nonfinite_steps", "3", "--eval_every", "0", "--logging_steps", "1",
                *(("--augment",) if program == "probe_augment" else ()))
    with pytest.raises(NonFiniteLossError, match="3 optimizer steps in a row had a non-finite loss") as error:
        run(argv[0], root, out, *argv[1:])
    if program == "probe":
        assert "writes no checkpoint" in str(error.value)
        return
    assert "checkpoint-4" in str(error.value)  # the epoch-1 checkpoint, written from finite weights
    for checkpoint in (out / "checkpoints").iterdir():
        for value in load_file(checkpoint / "model.safetensors").values():
            assert torch.isfinite(value).all()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "nonfinite_steps" in r and "loss" in r]
    assert None in losses and 0.0 not in losses  # non-finite is logged as such, never as 0.0
    assert records[-1]["event"] == "stopped" and records[-1]["nonfinite_steps"] == 3
    assert not (out / "results.json").exists()


# --- checkpoints ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated_weights", "missing_optimizer", "truncated_state"])
def test_a_damaged_newest_checkpoint_is_named_and_the_one_before_is_used(root, tmp_path, capsys, damage):
    out = tmp_path / "run"
    run("pretrain", root, out, "--epochs", "3", "--checkpoints_total_limit", "3")
    newest = out / "checkpoints" / "checkpoint-12"
    if damage == "truncated_weights":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "missing_optimizer":
        (newest / "optimizer.bin").unlink()
    else:
        (newest / "training_state.json").write_text('{"update_step": 1')
    results = run("pretrain", root, out, "--epochs", "3", "--resume_from_checkpoint", "latest")
    assert results["resumed_from"].endswith("checkpoint-8") and results["optimizer_steps"] == 12
    assert "checkpoint-12 is damaged" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="checkpoint-12.*newest intact checkpoint is .*checkpoint-"):
        if damage != "truncated_weights":  # the resumed run rewrote checkpoint-12: damage it again
            (out / "checkpoints" / "checkpoint-12" / "optimizer.bin").unlink()
        else:
            (out / "checkpoints" / "checkpoint-12" / "model.safetensors").write_bytes(b"junk")
        run("pretrain", root, out, "--epochs", "3", "--resume_from_checkpoint",
            str(out / "checkpoints" / "checkpoint-12"))


# --- flags ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--logging_steps", "0"), ("--gradient_accumulation_steps", "0"),
                                         ("--max_nonfinite_steps", "0"), ("--max_train_steps", "0"),
                                         ("--crop_min_scale", "2"), ("--checkpointing_steps", "0"),
                                         ("--blr", "nan"), ("--mask_ratio", "1"), ("--epochs", "-1")])
def test_bad_values_are_refused_at_parse_time_naming_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit):
        pretraining.parse_args([flag, value])
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("program", ["pretrain", "probe", "finetune"])
def test_transformers_flag_names_are_aliases(program, root, capsys):
    module = PROGRAMS[program]
    hf = module.parse_args(["--num_train_epochs", "3", "--per_device_train_batch_size", "5", "--learning_rate",
                            "0.1", "--validation_dir", "v", "--train_dir", "t", "--image_column_name", "img",
                            "--label_column_name", "y", "--save_total_limit", "4", "--logging_steps", "7",
                            "--per_device_eval_batch_size", "9", "--seed", "3"])
    assert (hf.epochs, hf.per_device_batch_size, hf.lr, hf.eval_dir, hf.image_column, hf.label_column) == (
        3, 5, 0.1, "v", "img", "y")
    assert (hf.checkpoints_total_limit, hf.logging_steps, hf.eval_batch_size, hf.seed) == (4, 7, 9, 3)
    assert module.parse_args(["--base_learning_rate", "0.2"]).blr == 0.2
    with pytest.raises(SystemExit):
        module.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--num_train_epochs" in shown and "--per_device_train_batch_size" in shown


def test_every_flag_has_help_text():
    for module in PROGRAMS.values():
        for action in module.build_parser()._actions:
            assert action.help, f"{module.__name__}: {action.option_strings} has no help"


def test_warmup_as_long_as_the_run_warns_and_the_peak_lr_is_recorded(root, tmp_path):
    with pytest.warns(WarmupWarning, match="never reaches its peak"):
        plan_schedule(4, 1, epochs=2, warmup_epochs=2)
    with pytest.warns(WarmupWarning):
        results = run("pretrain", root, tmp_path / "warm", "--warmup_epochs", "5", "--lr", "0.01")
    assert results["peak_lr"] < 0.01 and results["warmup_steps"] == 20
    assert plan_schedule(8, 2, epochs=10, warmup_ratio=0.1).warmup_updates == 4


# --- data ---------------------------------------------------------------------------------------------------------


def test_a_single_dataset_saved_to_disk_loads(root, tmp_path):
    import datasets

    from hf_mae.data.sources import load_image_datasets

    images = [two_class_picture(i % 2, i, size=16) for i in range(8)]
    datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(8)]}).save_to_disk(tmp_path / "one")
    train, held_out, info = load_image_datasets(dataset_name=str(tmp_path / "one"))
    assert len(train) == 8 and held_out is None and "save_to_disk" in info.source
    results = run("pretrain", root, tmp_path / "out", data=["--dataset_name", str(tmp_path / "one")])
    assert math.isfinite(results["final_loss"])


@pytest.mark.parametrize("flag", ["--train_dir", "--data_files"])
def test_missing_or_empty_data_is_an_error_naming_the_path(root, tmp_path, flag):
    with pytest.raises(DatasetLoadError, match=f"{flag} .*missing_data"):  # noqa: PT012
        missing = tmp_path / ("missing_data" if flag == "--train_dir" else "missing_data.parquet")
        run("pretrain", root, tmp_path / "a", data=[flag, str(missing)])
    if flag == "--train_dir":
        (tmp_path / "empty_data").mkdir()
        with pytest.raises(DatasetLoadError, match="empty_data holds no files"):
            run("pretrain", root, tmp_path / "b", data=[flag, str(tmp_path / "empty_data")])


def test_a_processor_that_disagrees_with_its_model_is_named(root, tmp_path):
    from hf_mae import MAEImageProcessor

    folder = save_tiny_checkpoint(tmp_path / "mismatch", seed=0)
    MAEImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)  # 32 px, the model takes 16
    with pytest.raises(ValueError, match="mismatch.*processor outputs 32x32 pixels, the model takes 16x16"):
        run("knn", root, tmp_path / "knn", "--model", str(folder))
    with pytest.raises(ValueError, match="processor outputs 32x32 pixels, the model takes 16x16"):
        run("pretrain", root, tmp_path / "pre", "--init_from", str(folder))


def test_a_folder_another_live_run_is_writing_is_refused(root, tmp_path):
    import socket
    import subprocess
    import sys

    out = tmp_path / "busy"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / "hf_mae_run.json").write_text(json.dumps({"program": "kNN evaluation", "status": "running",
                                                         "pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(OutputDirError, match="still going"):
            run("knn", root, out)
    finally:
        other.kill()
        other.wait()
    assert run("knn", root, out)["num_eval"] == 16  # that run is gone and wrote no checkpoint: start afresh
