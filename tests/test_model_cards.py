"""Model cards: save_pretrained and push_to_hub write hf_mae's card; the templates ship in every wheel."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import subprocess_timeout, tiny_config
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from transformers import AutoModel

from hf_mae import MAEBackbone, MAEForImageClassification, MAEForPreTraining, MAEModel
from hf_mae.models.mae.card_mae import is_auto_model_card

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_test_token_cards"


@pytest.mark.parametrize("model_class, pipeline_tag, auto_class", [
    (MAEModel, "image-feature-extraction", "AutoModel"),
    (MAEForPreTraining, "image-feature-extraction", "AutoModelForPreTraining"),
    (MAEForImageClassification, "image-classification", "AutoModelForImageClassification"),
    (MAEBackbone, "image-feature-extraction", "AutoBackbone"),
])
def test_save_pretrained_writes_a_card(tmp_path, model_class, pipeline_tag, auto_class):
    model_class(tiny_config(num_labels=2)).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert {"mae", "self-supervised", "vision", "hf_mae"} <= set(card.data.tags)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == pipeline_tag
    assert metadata_load(tmp_path / "README.md")["license"] == "apache-2.0"
    assert "[More Information Needed]" not in card.text and f"`{model_class.__name__}`" in card.text
    assert f"{auto_class}.from_pretrained(repo_id, trust_remote_code=True)" in card.text
    assert "32-d, 2 blocks, 2 heads, 4x4 patches" in card.text and "16x16 pixels, 3 channel(s)" in card.text


def test_the_card_snippet_runs(tmp_path):
    folder = tmp_path / "encoder"
    MAEModel(tiny_config()).save_pretrained(folder)
    from hf_mae import MAEImageProcessor
    MAEImageProcessor.for_config(tiny_config()).save_pretrained(folder)
    snippet = ModelCard.load(folder / "README.md").text.split("```python", 1)[1].split("```", 1)[0]
    from PIL import Image
    Image.new("RGB", (20, 20), (10, 200, 30)).save(tmp_path / "image.png")
    scope = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(snippet, scope)  # the snippet exactly as a reader copies it
    finally:
        os.chdir(cwd)
    assert scope["features"].shape == (1, 17, 32)


def test_the_short_card_names_its_datasets_and_never_a_staging_folder(tmp_path):
    from hf_mae.models.mae.card_mae import write_model_card

    staging = tmp_path / ".encoder.abc123.tmp"
    staging.mkdir()
    assert write_model_card(MAEModel(tiny_config()), staging, datasets=["ylecun/mnist"])
    assert metadata_load(staging / "README.md")["datasets"] == ["ylecun/mnist"]
    text = (staging / "README.md").read_text()
    assert ".abc123" not in text and 'repo_id = "path/to/this/folder"' in text


def test_a_card_that_is_not_ours_is_kept(tmp_path):
    (tmp_path / "README.md").write_text("# my notes\n")
    model = MAEModel(tiny_config())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my notes\n"
    shutil.rmtree(tmp_path)
    model.save_pretrained(tmp_path)  # ours: rewritten on the next save, with the current numbers
    assert is_auto_model_card(tmp_path / "README.md")
    MAEModel(tiny_config(hidden_size=64)).save_pretrained(tmp_path)
    assert "64-d" in (tmp_path / "README.md").read_text()


PUSH_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_config
    from hf_mae import MAEForPreTraining
    MAEForPreTraining(tiny_config()).push_to_hub("tester/mae-card", commit_message="upload")
    MAEForPreTraining(tiny_config()).save_pretrained(sys.argv[2], push_to_hub=True, repo_id="tester/mae-card-2")
""")


@pytest.mark.slow
def test_push_to_hub_uploads_the_card_and_the_code(tmp_path):
    from hub_server import FakeHub

    with FakeHub(TOKEN) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf_home")}
        proc = subprocess.run([sys.executable, "-c", PUSH_CHILD, str(Path(__file__).parent), str(tmp_path / "local")],
                              env=env, capture_output=True, text=True, timeout=subprocess_timeout(120))
        assert proc.returncode == 0, proc.stderr[-3000:]
        for repo_id in ("tester/mae-card", "tester/mae-card-2"):
            repo = hub.repos[("model", repo_id)]
            files = repo.commits[-1]["files"]
            assert {"README.md", "config.json", "model.safetensors", "modeling_mae.py",
                    "configuration_mae.py", "image_processing_mae.py", "card_mae.py", "layers_mae.py",
                    "classification_mae.py", "backbone_mae.py"} <= set(files), sorted(files)
            readme = files["README.md"].decode()
            assert "[More Information Needed]" not in readme and "- hf_mae" in readme
            assert f'repo_id = "{repo_id}"' in readme
            assert json.loads(files["config.json"])["auto_map"]["AutoBackbone"] == "backbone_mae.MAEBackbone"


def test_templates_ship_in_the_wheel(tmp_path):
    """Build a wheel from a copy of the sources (no build/ left in the checkout) and look inside."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "model_cards"):
        target = source / name
        (shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy)(REPO_ROOT / name, target)
    shutil.copytree(REPO_ROOT / "hf_mae", source / "hf_mae", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert (source / "hf_mae" / "model_cards").is_symlink()
    templates = sorted(p.name for p in (REPO_ROOT / "model_cards").glob("*.md"))
    assert templates == ["encoder.md", "pretraining.md", "probe.md", "segmentation.md"]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "wheels")], capture_output=True, text=True,
                          timeout=subprocess_timeout(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("hf_mae-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for name in templates:
            packed = archive.read(f"hf_mae/model_cards/{name}")
            assert packed == (REPO_ROOT / "model_cards" / name).read_bytes()
        packed_names = set(archive.namelist())
    package = REPO_ROOT / "hf_mae"
    code = {p.relative_to(REPO_ROOT).as_posix() for p in [*(package / "models" / "mae").glob("*_mae.py"),
                                                          *(package / "evaluation" / "metrics").glob("*.py")]}
    assert code <= packed_names, sorted(code - packed_names)  # the remote-code unit and the metric modules


def test_loaded_card_folder_still_loads(tmp_path):
    """The README next to the weights is only documentation: loading ignores it."""
    model = MAEModel(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 16, 16)
    assert torch.equal(loaded(pixels).last_hidden_state, model(pixels).last_hidden_state)


def test_only_the_main_process_writes_the_card(tmp_path):
    MAEModel(tiny_config()).save_pretrained(tmp_path, is_main_process=False)
    assert not (tmp_path / "README.md").exists()


PROCESSOR_AFTER_MODEL_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_config
    from hf_mae import MAEImageProcessor, MAEModel
    MAEModel(tiny_config()).push_to_hub("tester/mae-keep", commit_message="model")
    MAEImageProcessor.for_config(tiny_config()).push_to_hub("tester/mae-keep", commit_message="processor")
    MAEImageProcessor.for_config(tiny_config()).push_to_hub("tester/processor-only")
""")


@pytest.mark.slow
def test_a_later_processor_push_keeps_the_card(tmp_path):
    """transformers' PushToHubMixin writes a generic README on every push; hf_mae's card stays the repo's card."""
    from hub_server import FakeHub

    with FakeHub(TOKEN) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf_home")}
        proc = subprocess.run([sys.executable, "-c", PROCESSOR_AFTER_MODEL_CHILD, str(Path(__file__).parent)],
                              env=env, capture_output=True, text=True, timeout=subprocess_timeout(120))
        assert proc.returncode == 0, proc.stderr[-3000:]
        commits = hub.repos[("model", "tester/mae-keep")].commits
        assert "preprocessor_config.json" in commits[-1]["files"]
        readme = [c["files"]["README.md"] for c in commits if "README.md" in c["files"]]
        (tmp_path / "README.md").write_bytes(readme[-1])
        meta = metadata_load(tmp_path / "README.md")
        assert is_auto_model_card(tmp_path / "README.md") and "[More Information Needed]" not in readme[-1].decode()
        assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "image-feature-extraction"
        only = hub.repos[("model", "tester/processor-only")].commits[-1]["files"]
        assert "preprocessor_config.json" in only and b"[More Information Needed]" not in only.get("README.md", b"")


@pytest.mark.parametrize("dataset, model, datasets, base_model", [
    (None, "me/mae-mnist", ["ylecun/mnist"], "me/mae-mnist"),  # the digit scenes: embedded MNIST digits
    ("scene_parse_150", "/runs/pretrain", ["scene_parse_150"], None),  # a local encoder is never named
])
def test_segmentation_card_names_its_data_and_encoder(tmp_path, dataset, model, datasets, base_model):
    from hf_mae.hub.cards import segmentation_card

    backbone = {"hidden_size": 32, "num_hidden_layers": 2, "patch_size": 4, "out_indices": [1, 2]}
    (tmp_path / "config.json").write_text(json.dumps({"backbone_config": backbone, "id2label": {"0": "bg", "1": "d"}}))
    results = {"mean_iou": 12.5, "pixel_accuracy": 91.0, "eval_split": "validation", "eval_mode": "whole",
               "model": model, "dataset": dataset, "layer_decay": 0.65, "drop_path": 0.1, "init": "pretrained",
               "crop_size": 56, "optimizer_steps": 2, "effective_batch_size": 4, "learning_rate": 1e-4}
    (tmp_path / "results.json").write_text(json.dumps(results))
    segmentation_card(tmp_path, "me/digit-seg").save(tmp_path / "README.md")
    meta = metadata_load(tmp_path / "README.md")
    assert meta["license"] == "apache-2.0" and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "image-segmentation" and "hf_mae" in meta["tags"]
    assert meta.get("datasets") == datasets and meta.get("base_model") == base_model
    metrics = {r.metric_type: r.metric_value for r in ModelCard.load(tmp_path / "README.md").data.eval_results}
    assert metrics == {"mean_iou": 12.5, "pixel_accuracy": 91.0}


def test_the_demo_space_card_names_its_models_and_data(tmp_path):
    pytest.importorskip("gradio", reason="the demo extra (pip install -e '.[demo]') builds the Space's README")
    from hf_mae.hub.space import build_space_folder

    build_space_folder(tmp_path / "space", model_repo="me/mae-mnist", classifier_repo="me/mae-mnist-probe")
    meta = metadata_load(tmp_path / "space" / "README.md")
    assert meta["license"] == "apache-2.0" and meta["models"] == ["me/mae-mnist", "me/mae-mnist-probe"]
    assert meta["datasets"] == ["ylecun/mnist"] and "hf_mae" in meta["tags"]  # the held-out digits it offers
