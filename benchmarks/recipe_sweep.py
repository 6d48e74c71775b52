"""Sweep pretraining recipes on the embedded data, choosing on a validation split carved from the training digits.

Each point pretrains with `scripts/pretrain.py`'s defaults plus its own flags (the monitor off, so that the
1,000 held-out digits are never looked at), then scores the monitor's linear probe (CLS and mean pooling)
by 4-fold cross-validation over the 4,000 training digits. Wall time is the pretraining
program's own. Held-out numbers are measured afterwards for the chosen point only (`scripts/pretrain.py`).

    python benchmarks/recipe_sweep.py --out outputs/sweep --point base= --point crop05="--crop_min_scale 0.5"
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from hf_mae import MAEModel
from hf_mae.cli.recipes import RECIPE_DEFAULTS
from hf_mae.data.sources import load_image_datasets
from hf_mae.evaluation.features import Features, eval_dataloader, extract_pooled_features
from hf_mae.evaluation.probe import fit_and_score_probe
from hf_mae.models.mae.image_processing_mae import MAEImageProcessor

PRETRAIN = Path(__file__).resolve().parents[1] / "scripts" / "pretrain.py"
FOLDS = 4  # validation: 4 folds of 1,000 training digits, each scored by a probe trained on the other 3,000


def validation_probe(encoder_dir: Path, seed: int = 0) -> dict:
    """Linear probe top-1 (CLS, mean), 4-fold cross-validated over the 4,000 training digits.

    Every training digit is scored once by a probe that did not train on it (4,000 scores per pooling: the
    binomial noise is half that of one 500-digit split); the 1,000 held-out digits are never read.
    """
    train, _, _ = load_image_datasets()
    encoder = MAEModel.from_pretrained(encoder_dir).eval()
    processor = MAEImageProcessor.from_pretrained(encoder_dir)
    features = extract_pooled_features(Accelerator(cpu=True), encoder, eval_dataloader(train, processor, 256),
                                       ("cls", "mean"))
    out = {}
    for pooling in ("cls", "mean"):
        x, y = features[pooling].features, features[pooling].labels
        correct = 0.0
        for fold in range(FOLDS):
            held = torch.zeros(len(y), dtype=torch.bool)
            held[fold * len(y) // FOLDS:(fold + 1) * len(y) // FOLDS] = True
            top1 = fit_and_score_probe(Features(x[~held], y[~held], 0), Features(x[held], y[held], 0), 10,
                                       RECIPE_DEFAULTS["linear_probe"]["embedded"], seed)
            correct += top1 * int(held.sum()) / 100
        out[f"val_probe_top1_{pooling}"] = round(100 * correct / len(y), 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/sweep", help="folder for the runs and sweep.jsonl")
    parser.add_argument("--point", action="append", required=True,
                        help="NAME=FLAGS: a point of the sweep (pretraining flags on top of the defaults)")
    parser.add_argument("--reuse", action="store_true",
                        help="score points whose run already finished (results.json) without pretraining again")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for point in args.point:
        name, _, flags = point.partition("=")
        run_dir = out / name
        argv = ["--output_dir", str(run_dir), "--monitor_every", "-1", "--image_log_every", "0",
                "--overwrite_output_dir", *shlex.split(flags)]
        if not (args.reuse and (run_dir / "results.json").is_file()):  # each run in a process of its own
            subprocess.run([sys.executable, str(PRETRAIN), *argv], check=True)
        results = json.loads((run_dir / "results.json").read_text())
        record = {"point": name, "flags": flags, "wall_s": results["wall_time_s"],
                  "final_loss": results["final_loss"], **validation_probe(run_dir / "encoder")}
        print(json.dumps(record), flush=True)
        with (out / "sweep.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
