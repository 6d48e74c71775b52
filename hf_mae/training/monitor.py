"""What a pretraining run shows while it trains: reconstruction grids of fixed held-out images and masks, and
what the encoder's frozen features are worth on the held-out split (linear probe and kNN)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..evaluation.features import eval_dataloader, extract_pooled_features
from ..evaluation.knn import knn_accuracy
from ..evaluation.probe import fit_and_score_probe
from ..visualization import reconstruction_grid
from .distributed import FullModel

_STATISTICS_NOTE = {"target": "norm-pix undone with each masked patch's own statistics (they leak into the picture)",
                    "visible": "norm-pix undone with the visible patches' statistics (no leak)", None: "pixel targets"}


@dataclass(frozen=True)
class MonitorConfig:
    """When the monitor draws and measures, on how much data, and with which probe recipe."""

    probe_settings: Mapping = field(default_factory=dict)  # epochs, blr, warmup_epochs, per_device_batch_size
    every: int = 0  # probe + kNN every N epochs; 0: at the start and the end only; -1: off
    image_log_every: int = 25  # reconstruction grid every N epochs; 0: only at the end
    recon_statistics: str = "target"  # "target" or "visible": the statistics that undo norm-pix in pictures
    max_train_samples: int = 20000
    max_eval_samples: int = 10000
    eval_batch_size: int = 256
    strict_images: bool = False
    seed: int = 0


@torch.no_grad()
def log_reconstructions(model, processor, pixels, noise, path, statistics: str) -> None:
    """A reconstruction grid of `pixels` under the masks of `noise`, written to `path`."""
    model.eval()
    out = model(pixels, noise=noise)
    statistics = statistics if model.config.norm_pix_loss else None
    pictures = processor.postprocess_reconstruction(out.logits, pixels, out.mask,
                                                    norm_pix_loss=model.config.norm_pix_loss, statistics=statistics)
    reconstruction_grid(pictures, path, title=f"{Path(path).stem}: {_STATISTICS_NOTE[statistics]}")
    model.train()


class Monitor:
    """Reconstruction grids of fixed held-out images and masks, and what the encoder's frozen features are worth
    on the held-out split. The measure MAE is built for is a linear probe (cached features, CLS and mean pooling;
    a fresh head each time, seeded); kNN is the second line. Raw pixels and the random-init encoder are measured
    the same way at the start of a fresh run.

    Every process calls `measure`, `epoch_end` and `end`: under FSDP they first gather the full weights (a
    collective) and measure or draw with an unsharded copy."""

    def __init__(self, accelerator, config: MonitorConfig, model, processor, train_data, eval_data, info):
        self.accelerator, self.config, self.model, self.processor = accelerator, config, model, processor
        self.full_model = FullModel(model)  # the model itself unless it is sharded
        self.num_labels, self.results = info.num_labels, {}
        self.grid_pixels = self.grid_noise = None
        if eval_data is not None and not info.streaming and accelerator.is_main_process:
            pictures = eval_dataloader(eval_data.select(range(min(8, len(eval_data)))), processor, 8)
            batch = next(iter(pictures))
            self.grid_pixels = batch["pixel_values"][batch["valid"]].to(accelerator.device)
            self.grid_noise = torch.rand(len(self.grid_pixels), model.config.num_patches,
                                         generator=torch.Generator().manual_seed(0))
        self.enabled = config.every >= 0 and eval_data is not None and bool(info.num_labels) and not info.streaming
        if self.enabled:
            splits = (train_data.select(range(min(len(train_data), config.max_train_samples))),
                      eval_data.select(range(min(len(eval_data), config.max_eval_samples))))
            self.loaders = [accelerator.prepare(eval_dataloader(d, processor, config.eval_batch_size,
                                                                strict=config.strict_images)) for d in splits]

    def probe(self, train, held_out) -> float:
        """Held-out top-1 of a fresh linear probe (BatchNorm + Linear, LARS) trained on cached features."""
        return fit_and_score_probe(train, held_out, self.num_labels, self.config.probe_settings, self.config.seed)

    def measure(self, raw_pixels: bool = False) -> dict[str, float]:
        """{"probe_top1_cls", "probe_top1_mean", "knn_top1"} of the encoder now (or of the raw pixels:
        {"probe_top1", "knn_top1"})."""
        encoder = self.full_model.get().encoder
        train, held_out = [extract_pooled_features(self.accelerator, encoder, loader, ("cls", "mean"),
                                                   desc="monitor features", raw_pixels=raw_pixels)
                           for loader in self.loaders]
        if raw_pixels:
            (train,), (held_out,) = train.values(), held_out.values()
            return {"probe_top1": self.probe(train, held_out),
                    "knn_top1": knn_accuracy(*train[:2], *held_out[:2], self.num_labels)}
        return {"probe_top1_cls": self.probe(train["cls"], held_out["cls"]),
                "probe_top1_mean": self.probe(train["mean"], held_out["mean"]),
                "knn_top1": knn_accuracy(*train["cls"][:2], *held_out["cls"][:2], self.num_labels)}

    def start(self, run_log) -> None:
        """Raw pixels and the random-init encoder (a fresh run only)."""
        if not self.enabled:
            return
        raw, init = self.measure(raw_pixels=True), self.measure()
        self.results = {"probe_top1_raw_pixels": raw["probe_top1"], "probe_top1_init": init["probe_top1_cls"],
                        "probe_top1_init_mean": init["probe_top1_mean"], "knn_top1_raw_pixels": raw["knn_top1"],
                        "knn_top1_init": init["knn_top1"]}
        run_log.write({"event": "monitor", "step": 0, **self.results}, step=0)
        self.accelerator.print(
            f"held-out linear probe top-1 before training: raw pixels {raw['probe_top1']:.2f}%, random-init "
            f"encoder {init['probe_top1_cls']:.2f}% (CLS) / {init['probe_top1_mean']:.2f}% (mean); kNN: raw pixels "
            f"{raw['knn_top1']:.2f}%, random init {init['knn_top1']:.2f}%")

    def epoch_end(self, epoch_done: int, done: bool, step: int, run_log, out_dir: Path) -> None:
        config = self.config
        if config.image_log_every and epoch_done % config.image_log_every == 0:
            model = self.full_model.get(build=self.grid_pixels is not None)  # the pictures: main process only
            if self.grid_pixels is not None:
                log_reconstructions(model, self.processor, self.grid_pixels, self.grid_noise,
                                    out_dir / "reconstructions" / f"epoch_{epoch_done:04d}.png",
                                    config.recon_statistics)
        if self.enabled and config.every > 0 and epoch_done % config.every == 0 and not done:
            now = self.measure()
            run_log.write({"event": "monitor", "step": step, "epoch": epoch_done, **now}, step=step)
            self.accelerator.print(f"epoch {epoch_done}: linear probe top-1 {now['probe_top1_cls']:.2f}% (CLS) / "
                                   f"{now['probe_top1_mean']:.2f}% (mean), kNN {now['knn_top1']:.2f}%")

    def end(self, step: int, run_log) -> None:
        if self.enabled:
            self.results.update(self.measure())
            run_log.write({"event": "monitor", "step": step, **{k: self.results[k] for k in
                                                                ("probe_top1_cls", "probe_top1_mean", "knn_top1")}},
                          step=step)

    def final_pictures(self, model, out_dir: Path) -> None:
        if self.grid_pixels is None:
            return
        statistics = self.config.recon_statistics
        log_reconstructions(model, self.processor, self.grid_pixels, self.grid_noise,
                            out_dir / "reconstruction_final.png", statistics)
        if model.config.norm_pix_loss:  # the other choice too, named by what it uses
            other = "target" if statistics == "visible" else "visible"
            log_reconstructions(model, self.processor, self.grid_pixels, self.grid_noise,
                                out_dir / f"reconstruction_final_{other}_statistics.png", other)


__all__ = ["Monitor", "MonitorConfig", "log_reconstructions"]
