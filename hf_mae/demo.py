"""The browser demo: what an MAE checkpoint does with an image (the paper's Figure 2), as a gradio app.

`build_demo(model)` returns a `gradio.Blocks` app; `python scripts/demo.py --model RUN` serves it on
127.0.0.1 and a Space's `app.py` (hf_mae/hub/space.py) runs the same function on a Hub repo id. Named API
endpoints (for `gradio_client`): `/heldout_digit`, `/reconstruct` and, for a classifier, `/classify`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .evaluation.classifier import quiet_transformers, read_mae_config
from .models.mae.classification_mae import MAEForImageClassification
from .models.mae.image_processing_mae import MAEImageProcessor
from .models.mae.modeling_mae import MAEForPreTraining
from .visualization import COLUMN_TITLES, GRID_COLUMNS

MIN_PICTURE_SIDE = 224  # shown pictures are upscaled (nearest) to at least this: a 28-px digit 8x, legible
TOP_K = 5
STATISTICS_NOTES = {
    "visible": "norm-pix predictions are un-normalised with the mean/variance of the visible patches only "
               "(no leak: only what the model saw is used)",
    "target": "norm-pix predictions are un-normalised with each masked patch's own mean/variance (the official "
              "demo's choice: the hidden patch's brightness and contrast leak into the picture)",
    None: "this model predicts pixels (no norm-pix target), so no patch statistics are involved",
}


@dataclass
class DemoModels:
    """What the demo runs: a pretraining model (reconstructions) and/or a classifier (top-5), one processor."""

    source: str
    processor: MAEImageProcessor
    pretraining: MAEForPreTraining | None = None
    classifier: MAEForImageClassification | None = None

    @property
    def norm_pix_loss(self) -> bool:
        return bool(self.pretraining is not None and self.pretraining.config.norm_pix_loss)


def _load(name_or_path: str, expected: tuple[str, ...], role: str):
    config = read_mae_config(name_or_path)
    architecture = (config.architectures or ["MAEModel"])[0]
    if architecture not in expected:
        hint = (" (reconstructions need the decoder: give the pretraining folder, e.g. outputs/pretrain, not its "
                "encoder/)" if architecture == "MAEModel" else "")
        raise ValueError(f"{role} {name_or_path!r} holds a {architecture}; the demo needs one of "
                         f"{', '.join(expected)}{hint}")
    model_class = MAEForPreTraining if architecture == "MAEForPreTraining" else MAEForImageClassification
    with quiet_transformers():
        model = model_class.from_pretrained(name_or_path).eval()
    return model, MAEImageProcessor.from_pretrained(name_or_path)


def load_demo_models(model: str, classifier: str | None = None) -> DemoModels:
    """`model`: a pretraining (MAEForPreTraining) or classifier folder / Hub id; `classifier`: an optional
    classifier shown beside a pretraining model. Raises ValueError naming what a folder holds instead."""
    loaded, processor = _load(model, ("MAEForPreTraining", "MAEForImageClassification"), "--model")
    models = DemoModels(source=model, processor=processor)
    if isinstance(loaded, MAEForPreTraining):
        models.pretraining = loaded
    else:
        models.classifier = loaded
    if classifier is not None:
        if models.classifier is not None:
            raise ValueError(f"--model {model!r} is a classifier already; give --classifier with a pretraining "
                             f"folder only")
        models.classifier, _ = _load(classifier, ("MAEForImageClassification",), "--classifier")
    return models


def _to_picture(images: torch.Tensor) -> Image.Image:
    """(1, C, H, W) in [0, 1] -> a PIL picture upscaled by a whole factor, so patches stay sharp blocks."""
    array = (images[0].float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array[..., :3])
    scale = max(1, math.ceil(MIN_PICTURE_SIDE / min(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def mask_noise(num_patches: int, seed: int) -> torch.Tensor:
    """(1, N) masking noise from a generator of its own: the same seed always masks the same patches."""
    return torch.rand(1, num_patches, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def reconstruct(models: DemoModels, image: Image.Image, mask_ratio: float, seed: int,
                statistics: str = "visible") -> tuple[dict[str, Image.Image], str]:
    """The four pictures of `GRID_COLUMNS` for one image, and a one-line caption (patches masked, statistics)."""
    if models.pretraining is None:
        raise ValueError(f"{models.source} is a classifier: reconstructions need a pretraining model")
    if not 0 < mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in (0, 1): the model predicts masked patches; got {mask_ratio}")
    if statistics not in ("visible", "target"):
        raise ValueError(f"statistics must be 'visible' or 'target', got {statistics!r}")
    model = models.pretraining
    pixel_values = models.processor(images=image, return_tensors="pt")["pixel_values"]
    output = model(pixel_values, noise=mask_noise(model.config.num_patches, seed), mask_ratio=mask_ratio)
    shown = statistics if model.config.norm_pix_loss else None
    pictures = models.processor.postprocess_reconstruction(
        output.logits, pixel_values, output.mask, norm_pix_loss=model.config.norm_pix_loss, statistics=shown)
    masked = int(output.mask.sum())
    caption = (f"{masked} of {output.mask.shape[1]} patches masked ({masked / output.mask.shape[1]:.0%}, seed "
               f"{int(seed)}); {STATISTICS_NOTES[shown]}.")
    return {name: _to_picture(pictures[name]) for name in GRID_COLUMNS}, caption


@torch.no_grad()
def classify(models: DemoModels, image: Image.Image, top_k: int = TOP_K) -> dict[str, float]:
    """The classifier's `top_k` classes for one image: {label: probability}, most likely first."""
    if models.classifier is None:
        raise ValueError(f"{models.source} has no classifier: pass --classifier (a probe or fine-tune folder)")
    pixel_values = models.processor(images=image, return_tensors="pt")["pixel_values"]
    probabilities = models.classifier(pixel_values).logits.softmax(-1)[0]
    values, indices = probabilities.topk(min(top_k, len(probabilities)))
    labels = models.classifier.config.id2label
    return {str(labels.get(int(i), int(i))): float(v) for v, i in zip(values, indices)}


def heldout_digit(index: int) -> tuple[Image.Image, str]:
    """Digit `index` of the embedded data's held-out split (1,000 digits never trained on) and its label."""
    from .data.sources import load_embedded_default

    validation = load_embedded_default()["validation"]
    if not 0 <= int(index) < len(validation):
        raise ValueError(f"held-out digit index must be in [0, {len(validation) - 1}], got {index}")
    row = validation[int(index)]
    return row["image"], validation.features["label"].int2str(row["label"])


def _reconstruction_outputs(gr) -> list:
    with gr.Row():
        return [gr.Image(type="pil", format="png", label=title.replace("\n", " "), elem_id=f"out_{name}",
                         interactive=False) for name, title in zip(GRID_COLUMNS, COLUMN_TITLES)]


def _controls(gr, models: DemoModels) -> dict:
    """The input column: image, held-out digit picker, mask ratio, seed, statistics."""
    with gr.Column():
        image = gr.Image(type="pil", format="png", label="image (upload any image, or pick a held-out digit)",
                         elem_id="input_image", height=280)
        with gr.Row():
            digit_index = gr.Slider(0, 999, value=0, step=1, label="held-out digit #", elem_id="digit_index")
            digit_button = gr.Button("use this held-out digit", elem_id="use_digit")
        digit_label = gr.Textbox(label="its label", interactive=False, elem_id="digit_label")
        ratio = models.pretraining.config.mask_ratio if models.pretraining is not None else 0.75
        mask_ratio = gr.Slider(0.05, 0.95, value=ratio, step=0.05, label="mask ratio", elem_id="mask_ratio")
        seed = gr.Number(value=0, precision=0, label="mask seed", elem_id="seed")
        statistics = gr.Radio(["visible", "target"], value="visible", visible=models.norm_pix_loss,
                              label="norm-pix statistics (visible: no leak; target: leaks the hidden patch)")
        run = gr.Button("Reconstruct" if models.pretraining is not None else "Classify", variant="primary",
                        elem_id="run")
    return dict(image=image, digit_index=digit_index, digit_button=digit_button, digit_label=digit_label,
                mask_ratio=mask_ratio, seed=seed, statistics=statistics, run=run)


def _checked(function):
    """Bad input shown in the page (gradio.Error) instead of a bare 'Error'."""
    import gradio as gr

    def wrapper(image, *rest):
        if image is None:
            raise gr.Error("Upload an image or pick a held-out digit first.")
        try:
            return function(image, *rest)
        except ValueError as error:
            raise gr.Error(str(error)) from None
    return wrapper


def build_demo(model: str, classifier: str | None = None):
    """The gradio app for `model` (a pretraining or classifier folder / Hub id) and an optional classifier."""
    import gradio as gr

    models = load_demo_models(model, classifier)
    note = STATISTICS_NOTES["visible" if models.norm_pix_loss else None]
    with gr.Blocks(title=f"hf_mae demo: {model}") as demo:
        gr.Markdown(f"## Masked autoencoder: {model}\nMask a share of the image's patches and see what the "
                    f"model fills in: original | masked | reconstruction | reconstruction with the visible "
                    f"patches pasted back. {note[0].upper() + note[1:]}.")
        controls = _controls(gr, models)
        controls["digit_button"].click(heldout_digit, inputs=controls["digit_index"],
                                       outputs=[controls["image"], controls["digit_label"]], api_name="heldout_digit")
        inputs = [controls["image"], controls["mask_ratio"], controls["seed"], controls["statistics"]]
        if models.pretraining is not None:
            pictures, caption = _reconstruction_outputs(gr), gr.Markdown(elem_id="caption")

            def run_reconstruction(image, mask_ratio, seed, statistics):
                shown, text = reconstruct(models, image, float(mask_ratio), int(seed or 0), statistics)
                return (*(shown[name] for name in GRID_COLUMNS), text)
            controls["run"].click(_checked(run_reconstruction), inputs=inputs, outputs=[*pictures, caption],
                                  api_name="reconstruct")
        if models.classifier is not None:
            top = gr.Label(num_top_classes=TOP_K, label=f"top-{TOP_K} classes", elem_id="top_classes")
            controls["run"].click(_checked(lambda image: classify(models, image)), inputs=controls["image"],
                                  outputs=top, api_name="classify")
    return demo


__all__ = ["DemoModels", "build_demo", "classify", "heldout_digit", "load_demo_models", "mask_noise",
           "reconstruct"]
