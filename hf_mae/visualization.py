"""Pictures people would rather look at than numbers: reconstruction grids and the loss curve."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_path

GRID_COLUMNS = ("original", "masked", "reconstruction", "reconstruction_visible")
COLUMN_TITLES = ("original", "masked", "reconstruction", "reconstruction\n+ visible patches")


def _labelled(grid: Image.Image, cell_width: int, title: str | None) -> Image.Image:
    """`grid` under a header: an optional title line, then one centred title per column."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(11, cell_width // 9))
    line = font.getbbox("Ag")[3] + 4
    title_lines = []
    for word in (title or "").split():  # wrap the title to the grid's width
        if title_lines and font.getlength(f"{title_lines[-1]} {word}") <= grid.width - 8:
            title_lines[-1] += f" {word}"
        else:
            title_lines.append(word)
    header = (2 * line + 4) + len(title_lines) * line + (2 if title_lines else 0)
    out = Image.new("RGB", (grid.width, grid.height + header), "white")
    out.paste(grid.convert("RGB"), (0, header))
    draw = ImageDraw.Draw(out)
    top = 2
    for text in title_lines:
        draw.text((4, top), text, fill="black", font=font)
        top += line
    top += 2 if title_lines else 0
    for i, text in enumerate(COLUMN_TITLES):
        draw.multiline_text((i * cell_width + cell_width // 2, top), text, fill="black", font=font, anchor="ma",
                            align="center")
    return out


def reconstruction_grid(pictures: dict, path, min_cell: int = 112, title: str | None = None) -> Path:
    """Save a PNG with one row per image under labelled columns: original | masked | reconstruction |
    reconstruction with the visible patches pasted. `pictures` is
    `MAEImageProcessor.postprocess_reconstruction`'s output; small images (e.g. 28 px digits) are upscaled
    to at least `min_cell` pixels; `title` (e.g. the epoch and the patch statistics used) goes on top."""
    rows = []
    for i in range(len(pictures["original"])):
        cells = []
        for name in GRID_COLUMNS:
            array = (pictures[name][i].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
            array = array.astype(np.uint8)
            cells.append(array[..., 0] if array.shape[-1] == 1 else array[..., :3])
        rows.append(np.concatenate(cells, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    cell = pictures["original"].shape[-1]
    scale = max(1, -(-min_cell // pictures["original"].shape[-2]))  # upscale small images
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # the temporary name has none
    with atomic_path(path) as tmp:
        _labelled(grid, cell * scale, title).save(tmp, format=image_format)
    return path


def loss_curve(log_path, path) -> Path | None:
    """Plot training loss (and lr) against optimizer step from `log.jsonl`, the end of the warmup marked;
    None when no finite loss was logged."""
    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    warmup = next((r.get("warmup_steps") for r in records if r.get("event") == "start"), None)
    records = [r for r in records if r.get("loss") is not None and "step" in r and "event" not in r]
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
    if warmup:
        loss_axis.axvline(warmup, color="grey", linestyle="--", linewidth=1)
        loss_axis.annotate("end of warmup", (warmup, 1), xycoords=("data", "axes fraction"), xytext=(4, -14),
                           textcoords="offset points", color="grey", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return Path(path)


__all__ = ["reconstruction_grid", "loss_curve"]
