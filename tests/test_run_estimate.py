"""The run's time estimate: after the banner, the third logging window's images/s says how long the training
steps take on this machine (hf_mae/training/run.py, RunLog + print_banner)."""

import json
from types import SimpleNamespace

from hf_mae.training.run import ESTIMATE_AFTER_WINDOWS, RunLog, print_banner


def _accelerator(printed: list):
    """What RunLog and print_banner read of an Accelerator: one process, no distribution."""
    return SimpleNamespace(is_main_process=True, log=lambda *a, **k: None, print=printed.append,
                           distributed_type="DistributedType.NO", num_processes=1, process_index=0)


def test_estimate_printed_once_after_the_warm_up(tmp_path, capsys):
    printed = []
    run_log = RunLog(_accelerator(printed), tmp_path / "log.jsonl")
    print_banner(run_log.accelerator, run_log, "pretraining", {"optimizer_steps": 4688, "effective_batch_size": 64})
    assert printed and printed[0].startswith("hf_mae pretraining")
    rates = [50.0, 300.0, 464.0, 470.0, 480.0]  # the first windows hold the warm-up
    for window, rate in enumerate(rates, start=1):
        run_log.write({"step": 10 * window, "loss": 1.0, "images_per_s": rate}, step=10 * window)
        if window < ESTIMATE_AFTER_WINDOWS:
            assert "speed after" not in capsys.readouterr().out
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("speed after")]
    # 4688 steps x 64 images / 464 images/s = 646.6 s; 30 steps done, 4658 left = 642.5 s
    assert lines == ["speed after 30 of 4688 steps: 464 images/s on this machine -> the training steps take about "
                     "10.8 min in all (10.7 min left), plus the held-out evaluations"]
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0]["event"] == "start" and len(records) == 1 + len(rates)  # the log itself is unchanged


def test_no_estimate_without_a_known_length(tmp_path, capsys):
    run_log = RunLog(_accelerator([]), tmp_path / "log.jsonl")
    print_banner(run_log.accelerator, run_log, "kNN evaluation", {"k": 20})
    for window in range(1, 5):
        run_log.write({"step": 10 * window, "images_per_s": 100.0}, step=10 * window)
    assert "speed after" not in capsys.readouterr().out
