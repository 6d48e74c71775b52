"""transformers' own common test mixins, taken from the source distribution of the installed transformers.

The wheel ships no tests; the sdist ships `tests/test_*_common.py` but not the sub-packages they import
(`exporters/`, `generation/`, `utils/`) nor the repository's `utils/fetch_hub_objects_for_ci.py`. Those get
small stand-ins here (`_STAND_INS`): an empty export mixin (its export tests are therefore not run), an
empty generation mixin (MAE does not generate), the common config kwargs built from `PreTrainedConfig`
itself, and a `url_to_local_path` that returns the URL (the image-processor mixin only needs it for tests
that fetch COCO images, which stay unused offline).

The sdist is downloaded once per version with pip into ~/.cache/hf_mae/transformers-sdist/<version>/ (only
`tests/` is kept). Offline, the download fails with an error saying so; set HF_MAE_TRANSFORMERS_TESTS=skip to
skip transformers' suites instead (the skip then names the reason).
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"  # the sdist's tests/ imported under this name (no clash with ours)
CACHE_ROOT = Path(os.environ.get("HF_MAE_CACHE", Path.home() / ".cache" / "hf_mae")) / "transformers-sdist"
SKIP_ENV = "HF_MAE_TRANSFORMERS_TESTS"


class TransformersTestsUnavailable(RuntimeError):
    pass


def sdist_tests_dir(version: str = transformers.__version__) -> Path:
    """`tests/` of transformers' sdist for `version`, downloaded and extracted on first use."""
    target = CACHE_ROOT / version / "tests"
    if (target / "test_modeling_common.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   "-q", "-d", scratch, f"transformers=={version}"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if done.returncode != 0 or not archives:
            raise TransformersTestsUnavailable(
                f"cannot download transformers {version}'s source distribution (for its common test mixins): "
                f"`{' '.join(command)}` exited {done.returncode}: {done.stderr.strip()[-800:]}\n"
                f"Set {SKIP_ENV}=skip to skip transformers' suites (offline machines).")
        _extract_tests(archives[0], target)
    return target


def _extract_tests(archive: Path, target: Path) -> None:
    """Only `<root>/tests/*` of the archive, written to a sibling folder and renamed into place at the end, so
    an interrupted extraction never leaves a half-filled cache."""
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if len(parts) > 2 and parts[1] == "tests" and member.isfile() and ".." not in parts:
                member.name = str(Path(*parts[2:]))
                tar.extract(member, partial, filter="data")
    # transformers' repository has a tests/__init__.py (test_configuration_common executes it); the sdist does not
    (partial / "__init__.py").touch()
    if target.exists():  # another process finished first
        return
    partial.rename(target)


def _common_config_kwargs() -> dict:
    """Non-default values for the fields every PreTrainedConfig has (what ConfigTester checks are kept)."""
    import torch
    return {"output_hidden_states": True, "output_attentions": True, "return_dict": False, "dtype": torch.float16,
            "chunk_size_feed_forward": 5, "id2label": {0: "label"}, "label2id": {"label": 0},
            "problem_type": "regression"}


def _stand_ins() -> dict[str, dict]:
    return {
        "exporters.test_export": {"ExportTesterMixin": type("ExportTesterMixin", (), {})},
        "generation.test_utils": {"GenerationTesterMixin": type("GenerationTesterMixin", (), {})},
        "utils.test_configuration_utils": {"config_common_kwargs": _common_config_kwargs()},
    }


def _register_package(tests_dir: Path) -> None:
    if PACKAGE in sys.modules:
        return
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(tests_dir)]
    sys.modules[PACKAGE] = package
    for dotted, names in _stand_ins().items():
        parent = PACKAGE
        for part in dotted.split("."):
            name = f"{parent}.{part}"
            if name not in sys.modules:
                module = types.ModuleType(name)
                module.__path__ = []
                sys.modules[name] = module
            parent = name
        sys.modules[parent].__dict__.update(names)
    fetch = types.ModuleType("fetch_hub_objects_for_ci")
    fetch.url_to_local_path = _local_test_image
    sys.modules.setdefault("fetch_hub_objects_for_ci", fetch)


def _local_test_image(url: str, *args, **kwargs) -> str:
    """Offline, every test image URL (COCO's cats, ADE20k scenes) maps to one generated 640x480 RGB picture of
    smooth gradients and edges: the backend-equivalence tests compare the backends on it."""
    import numpy as np
    from PIL import Image

    path = CACHE_ROOT / "test-image-640x480.png"
    if not path.is_file():
        rows, cols = np.mgrid[0:480, 0:640]
        picture = np.stack([cols * 255 // 639, rows * 255 // 479, ((rows // 40 + cols // 40) % 2) * 200 + 20], -1)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture.astype(np.uint8)).save(path)
    return str(path)


def load(module: str) -> types.ModuleType:
    """transformers' `tests/<module>.py` for the installed version, e.g. load("test_modeling_common")."""
    _register_package(sdist_tests_dir())
    return importlib.import_module(f"{PACKAGE}.{module}")
