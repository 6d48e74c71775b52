"""Do an encoder's patch tokens know which digit they belong to? A linear probe on single patch tokens.

For each stroke patch (a 4x4 patch holding a pixel >= 128) the probe predicts its digit from the encoder's last-layer
token of that patch, trained on patches of the first 2,000 training digits and scored on those of 500 held-out ones.
Three layouts: each digit alone on its 28x28 image (the 7x7 grid the embedded encoder is pretrained on), the same
digit shifted by up to 8 px on that 28x28 image (what a 28-px crop of a digit scene shows) and the same digit at a
random place on a 56x56 canvas (the 14x14 grid of a whole digit scene). A pretrained encoder against its
random-init twin: what dense transfer (scripts/segment.py) can build on.

    python benchmarks/patch_probe.py --model outputs/pretrain/encoder
"""

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from hf_mae import MAEConfig, MAEImageProcessor, MAEModel
from hf_mae.data.sources import load_embedded_default


def on_canvas(images: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Each (28, 28) image pasted at a random place of a blank (size, size) canvas."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), size, size), dtype=np.uint8)
    height, width = images.shape[1:]
    for i, image in enumerate(images):
        top, left = rng.integers(0, size - height + 1), rng.integers(0, size - width + 1)
        out[i, top:top + height, left:left + width] = image
    return out


def shifted(images: np.ndarray, max_shift: int, seed: int) -> np.ndarray:
    """Each (28, 28) image moved by a random (dy, dx) in [-max_shift, max_shift], the uncovered border blank."""
    rng = np.random.default_rng(seed)
    height, width = images.shape[1:]
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    out = np.empty_like(images)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * max_shift + 1, (len(images), 2))):
        out[i] = padded[i, dy:dy + height, dx:dx + width]
    return out


@torch.no_grad()
def patch_tokens(model, images: np.ndarray, mean: float, std: float, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N * patches, dim), stroke mask (N * patches,)) of the last layer, CLS left out."""
    pixels = ((torch.from_numpy(images).float() / 255 - mean) / std)[:, None]
    tokens = torch.cat([model(pixel_values=pixels[i:i + 200]).last_hidden_state[:, 1:]
                        for i in range(0, len(pixels), 200)])
    n, size = len(images), images.shape[1] // patch
    blocks = torch.from_numpy(images).reshape(n, size, patch, size, patch).permute(0, 1, 3, 2, 4)
    stroke = (blocks.reshape(n, size * size, -1) >= 128).any(-1)
    return tokens.reshape(-1, tokens.shape[-1]), stroke.reshape(-1)


def probe_accuracy(train: tuple, test: tuple, steps: int = 300) -> float:
    """Top-1 (percent) of a linear softmax probe on standardised tokens (Adam, full batch)."""
    (x, y), (xt, yt) = train, test
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mean) / std, (xt - mean) / std
    weight = torch.zeros(x.shape[1], 10, requires_grad=True)
    bias = torch.zeros(10, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(x @ weight + bias, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return 100 * ((xt @ weight + bias).argmax(1) == yt).float().mean().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/pretrain/encoder", help="an hf_mae encoder folder")
    parser.add_argument("--canvas", type=int, default=56, help="canvas size for the last layout (56)")
    parser.add_argument("--max_shift", type=int, default=8, help="largest shift of the middle layout, px (8)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    digits = load_embedded_default()
    train, held = digits["train"].with_format("numpy"), digits["validation"].with_format("numpy")
    images = {"train": np.stack(train["image"])[:2000], "held": np.stack(held["image"])[:500]}
    labels = {"train": np.asarray(train["label"])[:2000], "held": np.asarray(held["label"])[:500]}
    processor = MAEImageProcessor.from_pretrained(args.model)
    mean, std = processor.image_mean[0], processor.image_std[0]
    pretrained = MAEModel.from_pretrained(args.model).eval()
    random_init = MAEModel(MAEConfig.from_pretrained(args.model)).eval()
    patch = pretrained.config.patch_size
    print("| layout | pretrained | random init |\n|---|---|---|")
    layouts = {"28x28, digit alone (7x7 grid)": lambda x, seed: x,
               f"28x28, digit shifted by up to {args.max_shift} px": lambda x, seed: shifted(x, args.max_shift, seed),
               f"{args.canvas}x{args.canvas}, digit anywhere": lambda x, seed: on_canvas(x, args.canvas, seed)}
    for layout, show in layouts.items():
        scores = []
        for model in (pretrained, random_init):
            data = []
            for split, seed in (("train", 0), ("held", 1)):
                shown = show(images[split], seed)
                tokens, stroke = patch_tokens(model, shown, mean, std, patch)
                per_patch = torch.from_numpy(labels[split]).repeat_interleave(len(stroke) // len(shown))
                data.append((tokens[stroke], per_patch[stroke].long()))
            scores.append(probe_accuracy(*data))
        print(f"| {layout} | {scores[0]:.1f} | {scores[1]:.1f} |")


if __name__ == "__main__":
    main()
