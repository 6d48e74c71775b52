"""A run's results come from its durable history, a resume is the same run, and every failure ends in a sentence
with the run marked as it ended: kill points, a finished run resumed, changed flags, a full disk, interrupts."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import subprocess_timeout

from hf_mae.cli import pretrain
from hf_mae.training.checkpointing import checkpoint_problem
from hf_mae.training.output_dir import read_run_marker, take_output_dir
from hf_mae.training.run import ResumeMismatchError, recipe_differences

REPO = Path(__file__).resolve().parents[1]
MONITOR_KEYS = ("probe_top1_raw_pixels", "probe_top1_init", "knn_top1_init", "probe_top1_cls", "probe_top1_mean",
                "knn_top1")
SAME_NUMBERS = ("final_loss", "peak_lr", "optimizer_steps", "planned_steps", "stopped_early", "skipped_batches",
                "skipped_images", "nonfinite_steps")


def argv_for(root: Path, out: Path, *extra: str, monitor: bool = False) -> list[str]:
    """A tiny 2-epoch pretraining run on the shared two-class folders (32 images, 8 per step: 8 steps)."""
    return ["--model_config", str(root / "tiny.json"), "--train_dir", str(root / "train"),
            *(("--eval_dir", str(root / "val")) if monitor else ()), "--output_dir", str(out),
            "--per_device_batch_size", "8", "--epochs", "2", "--num_workers", "0", "--cpu_threads", "1",
            "--mixed_precision", "no", "--image_log_every", "0", "--warmup_epochs", "1", "--blr", "1e-3",
            "--monitor_every", "0" if monitor else "-1", "--monitor_max_train_samples", "32", *extra]


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def training_records(out: Path) -> dict[int, dict]:
    """The logging-window records by step; a step logged twice fails the test."""
    records = [r for r in log_of(out) if "loss" in r and "images_per_s" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {r["step"]: r for r in records}


def error_line(stderr: str) -> str:
    """The program's last words: one line starting with "error: " (progress bars may precede it)."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    return lines[-1]


def assert_same_results(got: dict, expected: dict, keys=SAME_NUMBERS) -> None:
    for key in keys:
        assert got[key] == pytest.approx(expected[key], rel=1e-5), key


# --- 1. results from durable history ------------------------------------------------------------------------------


def test_a_finished_run_resumed_keeps_its_results_and_its_log(two_class_root, tmp_path):
    out = tmp_path / "run"
    first = pretrain.cli(argv_for(two_class_root, out, "--logging_steps", "3", monitor=True))
    saved = json.loads((out / "results.json").read_text())
    log_before = training_records(out)
    again = pretrain.cli(argv_for(two_class_root, out, "--logging_steps", "3", "--resume_from_checkpoint", "latest",
                                  monitor=True))
    resaved = json.loads((out / "results.json").read_text())
    assert first["final_loss"] is not None and first["peak_lr"] > 0
    assert_same_results(resaved, saved, SAME_NUMBERS + MONITOR_KEYS)
    assert again["resumed_from"].endswith("checkpoint-8")
    state = json.loads((out / "checkpoints" / "checkpoint-8" / "training_state.json").read_text())
    assert 0 < state["wall_time_s"] < resaved["wall_time_s"]  # the durable segment's time, then this one's
    assert training_records(out) == log_before  # nothing was trained again, nothing logged twice
    events = [r.get("event") for r in log_of(out)]
    assert events.count("checkpoint") == 2 and events.count("resume") == 1
    assert read_run_marker(out)["status"] == "finished"


def _write_parquet(path: Path, count: int) -> Path:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import two_class_picture

    def png(i):
        buffer = io.BytesIO()
        two_class_picture(i % 2, i).save(buffer, format="PNG")
        return buffer.getvalue()

    pq.write_table(pa.table({"image": [{"bytes": png(i), "path": None} for i in range(count)],
                             "label": [i % 2 for i in range(count)]}), path)
    return path


def test_a_stream_that_runs_out_says_so_and_resumes_to_the_same_results(two_class_root, tmp_path, capsys):
    data = _write_parquet(tmp_path / "train.parquet", 24)  # 3 batches of 8, 10 steps planned
    out = tmp_path / "stream"
    argv = ["--model_config", str(two_class_root / "tiny.json"), "--data_files", str(data), "--streaming",
            "--max_train_steps", "10", "--output_dir", str(out), "--per_device_batch_size", "8", "--num_workers",
            "0", "--mixed_precision", "no", "--monitor_every", "-1", "--image_log_every", "0", "--warmup_steps", "1"]
    results = pretrain.cli(argv)
    shown = capsys.readouterr().out
    assert results["stopped_early"] is True and results["optimizer_steps"] == 3 and results["planned_steps"] == 10
    assert "stopped early: 3 of 10 planned optimizer steps" in shown and results["final_loss"] is not None
    assert any(r.get("event") == "stopped_early" for r in log_of(out))
    resumed = pretrain.cli([*argv, "--resume_from_checkpoint", "latest"])
    assert resumed["resumed_from"].endswith("checkpoint-3")
    assert_same_results(json.loads((out / "results.json").read_text()), results)


def _script(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "scripts/pretrain.py", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for(out: Path, condition, proc: subprocess.Popen) -> None:
    deadline = time.time() + subprocess_timeout(120)
    while time.time() < deadline and proc.poll() is None:
        try:
            if condition(log_of(out)):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"the run never reached the kill point (exit {proc.poll()})")


@pytest.mark.slow
def test_killed_at_several_points_and_resumed_it_reports_the_uninterrupted_numbers(two_class_root, tmp_path):
    """SIGKILL after a logging window, right after a checkpoint, and in the second epoch; each resumed run's log
    holds every step once with the uninterrupted run's losses, and its results are the uninterrupted run's."""
    extra = ("--per_device_batch_size", "2", "--logging_steps", "3", "--checkpointing_steps", "5")  # 32 steps
    reference = pretrain.cli(argv_for(two_class_root, tmp_path / "reference", *extra))
    expected_log = training_records(tmp_path / "reference")
    kill_points = {"after a logging window": lambda log: any(r.get("step") == 6 and "loss" in r for r in log),
                   "after a checkpoint": lambda log: any(r.get("event") == "checkpoint" for r in log),
                   "in the second epoch": lambda log: any(r.get("step", 0) >= 19 for r in log)}
    for name, reached in kill_points.items():
        out = tmp_path / name.replace(" ", "_")
        argv = argv_for(two_class_root, out, *extra)
        proc = _script(*argv)
        _wait_for(out, reached, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=subprocess_timeout(60))
        assert not (out / "results.json").exists(), f"{name}: the run ended before it was killed"
        resumed = _script(*argv, "--resume_from_checkpoint", "latest")
        output, _ = resumed.communicate(timeout=subprocess_timeout(300))
        assert resumed.returncode == 0, output[-3000:]
        results = json.loads((out / "results.json").read_text())
        assert_same_results(results, reference)
        got = training_records(out)
        assert sorted(got) == sorted(expected_log), name
        for step, record in expected_log.items():
            assert got[step]["loss"] == pytest.approx(record["loss"], rel=1e-5), (name, step)
            assert got[step]["lr"] == pytest.approx(record["lr"], rel=1e-6), (name, step)
        segments = [r for r in log_of(out) if r.get("event") == "resume"]
        assert len(segments) == 1 and results["wall_time_s"] > 0


# --- 2. a resume is the same run --------------------------------------------------------------------------------


def test_a_resume_with_other_settings_is_refused_listing_them_and_accepted_on_purpose(two_class_root, tmp_path,
                                                                                     capsys):
    out = tmp_path / "run"
    argv = argv_for(two_class_root, out, "--epochs", "1", "--checkpointing_steps", "2")
    pretrain.cli(argv)
    args_before = (out / "training_args.json").read_text()
    other_data = tmp_path / "other_train"
    other_data.symlink_to(two_class_root / "val")
    for changed in (["--mask_ratio", "0.5"], ["--lr", "0.01"], ["--train_dir", str(other_data)],
                    ["--epochs", "2", "--seed", "3"]):
        with pytest.raises(SystemExit) as stopped:
            pretrain.cli([*argv, *changed, "--resume_from_checkpoint", "latest"])
        error = error_line(capsys.readouterr().err)
        assert stopped.value.code == 1 and "--allow_changed_resume" in error
        for flag in changed[::2]:
            assert f"{flag[2:]}: " in error, (flag, error)
        assert (out / "training_args.json").read_text() == args_before  # the saved settings are untouched
        assert read_run_marker(out)["status"] == "finished"  # a refusal does not touch the finished run
    with pytest.raises(ResumeMismatchError, match=r"mask_ratio: None -> 0.5"):  # main raises it; the CLI words it
        pretrain.main(pretrain.parse_args([*argv, "--mask_ratio", "0.5", "--resume_from_checkpoint", "latest"]))
    # cosmetic flags may change; a spelling of the same path is the same data
    same = pretrain.cli([*argv, "--logging_steps", "1", "--num_workers", "1", "--train_dir",
                         str(two_class_root / "train") + "/", "--resume_from_checkpoint", "latest"])
    assert same["optimizer_steps"] == 4
    accepted = pretrain.cli([*argv, "--epochs", "2", "--allow_changed_resume", "--resume_from_checkpoint", "latest"])
    assert accepted["optimizer_steps"] == 8 and "resuming with changed settings" in capsys.readouterr().out
    resume_records = [r for r in log_of(out) if r.get("event") == "resume"]
    assert resume_records[-1]["changed_flags"] == {"epochs": [1, 2]}
    state = json.loads((out / "checkpoints" / "checkpoint-8" / "training_state.json").read_text())
    assert state["recipe"]["epochs"] == 2 and state["changed_flags"] == {"epochs": [1, 2]}


def test_recipe_differences_name_each_setting_and_treat_one_path_alike(tmp_path):
    (tmp_path / "data").mkdir()
    saved = {"lr": 0.1, "train_dir": str(tmp_path / "data"), "mask_ratio": 0.75, "data_files": ["a", "b"]}
    now = {"lr": 0.2, "train_dir": str(tmp_path / "." / "data"), "data_files": ("a", "b"), "seed": 1}
    assert recipe_differences(saved, now) == {"lr": [0.1, 0.2], "mask_ratio": [0.75, None], "seed": [None, 1]}


# --- 3. every failure ends in a sentence, and the run is marked -----------------------------------------------------


@pytest.mark.parametrize("where", ["state file", "model weights"])
def test_a_full_disk_mid_checkpoint_leaves_no_partial_folder_and_the_run_resumes(two_class_root, tmp_path,
                                                                                monkeypatch, capsys, where):
    import hf_mae.training.checkpointing as checkpointing
    from hf_mae.models.mae.modeling_mae import MAEForPreTraining

    out = tmp_path / "full_disk"
    argv = argv_for(two_class_root, out, "--checkpointing_steps", "3")
    if where == "state file":
        real = checkpointing.write_json

        def write_json(path, data, **kwargs):
            if data.get("update_step") == 6:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, data, **kwargs)

        monkeypatch.setattr(checkpointing, "write_json", write_json)
    else:
        real = MAEForPreTraining.save_pretrained

        def save_pretrained(self, folder, *args, **kwargs):
            if ".checkpoint-6." in str(folder):  # what safetensors raises on a full disk
                raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                   '"No space left on device" })')
            return real(self, folder, *args, **kwargs)

        monkeypatch.setattr(MAEForPreTraining, "save_pretrained", save_pretrained)
    with pytest.raises(SystemExit) as stopped:
        pretrain.cli(argv)
    error = error_line(capsys.readouterr().err)
    assert stopped.value.code == 1 and error.startswith("error: could not write checkpoint-6")
    assert "No space left on device" in error and "free some space" in error and "checkpoint-4" in error, error
    assert "Traceback" not in error and "--resume_from_checkpoint latest" in error
    assert not list((out / "checkpoints").glob(".*")), "a partial checkpoint was left behind"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-4"]
    assert checkpoint_problem(out / "checkpoints" / "checkpoint-4") is None
    marker = read_run_marker(out)
    assert marker["status"] == "failed" and "No space left on device" in marker["message"]
    monkeypatch.undo()
    results = pretrain.cli([*argv, "--resume_from_checkpoint", "latest"])
    assert results["optimizer_steps"] == 8 and results["resumed_from"].endswith("checkpoint-4")
    assert read_run_marker(out)["status"] == "finished" and "message" not in read_run_marker(out)


def test_an_interrupt_marks_the_run_and_the_resume_continues_it(two_class_root, tmp_path, monkeypatch, capsys):
    from hf_mae.models.mae.modeling_mae import MAEForPreTraining

    real, calls = MAEForPreTraining.forward, {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MAEForPreTraining, "forward", interrupted)
    out = tmp_path / "interrupted"
    argv = argv_for(two_class_root, out)
    with pytest.raises(SystemExit) as stopped:
        pretrain.cli(argv)
    assert stopped.value.code == 130 and "interrupted (Ctrl-C)" in error_line(capsys.readouterr().err)
    assert read_run_marker(out)["status"] == "interrupted"
    monkeypatch.undo()
    with pytest.raises(SystemExit):  # not resumed by accident: the message says how it ended
        pretrain.cli(argv)
    assert "interrupted pretraining run (Ctrl-C)" in capsys.readouterr().err  # the refusal names how the run ended
    assert pretrain.cli([*argv, "--resume_from_checkpoint", "latest"])["optimizer_steps"] == 8


@pytest.mark.slow
def test_sigterm_ends_in_a_sentence_and_marks_the_run(two_class_root, tmp_path):
    out = tmp_path / "terminated"
    proc = _script(*argv_for(two_class_root, out, "--per_device_batch_size", "2", "--logging_steps", "1"))
    _wait_for(out, lambda log: any(r.get("step", 0) >= 2 for r in log), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=subprocess_timeout(60))
    assert proc.returncode == 130 and "error: stopped by SIGTERM" in output and "Traceback" not in output
    assert read_run_marker(out)["status"] == "interrupted"


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.bin"), "/data/x.bin: No space left on device; free"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/y"), "/data/y: Permission denied; check the perm"),
    (EOFError("Ran out of input"), "EOFError: Ran out of input (HF_MAE_TRACEBACK=1"),
    (RuntimeError("PytorchStreamReader failed reading zip archive\nmore"), "RuntimeError: PytorchStreamReader"),
])
def test_every_failure_is_one_line_and_marks_the_folder_the_program_took(tmp_path, capsys, monkeypatch, error,
                                                                       expected):
    from hf_mae.cli.arguments import run_cli

    def main(_):
        take_output_dir(tmp_path / "out", "export", overwrite=False)
        raise error

    monkeypatch.delenv("HF_MAE_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stopped:
        run_cli(main, None)
    shown = capsys.readouterr().err
    assert stopped.value.code == 1 and shown.startswith(f"error: {expected}") and shown.count("\n") == 1, shown
    marker = read_run_marker(tmp_path / "out")
    assert marker["status"] == "failed" and expected.split(" (")[0][:20] in marker["message"]
    monkeypatch.setenv("HF_MAE_TRACEBACK", "1")
    with pytest.raises(type(error)):  # the traceback, on request
        run_cli(main, None)
