"""A Hugging Face Space that runs the demo (hf_mae/demo.py) on a model repo of the Hub.

The Space holds `app.py` (loads the model from its Hub repo and launches `build_demo`), `requirements.txt`
(hf_mae's own dependencies), `README.md` (the Space's settings: gradio SDK and version) and a copy of the
hf_mae package's Python files, so it runs without hf_mae being published anywhere.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token

from .http import _describe_http_error, hub_client_timeouts, hub_endpoint, hub_timeout, redact
from .push import HubPushError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SPACE_FILES = ("app.py", "requirements.txt", "README.md")

APP_TEMPLATE = '''"""hf_mae demo Space: masked-autoencoder reconstructions of {model_repo}."""

import os

from hf_mae.demo import build_demo

# Space variables may point the demo at another repo without editing this file.
MODEL = os.environ.get("HF_MAE_DEMO_MODEL", {model_repo!r})
CLASSIFIER = os.environ.get("HF_MAE_DEMO_CLASSIFIER", {classifier_repo!r}) or None

demo = build_demo(MODEL, classifier=CLASSIFIER)

if __name__ == "__main__":
    demo.launch()
'''

README_TEMPLATE = """---
title: {quoted_title}
emoji: 🧩
colorFrom: gray
colorTo: blue
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
models:
{models}
datasets:
- ylecun/mnist
tags:
- hf_mae
- masked-autoencoder
---

# {title}

Masked-autoencoder reconstructions of [{model_repo}](https://huggingface.co/{model_repo}): pick a held-out
digit or upload an image, choose the mask ratio and the seed, and see original | masked | reconstruction |
reconstruction with the visible patches. Built by `python scripts/demo.py --push_space` (hf_mae).
"""


def space_requirements() -> list[str]:
    """hf_mae's installed runtime dependencies (no extras); gradio comes from the README's `sdk_version`."""
    requirements = importlib.metadata.requires("hf_mae") or []
    return [r for r in requirements if "extra ==" not in r]


def _copy_package(destination: Path) -> None:
    """The package's Python files (the card templates and caches stay behind: the demo needs neither)."""
    for source in sorted(PACKAGE_ROOT.rglob("*.py")):
        relative = source.relative_to(PACKAGE_ROOT)
        if "__pycache__" in relative.parts or any((PACKAGE_ROOT / p).is_symlink() for p in relative.parents):
            continue
        target = destination / "hf_mae" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)


def build_space_folder(folder, *, model_repo: str, classifier_repo: str | None = None,
                       title: str | None = None) -> Path:
    """Write the Space's files into `folder` (new or empty); returns it."""
    import gradio

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: give a new or empty folder for the Space files")
    folder.mkdir(parents=True, exist_ok=True)
    title = title or f"hf_mae demo: {model_repo.split('/')[-1]}"
    (folder / "app.py").write_text(APP_TEMPLATE.format(model_repo=model_repo, classifier_repo=classifier_repo))
    (folder / "requirements.txt").write_text("\n".join(space_requirements()) + "\n")
    models = "\n".join(f"- {repo}" for repo in (model_repo, classifier_repo) if repo)
    (folder / "README.md").write_text(README_TEMPLATE.format(
        title=title, quoted_title=json.dumps(title), gradio_version=gradio.__version__, models=models,
        model_repo=model_repo))
    _copy_package(folder)
    return folder


def _check_repo_id(name: str, flag: str) -> None:
    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or Path(name).exists():
        raise ValueError(f"{flag} {name!r} is not a Hub repo id (USER/NAME); the Space loads its model from the "
                         f"Hub: push the run first (python scripts/push_to_hub.py --checkpoint RUN --pretrain_repo "
                         f"USER/NAME) and give that repo id")


def push_space(space_id: str, *, model_repo: str, classifier_repo: str | None = None, private: bool = False,
               token: str | None = None, timeout: float | None = None) -> str:
    """Create (or reuse) the gradio Space `space_id` and upload the demo for `model_repo` in one commit; returns
    the commit URL. Raises ValueError for a bad repo id and HubPushError when the Hub refuses or fails."""
    _check_repo_id(space_id, "--push_space")
    _check_repo_id(model_repo, "the Space's model")
    if classifier_repo:
        _check_repo_id(classifier_repo, "the Space's classifier")
    command = f"python scripts/demo.py --model {model_repo} --push_space {space_id}"
    token = token or get_token()
    if not token:
        raise HubPushError("no Hugging Face token found: set HF_TOKEN to a token with write access, or log in "
                           "once with `hf auth login`.", repo_id=space_id, retry_command=command)
    if constants.is_offline_mode():
        raise HubPushError("huggingface_hub is in offline mode (HF_HUB_OFFLINE=1 when it was imported): unset "
                           "it to push the Space.", repo_id=space_id, retry_command=command)
    api = HfApi(endpoint=hub_endpoint(), token=token, library_name="hf_mae")
    with tempfile.TemporaryDirectory(prefix="hf_mae_space_") as tmp, hub_client_timeouts(hub_timeout(timeout)):
        folder = build_space_folder(Path(tmp) / "space", model_repo=model_repo, classifier_repo=classifier_repo)
        try:
            api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private or None,
                            exist_ok=True)
            info = api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space",
                                     commit_message=f"hf_mae demo for {model_repo}")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # noqa: BLE001 - HTTP and network failures from the client
            detail = _describe_http_error(error, space_id, token)
        else:
            return info.commit_url
    raise HubPushError(redact(f"Pushing the Space {space_id} failed: {detail}\nRetry with:\n  {command}", token),
                       repo_id=space_id, retry_command=command)


__all__ = ["SPACE_FILES", "build_space_folder", "push_space", "space_requirements"]
