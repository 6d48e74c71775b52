import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import hashlib  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import hf_mae  # noqa: E402,F401  (registers the Auto classes)
from hf_mae import MAEConfig  # noqa: E402

# A 16x16, 4x4-patch MAE small enough for every test to run in milliseconds.
TINY = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=2, decoder_hidden_size=16, decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2)


TIMEOUT_SCALE_ENV = "HF_MAE_TEST_TIMEOUT_SCALE"


def subprocess_timeout(base_seconds: float) -> float:
    """`base_seconds` (what a child process takes on an idle 2-core machine, with room to spare) times
    $HF_MAE_TEST_TIMEOUT_SCALE (default 1): a loaded machine raises the scale and the suite runs slowly instead of
    failing. Only the test's own guard scales; a program's own timeouts, and bounds asserted on them, do not."""
    raw = os.environ.get(TIMEOUT_SCALE_ENV, "1")
    try:
        scale = float(raw)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"${TIMEOUT_SCALE_ENV} must be a positive number (a multiplier such as 3), got {raw!r}")
    return base_seconds * scale


def tiny_config(**overrides) -> MAEConfig:
    return MAEConfig(**{**TINY, **overrides})


def two_class_picture(label: int, seed: int, size: int = 20, low: int = 120) -> Image.Image:
    """Separable toy classes: class 0 has a dark left half, class 1 a dark top half; plus noise."""
    array = np.random.default_rng(seed).integers(low, 255, (size, size, 3), dtype=np.uint8)
    if label == 0:
        array[:, : size // 2] //= 4
    else:
        array[: size // 2] //= 4
    return Image.fromarray(array)


def save_tiny_checkpoint(folder: Path, seed: int, model_class=None) -> Path:
    """A tiny random-init hf_mae checkpoint (pretraining model by default) + processor in `folder`."""
    from hf_mae import MAEForPreTraining, MAEImageProcessor

    torch.manual_seed(seed)
    config = tiny_config()
    (model_class or MAEForPreTraining)(config).save_pretrained(folder)
    MAEImageProcessor.for_config(config, crop_pct=1.0).save_pretrained(folder)
    return folder


def write_two_class_folders(root: Path, counts: dict, size: int = 20, seed: int = 0, low: int = 120) -> Path:
    """imagefolder splits `root/<split>/{a_left,b_top}/<i>.png` with `counts[split]` images per class."""
    for split_index, (split, count) in enumerate(counts.items()):
        for label, name in enumerate(("a_left", "b_top")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                two_class_picture(label, seed + 10_000 * split_index + 1_000 * label + i, size, low).save(
                    folder / f"{i}.png")
    return root


def folder_digest(folder: Path) -> dict:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def two_class_root(tmp_path_factory) -> Path:
    """The labelled data the evaluation and training programs read, built once per session and shared READ-ONLY:
    imagefolder splits `train` (16 per class) and `val` (8 per class) of 20x20 two-class pictures (the 16x16
    model resizes them), a tiny pretraining checkpoint `pretrain` (seed 1), a tiny encoder `encoder` (seed 0) and
    the tiny model's `tiny.json`. A test that adds or changes files works on `copy_of(two_class_root, ...)`; the
    teardown fails if anything under it changed."""
    from hf_mae import MAEModel

    root = write_two_class_folders(tmp_path_factory.mktemp("two_class"), {"train": 16, "val": 8}, low=180)
    save_tiny_checkpoint(root / "pretrain", seed=1)
    save_tiny_checkpoint(root / "encoder", seed=0, model_class=MAEModel)
    (root / "tiny.json").write_text(json.dumps(TINY))
    before = folder_digest(root)
    yield root
    assert folder_digest(root) == before, f"a test changed the shared data under {root}: copy it first (copy_of)"


def copy_of(source: Path, destination: Path) -> Path:
    """A writable copy of shared read-only data (`two_class_root`), for a test or fixture that adds files."""
    shutil.copytree(source, destination)
    return destination


@pytest.fixture
def config() -> MAEConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each in-process training run builds its own Accelerator: reset Accelerate's process-wide singletons."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def assert_same_weights(folder_a: Path, folder_b: Path, atol: float = 1e-6) -> None:
    """Two runs' `model.safetensors` hold the same tensors (an interrupted-and-resumed run vs the full one)."""
    from safetensors.torch import load_file

    a, b = load_file(Path(folder_a) / "model.safetensors"), load_file(Path(folder_b) / "model.safetensors")
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.allclose(value, b[key], atol=atol), key


def pytest_configure(config):
    # marks that transformers' common test mixins (run by tests/test_transformers_common.py) put on their tests
    for mark in ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "torch_compile_test"):
        config.addinivalue_line("markers", f"{mark}: a mark of transformers' common test mixins")


FAKE_HUB_TOKEN = "hf_TESTtokenNeverLeak0123456789abcdef"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub on 127.0.0.1 (tests/hub_server.FakeHub), HF_ENDPOINT pointing at it, FAKE_HUB_TOKEN in HF_TOKEN, no
    saved login, online mode for this test only."""
    from hub_server import FakeHub
    from huggingface_hub import close_session, constants

    server = FakeHub(FAKE_HUB_TOKEN).start()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # a CI proxy must not see the fake hub's traffic
    close_session()  # the client's HTTP session reads proxy settings when it is created
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", FAKE_HUB_TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_saved_token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # offline mode stays for everything else
    yield server
    close_session()
    server.stop()
    assert server.unexpected == [], f"requests the fake hub does not know: {server.unexpected}"
