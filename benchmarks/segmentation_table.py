"""MAE encoder vs random init on the digit scenes: `scripts/segment.py` over seeds, a markdown table of mIoU.

Each run is the program itself (its defaults plus `--flags`), once on the pretrained encoder and once with
`--random_init`, for every seed. With `--flags "--validation_fraction 0.2"` the runs score a validation split
carved from the training scenes (recipe search); without it, the 500 held-out scenes (the reported table).

    python benchmarks/segmentation_table.py --model outputs/pretrain --out outputs/segment_table --seeds 0 1 2
    python benchmarks/segmentation_table.py --model outputs/pretrain --out outputs/segment_search/lr3e-3 \\
        --seeds 0 --flags "--validation_fraction 0.2 --lr 3e-3"
"""

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

SEGMENT = Path(__file__).resolve().parents[1] / "scripts" / "segment.py"


def run_point(model: str, out: Path, init: str, seed: int, flags: list[str]) -> dict:
    """One `scripts/segment.py` run (reused when its results.json exists); its results plus the point."""
    folder = out / f"{init}_seed{seed}"
    if not (folder / "results.json").is_file():
        command = [sys.executable, str(SEGMENT), "--model", model, "--output_dir", str(folder), "--seed", str(seed),
                   *(["--random_init"] if init == "random" else []), *flags]
        print("+", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    results = json.loads((folder / "results.json").read_text())
    return {"init": init, "seed": seed, "flags": shlex.join(flags), "mean_iou": results["mean_iou"],
            "pixel_accuracy": results["pixel_accuracy"], "wall_time_s": results.get("wall_time_s"),
            "eval_split": results.get("eval_split")}


def summary(rows: list[dict]) -> str:
    """A markdown table: per init, each seed's mIoU, their mean and standard deviation, pixel accuracy."""
    lines = ["| init | mIoU per seed | mIoU mean +- sd | pixel acc. mean | wall time / run |",
             "|---|---|---|---|---|"]
    for init in ("pretrained", "random"):
        mine = [r for r in rows if r["init"] == init]
        if not mine:
            continue
        ious = [r["mean_iou"] for r in mine]
        sd = statistics.stdev(ious) if len(ious) > 1 else 0.0
        wall = statistics.mean(r["wall_time_s"] or 0 for r in mine)
        lines.append(f"| {init} | {' / '.join(f'{v:.2f}' for v in ious)} | {statistics.mean(ious):.2f} +- {sd:.2f} "
                     f"| {statistics.mean(r['pixel_accuracy'] for r in mine):.2f} | {wall:.0f} s |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/pretrain", help="the pretraining folder (default outputs/pretrain)")
    parser.add_argument("--out", default="outputs/segment_table", help="folder for the runs and table.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--flags", default="", help="extra scripts/segment.py flags for every run (one string)")
    parser.add_argument("--inits", nargs="+", choices=("pretrained", "random"), default=["pretrained", "random"],
                        help="which encoders to run (default both)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    flags = shlex.split(args.flags)
    rows = [run_point(args.model, out, init, seed, flags) for seed in args.seeds for init in args.inits]
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = summary(rows)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
