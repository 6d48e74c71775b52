"""Pictures people would rather look at than numbers: reconstruction grids and the loss curve."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

GRID_COLUMNS = ("original", "masked", "reconstruction", "reconstruction_visible")


def reconstruction_grid(pictures: dict, path, min_cell: int = 112) -> Path:
    """Save a PNG with one row per image: original | masked | reconstruction | reconstruction with the
    visible patches pasted. `pictures` is `MAEImageProcessor.postprocess_reconstruction`'s output."""
    rows = []
    for i in range(len(pictures["original"])):
        cells = []
        for name in GRID_COLUMNS:
            array = (pictures[name][i].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
            array = array.astype(np.uint8)
            cells.append(array[..., 0] if array.shape[-1] == 1 else array[..., :3])
        rows.append(np.concatenate(cells, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    scale = max(1, min_cell // pictures["original"].shape[-2])  # upscale small (e.g. 28 px) images
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def loss_curve(log_path, path) -> Path | None:
    """Plot training loss (and lr) against optimizer step from `log.jsonl`; None when nothing was logged."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    records = [r for r in records if "loss" in r and "step" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(steps, [r["loss"] for r in records], color="tab:blue", label="loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("masked-patch MSE", color="tab:blue")
    lr_axis = loss_axis.twinx()
    lr_axis.plot(steps, [r["lr"] for r in records], color="tab:orange", alpha=0.6, label="lr")
    lr_axis.set_ylabel("learning rate", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


__all__ = ["reconstruction_grid", "loss_curve"]
