"""Sweep pretraining recipes on the embedded data, choosing on a validation split carved from the training digits.

Each point pretrains with `scripts/pretrain.py`'s defaults plus its own flags (the monitor off, so that the
1,000 held-out digits are never looked at), then trains the monitor's linear probe (CLS and mean pooling) on
the first 3,500 of the 4,000 training digits and scores it on the last 500. Wall time is the pretraining
program's own. Held-out numbers are measured afterwards for the chosen point only (`scripts/pretrain.py`).

    python benchmarks/recipe_sweep.py --out outputs/sweep --point base= --point crop05="--crop_min_scale 0.5"
"""

import argparse
import json
import shlex
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from hf_mae import MAEModel
from hf_mae.data import load_image_datasets
from hf_mae.evaluation import (
    PROBE_EMBEDDED_DEFAULTS,
    eval_dataloader,
    evaluate_probe,
    extract_pooled_features,
    new_probe_head,
    train_probe_head,
)
from hf_mae.image_processing_mae import MAEImageProcessor
from hf_mae.optim import scaled_lr
from hf_mae.pretraining import main as pretrain
from hf_mae.pretraining import parse_args

VALIDATION = 500  # the last 500 of the 4,000 training digits


def validation_probe(encoder_dir: Path, seed: int = 0) -> dict:
    """Linear probe top-1 (CLS, mean) trained on training digits [0, 3500), scored on [3500, 4000)."""
    train, _, _ = load_image_datasets()
    encoder = MAEModel.from_pretrained(encoder_dir).eval()
    processor = MAEImageProcessor.from_pretrained(encoder_dir)
    accelerator = Accelerator(cpu=True)
    parts = [train.select(range(len(train) - VALIDATION)), train.select(range(len(train) - VALIDATION, len(train)))]
    fit, score = [extract_pooled_features(accelerator, encoder, eval_dataloader(d, processor, 256), ("cls", "mean"))
                  for d in parts]
    settings = PROBE_EMBEDDED_DEFAULTS
    out = {}
    for pooling in ("cls", "mean"):
        torch.manual_seed(seed)
        head = new_probe_head(fit[pooling].features.shape[1], 10)
        batch = settings["per_device_batch_size"]
        train_probe_head(head, fit[pooling].features, fit[pooling].labels, epochs=settings["epochs"],
                         batch_size=batch, lr=scaled_lr(settings["blr"], batch),
                         warmup_epochs=settings["warmup_epochs"], seed=seed, disable_progress=True)
        out[f"val_probe_top1_{pooling}"] = evaluate_probe(head, score[pooling].features, score[pooling].labels)["top1"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/sweep", help="folder for the runs and sweep.jsonl")
    parser.add_argument("--point", action="append", required=True,
                        help="NAME=FLAGS: a point of the sweep (pretraining flags on top of the defaults)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for point in args.point:
        name, _, flags = point.partition("=")
        run_dir = out / name
        argv = ["--output_dir", str(run_dir), "--monitor_every", "-1", "--image_log_every", "0",
                "--overwrite_output_dir", *shlex.split(flags)]
        start = time.time()
        results = pretrain(parse_args(argv))
        record = {"point": name, "flags": flags, "wall_s": round(time.time() - start, 1),
                  "final_loss": results["final_loss"], **validation_probe(run_dir / "encoder")}
        print(json.dumps(record), flush=True)
        with (out / "sweep.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
