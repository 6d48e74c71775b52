"""Upload folders: what each Hub repo holds (encoder, probe, full pretraining model, segmentation model)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from transformers import ViTForImageClassification

from ..atomic import write_json
from ..convert.vitmae import fold_batchnorm, to_transformers
from ..models.loading import load_weights
from ..models.mae.classification_mae import MAEForImageClassification
from ..models.mae.configuration_mae import MAEConfig
from ..models.mae.image_processing_mae import MAEImageProcessor, check_processor_matches
from ..models.mae.modeling_mae import AUTO_MAP, CODE_FILES, MAEForPreTraining, MAEModel
from ..models.mae.segmentation_mae import SEGMENTATION_AUTO_MAP, MAEUperNetConfig
from .cards import _PRETRAINING_EXTRAS, DEFAULT_COMMIT_MESSAGES, KINDS, _read_json, render_model_card
from .http import hub_endpoint

logger = logging.getLogger(__name__)

UPLOAD_FORMATS = ("hf_mae", "vit")  # the layouts an upload folder can take




_VIT_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                       "rescale_factor", "do_normalize", "image_mean", "image_std")


_MODEL_CODE_DIR = Path(__file__).resolve().parents[1] / "models" / "mae"  # the remote-code files


@dataclass
class Upload:
    """One repo to push: `folder` (built, complete, README.md included) goes to `repo_id` in one commit."""

    kind: str
    repo_id: str
    folder: Path
    commit_message: str
    format: str = "hf_mae"

    def files(self) -> list[str]:
        """Paths relative to the folder (what the repo will hold), sorted."""
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())


def _weight_files(src: Path) -> list[Path]:
    files = sorted(src.glob("model*.safetensors")) + sorted(src.glob("model.safetensors.index.json"))
    if not files:
        raise FileNotFoundError(f"{src} holds no model.safetensors: expected a save_pretrained folder")
    return files


def _architecture(src: Path) -> str | None:
    architectures = _read_json(src / "config.json").get("architectures") or [None]
    return architectures[0]


def _check_model_folder(src: Path, architecture: str, what: str) -> None:
    config = _read_json(src / "config.json")
    if not config:
        raise FileNotFoundError(f"{src} has no config.json: expected the {what} saved with save_pretrained")
    if config.get("model_type") != MAEConfig.model_type:
        raise ValueError(f"{src} holds a {config.get('model_type')!r} model, not an hf_mae checkpoint")
    if _architecture(src) != architecture:
        raise ValueError(f"{src} holds {_architecture(src)}, expected {architecture} ({what})")


def check_processor(src: Path) -> None:
    """Refuse (ValueError naming both sizes) a folder whose saved image processor does not fit its model, e.g. a
    224-pixel processor beside a 32-pixel model: the pushed repo would fail on every image. A folder without a
    processor gets one made for its config later."""
    if not (src / "preprocessor_config.json").is_file():
        return
    processor = MAEImageProcessor.from_pretrained(src)
    try:
        check_processor_matches(processor, MAEConfig.from_pretrained(src))
    except ValueError as err:
        raise ValueError(f"{src}: {err} Nothing was pushed.") from None


def _copy_model_files(src: Path, dst: Path, auto_map: dict = AUTO_MAP) -> None:
    """Copy a save_pretrained folder's model files (weights, config, processor) with the installed hf_mae's code
    files and its full `auto_map` (the code that wrote the folder may be older): the copy loads with
    trust_remote_code where hf_mae is absent."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in [src / "config.json", *_weight_files(src), src / "preprocessor_config.json"]:
        if path.is_file():
            shutil.copyfile(path, dst / path.name)
    config = _read_json(dst / "config.json")
    if config.get("auto_map") != auto_map:
        config["auto_map"] = dict(auto_map)
        write_json(dst / "config.json", config, sort_keys=True)
    if not (dst / "preprocessor_config.json").is_file():
        logger.warning("%s has no preprocessor_config.json: writing the default one for its config", src)
        MAEImageProcessor.for_config(MAEConfig.from_pretrained(dst)).save_pretrained(dst)
    processor = _read_json(dst / "preprocessor_config.json")
    if "auto_map" not in processor:
        processor["auto_map"] = {"AutoImageProcessor": AUTO_MAP["AutoImageProcessor"]}
        write_json(dst / "preprocessor_config.json", processor, sort_keys=True)
    for name in CODE_FILES:
        shutil.copyfile(_MODEL_CODE_DIR / name, dst / name)


def _vit_processor_config(mae_processor: dict, num_channels: int) -> dict:
    """A ViTImageProcessor config with the same resize / crop / rescale / normalise as the MAE processor."""
    out = {key: mae_processor[key] for key in _VIT_PROCESSOR_KEYS if key in mae_processor}
    size, crop_pct = out.get("size") or {}, mae_processor.get("crop_pct")
    if crop_pct and set(size) == {"shortest_edge"}:  # ViT has no crop_pct: give it the resize edge itself
        out["size"] = {"shortest_edge": int(round(size["shortest_edge"] / crop_pct))}
    out["image_processor_type"] = "ViTImageProcessor"
    out["do_convert_rgb"] = num_channels == 3  # 1-channel models take grayscale ("L") images as they are
    return out


def _encoder_source(checkpoint: Path) -> Path | None:
    """The encoder's save_pretrained folder in a pretraining output (or the folder itself if it is one)."""
    if _architecture(checkpoint / "encoder") == "MAEModel":
        return checkpoint / "encoder"
    if _architecture(checkpoint) == "MAEModel":
        return checkpoint
    return None


def vit_classifier_from_mae(model: MAEForImageClassification) -> ViTForImageClassification:
    """An hf_mae classifier as a stock `ViTForImageClassification` with the same logits (eval mode).

    `ViTForImageClassification` classifies the CLS token after the final LayerNorm. A linear probe (CLS
    after the final norm -> BatchNorm without affine -> Linear) maps exactly: the eval-mode BatchNorm folds
    into the Linear layer (`convert.fold_batchnorm`). A fine-tuned CLS classifier
    (pre-norm CLS -> fc_norm -> Linear) maps by using fc_norm as the final LayerNorm. Mean pooling cannot be
    expressed: ValueError.
    """
    config = model.config
    if config.pooling != "cls":
        raise ValueError(f"--format vit needs a CLS-pooled classifier: ViTForImageClassification classifies "
                         f"the CLS token after the final LayerNorm, but this model uses "
                         f"pooling={config.pooling!r}. Push it with --format hf_mae (remote code) instead.")
    encoder = to_transformers(model.encoder)
    vit_config = encoder.config
    vit_config.id2label = {int(k): v for k, v in config.id2label.items()}
    vit_config.label2id = {k: int(v) for k, v in config.label2id.items()}
    vit_config.architectures = ["ViTForImageClassification"]
    classifier = ViTForImageClassification(vit_config).eval()
    classifier.vit.load_state_dict(encoder.state_dict(), strict=True)
    if config.classifier_head == "linear_probe":
        head = fold_batchnorm(model.fc_norm, model.head)
    else:
        head = model.head
        classifier.vit.layernorm.load_state_dict(model.fc_norm.state_dict())
        classifier.vit.layernorm.eps = model.fc_norm.eps
    classifier.classifier.load_state_dict(head.state_dict())
    return classifier


def build_encoder_folder(checkpoint, out_dir, *, format: str = "hf_mae") -> Path:
    """The encoder's upload folder (no card yet): hf_mae `MAEModel` + code, or a stock `ViTModel`."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    source = _encoder_source(checkpoint)
    if source is None:  # no encoder/ folder: take the encoder out of the full model
        _check_model_folder(checkpoint, "MAEForPreTraining", "pretraining model")
    check_processor(source or checkpoint)
    if source is None:
        encoder = load_weights(MAEForPreTraining, checkpoint)[0].encoder
        processor_dir = checkpoint
    elif format == "hf_mae":
        _copy_model_files(source, out_dir)
        return out_dir
    else:
        encoder, processor_dir = load_weights(MAEModel, source)[0], source
    if format == "hf_mae":
        encoder.save_pretrained(out_dir)
        MAEImageProcessor.from_pretrained(processor_dir).save_pretrained(out_dir)
        return out_dir
    to_transformers(encoder.eval()).save_pretrained(out_dir)
    processor = _read_json(processor_dir / "preprocessor_config.json")
    write_json(out_dir / "preprocessor_config.json", _vit_processor_config(processor, encoder.config.num_channels),
               sort_keys=True)
    return out_dir


def build_probe_folder(probe, out_dir, *, format: str = "hf_mae") -> Path:
    """The linear probe's upload folder (no card yet): model + processor + results.json."""
    probe, out_dir = Path(probe), Path(out_dir)
    _check_model_folder(probe, "MAEForImageClassification", "linear probe")
    check_processor(probe)
    if format == "hf_mae":
        _copy_model_files(probe, out_dir)
    else:
        model = load_weights(MAEForImageClassification, probe)[0].eval()
        vit_classifier_from_mae(model).save_pretrained(out_dir)
        processor = _read_json(probe / "preprocessor_config.json")
        write_json(out_dir / "preprocessor_config.json", _vit_processor_config(processor, model.config.num_channels),
                   sort_keys=True)
    if (probe / "results.json").is_file():
        shutil.copyfile(probe / "results.json", out_dir / "results.json")
    return out_dir


def build_pretraining_folder(checkpoint, out_dir) -> Path:
    """The full model's upload folder (no card yet): MAEForPreTraining + processor + code, the run's
    training_args.json / results.json / log.jsonl and the PNG figures at the folder's root."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    _check_model_folder(checkpoint, "MAEForPreTraining", "pretraining model")
    check_processor(checkpoint)
    _copy_model_files(checkpoint, out_dir)
    for path in [*(checkpoint / name for name in _PRETRAINING_EXTRAS), *sorted(checkpoint.glob("*.png"))]:
        if path.is_file():
            shutil.copyfile(path, out_dir / path.name)
    return out_dir


SEGMENTATION_EXTRAS = ("results.json", "training_args.json", "segmentation_examples.png")


def build_segmentation_folder(src, out_dir) -> Path:
    """A segmentation output folder's upload folder (no card yet): UperNet on the MAE encoder + processor + code,
    results.json (the card's mIoU), training_args.json and the examples picture."""
    src, out_dir = Path(src), Path(out_dir)
    config = _read_json(src / "config.json")
    if not config:
        raise FileNotFoundError(f"{src} has no config.json: expected a scripts/segment.py output folder")
    backbone_type = (config.get("backbone_config") or {}).get("model_type")
    segmenter_types = (MAEUperNetConfig.model_type, "upernet")  # "upernet": saved before the inference settings
    if config.get("model_type") not in segmenter_types or backbone_type != MAEConfig.model_type:
        raise ValueError(f"{src} holds a {config.get('model_type')!r} model on a {backbone_type!r} backbone, not an "
                         f"hf_mae segmentation model (UperNet on MAEBackbone, from scripts/segment.py)")
    for name in ("preprocessor_config.json", "results.json"):
        if not (src / name).is_file():
            raise FileNotFoundError(f"{src} has no {name}: expected a finished scripts/segment.py output folder")
    _copy_model_files(src, out_dir, SEGMENTATION_AUTO_MAP)
    for name in SEGMENTATION_EXTRAS:
        if (src / name).is_file():
            shutil.copyfile(src / name, out_dir / name)
    return out_dir


# ----------------------------------------------------------------------------------------------------------
# build everything, push
# ----------------------------------------------------------------------------------------------------------
def build_upload_folders(out_dir, *, checkpoint=None, probe=None, encoder_repo: str | None = None,
                         probe_repo: str | None = None, pretrain_repo: str | None = None,
                         format: str = "hf_mae", commit_message: str | None = None, segmentation=None,
                         segmentation_repo: str | None = None) -> list[Upload]:
    """Build every requested upload folder under `out_dir` (`pretraining/`, `encoder/`, `probe/`,
    `segmentation/`), with cards.

    The source folders are only read. `format` applies to the encoder and the probe; the pretraining model
    is always an hf_mae checkpoint (it needs the decoder), and so is the segmentation model (UperNet on it).
    """
    if format not in UPLOAD_FORMATS:
        raise ValueError(f"format must be one of {UPLOAD_FORMATS}, got {format!r}")
    if (encoder_repo or pretrain_repo) and checkpoint is None:
        raise ValueError("pushing the encoder or the pretraining model needs checkpoint (a pretraining "
                         "output folder)")
    if probe_repo and probe is None:
        raise ValueError("pushing a probe needs probe (a linear-probe output folder)")
    if segmentation_repo and segmentation is None:
        raise ValueError("pushing a segmentation model needs segmentation (a scripts/segment.py output folder)")
    if not (encoder_repo or pretrain_repo or probe_repo or segmentation_repo):
        raise ValueError("nothing to push: give at least one of encoder_repo, probe_repo, pretrain_repo, "
                         "segmentation_repo")
    for name, path in (("checkpoint", checkpoint), ("probe", probe), ("segmentation", segmentation)):
        if path is not None and not Path(path).is_dir():
            what = "is a file, not a folder" if Path(path).exists() else "does not exist"
            raise FileNotFoundError(f"{name} folder {path} {what}")
    out_dir = Path(out_dir)
    repos = {"pretraining": pretrain_repo, "encoder": encoder_repo, "probe": probe_repo,
             "segmentation": segmentation_repo}
    related = {kind: repo for kind, repo in repos.items() if repo}
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    training_args = _read_json(checkpoint / "training_args.json") if checkpoint else {}
    pretrain_results = _read_json(checkpoint / "results.json") if checkpoint else {}
    probe_results = _read_json(Path(probe) / "results.json") if probe is not None else {}
    uploads = []
    for kind in KINDS:
        repo_id = repos[kind]
        if not repo_id:
            continue
        folder = out_dir / kind
        if kind == "pretraining":
            build_pretraining_folder(checkpoint, folder)
        elif kind == "encoder":
            build_encoder_folder(checkpoint, folder, format=format)
        elif kind == "probe":
            build_probe_folder(probe, folder, format=format)
        else:
            build_segmentation_folder(segmentation, folder)
        kind_format = "hf_mae" if kind in ("pretraining", "segmentation") else format
        card = render_model_card(kind, folder, repo_id=repo_id, format=kind_format,
                                 training_args=training_args, pretrain_results=pretrain_results,
                                 probe_results=probe_results,
                                 related={k: v for k, v in related.items() if k != kind})
        card.save(folder / "README.md")
        message = commit_message or DEFAULT_COMMIT_MESSAGES[kind]
        uploads.append(Upload(kind, repo_id, folder, message, kind_format))
    return uploads


def describe_uploads(uploads: list[Upload], *, private: bool = False, revision: str | None = None) -> str:
    """A readable plan: endpoint, repos, visibility, revision, commit message and files with sizes."""
    lines = [f"Hub endpoint: {hub_endpoint()}"]
    for up in uploads:
        visibility = "private" if private else "default visibility"
        lines.append(f"{up.kind}: {up.repo_id} (model repo, {visibility}, revision {revision or 'main'}, "
                     f"format {up.format}), one commit: {up.commit_message!r}")
        for name in up.files():
            lines.append(f"    {name}  ({(up.folder / name).stat().st_size:,} bytes)")
    return "\n".join(lines)
