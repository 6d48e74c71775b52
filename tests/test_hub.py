"""Hub sharing (hf_mae.hub; its CLI is `python -m hf_mae.push_to_hub`, also run by the scripts/push_to_hub.py shim).

(1) The artifact: exact upload files, auto_map, card metadata read back with `ModelCard.load`, every built
    folder loaded in a subprocess where hf_mae cannot be imported (remote code for --format hf_mae, plain
    transformers for --format vit, parity with the hf_mae models at atol 1e-5), and the cards' usage
    snippets run there.
(2) The upload: a CONTRACT test of the real huggingface_hub client against `hub_server.FakeHub` on 127.0.0.1,
    not a test of Hub fidelity: it checks which requests we make and what they carry (files, weights hash,
    commit message, revision, private flag, one commit per repo), and the failures (no token, a repo of
    another type, a dropped connection mid-commit, transient 5xx answers, a commit that is never answered, an
    endpoint that never answers at all (`hub_server.SilentServer`), a server that echoes the token).
(3) An opt-in round trip against a real Hub endpoint (HF_MAE_HUB_TEST=1 and a token), skipped otherwise.
"""

import hashlib
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.utils._http as hf_http
import pytest
import torch
from conftest import FAKE_HUB_TOKEN, subprocess_timeout, tiny_config
from hub_server import SilentServer
from huggingface_hub import ModelCard, close_session, constants
from PIL import Image
from transformers import AutoImageProcessor

from hf_mae import MAEForImageClassification, MAEForPreTraining, MAEImageProcessor, MAEModel
from hf_mae.hub import push as hub_module
from hf_mae.hub.cards import render_model_card
from hf_mae.hub.folders import build_encoder_folder, build_upload_folders, vit_classifier_from_mae
from hf_mae.hub.push import HubPushError, push_pretraining_outputs, push_probe, push_to_hub
from hf_mae.models.mae.modeling_mae import AUTO_MAP

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = FAKE_HUB_TOKEN  # the `hub` fixture's (conftest)
CODE = {"configuration_mae.py", "modeling_mae.py", "image_processing_mae.py", "card_mae.py", "layers_mae.py",
        "classification_mae.py", "backbone_mae.py", "segmentation_mae.py"}
MODEL = {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"}
EXPECTED_FILES = {
    ("pretraining", "hf_mae"): MODEL | CODE | {"training_args.json", "results.json", "log.jsonl",
                                              "loss_curve.png", "reconstruction_final.png"},
    ("encoder", "hf_mae"): MODEL | CODE,
    ("probe", "hf_mae"): MODEL | CODE | {"results.json"},
    ("encoder", "vit"): MODEL,
    ("probe", "vit"): MODEL | {"results.json"},
}
LABELS = ["zero", "one", "two", "three"]
TRAINING_ARGS = {"epochs": 3, "per_device_batch_size": 8, "gradient_accumulation_steps": 2, "blr": 1.5e-4,
                 "mask_ratio": 0.75, "norm_pix_loss": True, "dataset_name": None, "preset": None,
                 "recon_statistics": "visible"}
PRETRAIN_RESULTS = {"final_loss": 0.61234, "knn_top1": 88.5, "wall_time_s": 42.0, "effective_batch_size": 16,
                    "lr": 9.375e-06, "epochs": 3}
PROBE_RESULTS = {"top1": 91.25, "top5": 99.5, "pooling": "cls", "epochs": 5, "dataset": None,
                 "eval_split": "validation", "optimizer": "LARS", "num_eval": 1000, "features": "pretrained"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_state(root: Path) -> dict[str, str]:
    """Every file under root with its content hash: equal before and after means the folder is untouched."""
    return {p.relative_to(root).as_posix(): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _classifier(encoder: MAEModel, **overrides) -> MAEForImageClassification:
    config = tiny_config(id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                         **overrides)
    model = MAEForImageClassification(config)
    model.encoder.load_state_dict(encoder.state_dict())
    with torch.no_grad():  # a trained-looking probe: non-trivial BatchNorm statistics and head
        if model.is_linear_probe:
            model.fc_norm.running_mean.normal_(0, 0.5)
            model.fc_norm.running_var.uniform_(0.2, 3.0)
        else:
            model.fc_norm.weight.uniform_(0.5, 1.5)
            model.fc_norm.bias.normal_(0, 0.1)
        model.head.weight.normal_(0, 0.3)
        model.head.bias.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A pretraining output folder and linear-probe output folders, as the training scripts write them."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("runs")
    pre = root / "pretrain"
    model = MAEForPreTraining(tiny_config()).eval()
    processor = MAEImageProcessor.for_config(model.config)
    model.save_pretrained(pre)
    processor.save_pretrained(pre)
    model.encoder.save_pretrained(pre / "encoder")
    processor.save_pretrained(pre / "encoder")
    (pre / "training_args.json").write_text(json.dumps(TRAINING_ARGS))
    (pre / "results.json").write_text(json.dumps(PRETRAIN_RESULTS))
    (pre / "log.jsonl").write_text('{"step": 1, "loss": 1.2}\n{"step": 2, "loss": 0.6}\n')
    for name in ("loss_curve.png", "reconstruction_final.png"):
        Image.new("RGB", (8, 8), "white").save(pre / name)
    (pre / "reconstructions").mkdir()  # run leftovers that must not be uploaded
    Image.new("RGB", (8, 8)).save(pre / "reconstructions" / "epoch_0001.png")
    (pre / "checkpoints" / "checkpoint_1").mkdir(parents=True)
    (pre / "checkpoints" / "checkpoint_1" / "optimizer.bin").write_bytes(b"\0" * 64)

    probes = {}
    for name, overrides in {"probe_cls": {}, "probe_mean": {"pooling": "mean"}}.items():
        probes[name] = root / name
        _classifier(model.encoder, **overrides).save_pretrained(probes[name])
        processor.save_pretrained(probes[name])
        (probes[name] / "results.json").write_text(json.dumps({**PROBE_RESULTS, **overrides}))
    return SimpleNamespace(root=root, pre=pre, probe=probes["probe_cls"], probe_mean=probes["probe_mean"],
                           state={p: tree_state(p) for p in (pre, *probes.values())})


def assert_untouched(runs):
    for path, state in runs.state.items():
        assert tree_state(path) == state, f"{path} was modified"


@pytest.fixture(scope="module")
def built(runs, tmp_path_factory):
    """The upload folders of both formats, built as a push would build them."""
    out = tmp_path_factory.mktemp("built")
    repos = dict(encoder_repo="tester/mae-enc", probe_repo="tester/mae-probe")
    uploads = build_upload_folders(out / "hf_mae", checkpoint=runs.pre, probe=runs.probe,
                                   pretrain_repo="tester/mae", **repos)
    uploads += build_upload_folders(out / "vit", checkpoint=runs.pre, probe=runs.probe, format="vit", **repos)
    return {(up.kind, up.format): up for up in uploads}


# ----------------------------------------------------------------------------------------------------------
# (1) the artifact
# ----------------------------------------------------------------------------------------------------------
def test_upload_folders_hold_exactly_the_expected_files(built, runs):
    assert set(built) == set(EXPECTED_FILES)
    for key, upload in built.items():
        assert set(upload.files()) == EXPECTED_FILES[key], key
    # hf_mae folders carry the saved weights byte for byte
    assert sha256(built["encoder", "hf_mae"].folder / "model.safetensors") == sha256(
        runs.pre / "encoder" / "model.safetensors")
    assert sha256(built["pretraining", "hf_mae"].folder / "model.safetensors") == sha256(
        runs.pre / "model.safetensors")
    assert sha256(built["probe", "hf_mae"].folder / "model.safetensors") == sha256(
        runs.probe / "model.safetensors")
    assert_untouched(runs)


def test_configs_auto_map_and_stock_vit(built):
    for kind in ("pretraining", "encoder", "probe"):
        folder = built[kind, "hf_mae"].folder
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == AUTO_MAP and config["model_type"] == "hf_mae"
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor["auto_map"] == {"AutoImageProcessor": AUTO_MAP["AutoImageProcessor"]}
    for kind, architecture in (("encoder", "ViTModel"), ("probe", "ViTForImageClassification")):
        folder = built[kind, "vit"].folder
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "vit" and "auto_map" not in config
        assert config["architectures"] == [architecture] and config["layer_norm_eps"] == 1e-6
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert processor["image_processor_type"] == "ViTImageProcessor" and "auto_map" not in processor
    vit_probe = json.loads((built["probe", "vit"].folder / "config.json").read_text())
    assert vit_probe["id2label"] == {str(i): n for i, n in enumerate(LABELS)}


def test_cards_metadata_read_back(built):
    expected_tags = {"mae", "self-supervised", "vision", "hf_mae"}
    for (kind, fmt), upload in built.items():
        path = upload.folder / "README.md"
        card = ModelCard.load(path)
        data = card.data.to_dict()
        assert data["license"] == "apache-2.0" and data["library_name"] == "transformers"
        pipeline = "image-classification" if kind == "probe" else "image-feature-extraction"
        assert data["pipeline_tag"] == pipeline
        assert expected_tags <= set(data["tags"])
        assert ("custom_code" in data["tags"]) == (fmt == "hf_mae")
        assert data["datasets"] == ["ylecun/mnist"]  # the embedded default digits: the Hub's MNIST, named
        assert card.data.eval_results[0].dataset_type == "ylecun/mnist"
        # the model-index holds the probe's results, read back as EvalResults
        results = {r.metric_type: r for r in card.data.eval_results}
        assert results["accuracy"].metric_value == 91.25 and results["top_5_accuracy"].metric_value == 99.5
        assert results["accuracy"].task_type == "image-classification"
        assert results["accuracy"].dataset_split == "validation"
        assert ModelCard(path.read_text()).data.to_dict() == data  # loading is lossless
        assert "tester/" in card.text and "```python" in card.text
    assert ModelCard.load(built["probe", "vit"].folder / "README.md").data.base_model == "tester/mae-enc"
    for kind in ("encoder", "pretraining"):  # the encoder is the base: nothing is named above it
        assert ModelCard.load(built[kind, "hf_mae"].folder / "README.md").data.base_model is None
    pretraining = (built["pretraining", "hf_mae"].folder / "README.md").read_text()
    for row in ("| Epochs | 3 |", "| Effective batch size | 16 |", "| Base learning rate (blr) | 1.50e-04 |",
                "| Mask ratio | 0.75 |", "| Norm-pix loss (per-patch normalised targets) | yes |",
                "| Final training loss | 0.6123 |"):
        assert row in pretraining, row
    assert 'statistics="visible"' in pretraining and 'statistics="target"' in pretraining
    assert "leaks the" in pretraining and "![loss_curve.png](loss_curve.png)" in pretraining
    assert "5,000 MNIST digits" in pretraining
    probe_card = (built["probe", "vit"].folder / "README.md").read_text()
    for row in ("| Top-1 accuracy | 91.25% |", "| Top-5 accuracy | 99.50% |", "| Probe optimizer | LARS |",
                "| Held-out images | 1000 |", "| Final training loss | 0.6123 |"):
        assert row in probe_card, row


def test_card_with_hub_dataset_declares_it(built):
    folder = built["probe", "hf_mae"].folder
    card = render_model_card("probe", folder, repo_id="tester/p",
                             training_args={"dataset_name": "ILSVRC/imagenet-1k"},
                             probe_results={"top1": 70.0, "dataset": "ILSVRC/imagenet-1k",
                                            "split": "validation"})
    data = ModelCard(str(card)).data
    assert data.datasets == ["ILSVRC/imagenet-1k"]
    assert [(r.dataset_type, r.dataset_split, r.metric_value) for r in data.eval_results] == [
        ("ILSVRC/imagenet-1k", "validation", 70.0)]
    assert "[ILSVRC/imagenet-1k](/datasets/ILSVRC/imagenet-1k)" in card.text
    local = render_model_card("encoder", built["encoder", "hf_mae"].folder, repo_id="tester/e",
                              training_args={"dataset_name": None, "train_dir": "/data/my_photos"})
    assert "| Data | a local dataset (`my_photos`) |" in local.text and "MNIST" not in local.text
    assert "/data/" not in local.text  # local paths are not published
    assert ModelCard(str(local)).data.datasets is None


CHILD = textwrap.dedent("""
    import contextlib, io, json, sys
    sys.modules["hf_mae"] = None  # any `import hf_mae` now fails
    import torch
    from PIL import Image
    from transformers import (AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              AutoModelForPreTraining)
    spec = json.loads(open(sys.argv[1]).read())
    pixels, noise = torch.load(spec["pixels"]), torch.load(spec["noise"])
    image = Image.open(spec["image"])
    out = {}
    for name, item in spec["folders"].items():
        kwargs = {"trust_remote_code": True} if item["format"] == "hf_mae" else {}
        if item["kind"] == "encoder":
            extra = {} if item["format"] == "hf_mae" else {"add_pooling_layer": False}
            model, info = AutoModel.from_pretrained(item["path"], output_loading_info=True, **kwargs, **extra)
            value = model.eval()(pixels).last_hidden_state
        elif item["kind"] == "probe":
            model, info = AutoModelForImageClassification.from_pretrained(
                item["path"], output_loading_info=True, **kwargs)
            value = model.eval()(pixels).logits
        else:
            model, info = AutoModelForPreTraining.from_pretrained(
                item["path"], output_loading_info=True, **kwargs)
            value = model.eval()(pixels, noise=noise).logits
        processor = AutoImageProcessor.from_pretrained(item["path"], **kwargs)
        out[name] = {"model": type(model).__name__, "module": type(model).__module__,
                     "processor": type(processor).__name__, "value": value.detach(),
                     "processed": processor(images=image, return_tensors="pt").pixel_values,
                     "missing": list(info["missing_keys"]), "unexpected": list(info["unexpected_keys"])}
    for name, code in spec["snippets"].items():
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
        out["snippet " + name] = printed.getvalue()
    out["hf_mae_modules"] = sorted(m for m in sys.modules if m.startswith("hf_mae."))
    torch.save(out, spec["output"])
""")


def card_snippet(readme: Path, repo_id: str, folder: Path) -> str:
    code = re.search(r"```python\n(.*?)```", readme.read_text(), re.DOTALL).group(1)
    assert f'repo_id = "{repo_id}"' in code
    return code.replace(f'"{repo_id}"', repr(str(folder)))


@pytest.fixture(scope="module")
def loaded(built, tmp_path_factory):
    """Load every built folder and run every card snippet in ONE subprocess where hf_mae is not importable."""
    tmp = tmp_path_factory.mktemp("loaded")
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 16, 16)
    noise = torch.rand(2, 16)
    torch.save(pixels, tmp / "pixels.pt")
    torch.save(noise, tmp / "noise.pt")
    Image.fromarray((torch.rand(20, 26, 3) * 255).to(torch.uint8).numpy()).save(tmp / "image.png")
    folders = {f"{kind}-{fmt}": {"path": str(up.folder), "kind": kind, "format": fmt}
               for (kind, fmt), up in built.items()}
    snippets = {f"{kind}-{fmt}": card_snippet(up.folder / "README.md", up.repo_id, up.folder)
                for (kind, fmt), up in built.items()}
    spec = {"pixels": str(tmp / "pixels.pt"), "noise": str(tmp / "noise.pt"), "image": str(tmp / "image.png"),
            "folders": folders, "snippets": snippets, "output": str(tmp / "out.pt")}
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp / "modules")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "spec.json")], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=subprocess_timeout(300))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return SimpleNamespace(out=torch.load(tmp / "out.pt"), pixels=pixels, noise=noise,
                           image=Image.open(tmp / "image.png"))


@pytest.mark.slow
def test_folders_load_without_hf_mae_and_match(loaded, runs):
    out = loaded.out
    assert out["hf_mae_modules"] == []
    expected_classes = {"pretraining-hf_mae": "MAEForPreTraining", "encoder-hf_mae": "MAEModel",
                        "probe-hf_mae": "MAEForImageClassification", "encoder-vit": "ViTModel",
                        "probe-vit": "ViTForImageClassification"}
    for name, cls in expected_classes.items():
        assert out[name]["model"] == cls, name
        assert out[name]["missing"] == [] and out[name]["unexpected"] == [], name
        module = "transformers.models.vit" if name.endswith("-vit") else "transformers_modules"
        assert out[name]["module"].startswith(module), name
    with torch.no_grad():
        full = MAEForPreTraining.from_pretrained(runs.pre).eval()
        encoder = MAEModel.from_pretrained(runs.pre / "encoder").eval()
        probe = MAEForImageClassification.from_pretrained(runs.probe).eval()
        features = encoder(loaded.pixels).last_hidden_state
        logits = probe(loaded.pixels).logits
        reconstruction = full(loaded.pixels, noise=loaded.noise).logits
    torch.testing.assert_close(out["pretraining-hf_mae"]["value"], reconstruction, atol=1e-5, rtol=0)
    for fmt in ("hf_mae", "vit"):  # --format vit: stock ViT parity at atol 1e-5
        torch.testing.assert_close(out[f"encoder-{fmt}"]["value"], features, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[f"probe-{fmt}"]["value"], logits, atol=1e-5, rtol=0)
    assert logits.std() > 0.1  # the BatchNorm fold is exercised by non-trivial statistics
    # the stock ViTImageProcessor config reproduces the MAE eval transform
    processor = MAEImageProcessor.from_pretrained(runs.pre)
    reference = processor(images=loaded.image, return_tensors="pt").pixel_values
    for name in expected_classes:
        assert out[name]["processor"] in ("MAEImageProcessor", "ViTImageProcessorPil", "ViTImageProcessor")
        torch.testing.assert_close(out[name]["processed"], reference, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_card_snippets_run_without_hf_mae(loaded):
    out = loaded.out
    assert "torch.Size([1, 32]) torch.Size([1, 16, 32])" in out["snippet encoder-hf_mae"]
    assert "torch.Size([1, 32]) torch.Size([1, 16, 32])" in out["snippet encoder-vit"]
    for fmt in ("hf_mae", "vit"):
        printed = out[f"snippet probe-{fmt}"].split("\n")
        assert [line.split()[0] for line in printed if line] and all(
            line.split()[0] in LABELS for line in printed if line)
    assert re.search(r"loss \d+\.\d{4} torch.Size\(\[1, 3, 16, 16\]\)", out["snippet pretraining-hf_mae"])


def test_vit_format_needs_cls_pooling(runs, tmp_path):
    with pytest.raises(ValueError, match=r"pooling='mean'.*--format hf_mae"):
        build_upload_folders(tmp_path / "out", probe=runs.probe_mean, probe_repo="tester/p", format="vit")
    assert_untouched(runs)


def test_encoder_from_a_checkpoint_without_encoder_folder(runs, tmp_path):
    checkpoint = tmp_path / "full_only"
    shutil.copytree(runs.pre, checkpoint, ignore=shutil.ignore_patterns("encoder"))
    for fmt in ("hf_mae", "vit"):
        folder = build_encoder_folder(checkpoint, tmp_path / fmt, format=fmt)
        expected = EXPECTED_FILES["encoder", fmt] - {"README.md"}  # the card is rendered afterwards
        assert {p.name for p in folder.iterdir()} - {"README.md"} == expected
    reference = MAEModel.from_pretrained(runs.pre / "encoder").state_dict()
    extracted = MAEModel.from_pretrained(tmp_path / "hf_mae").state_dict()
    assert reference.keys() == extracted.keys()
    assert all(torch.equal(reference[k], extracted[k]) for k in reference)
    assert json.loads((tmp_path / "hf_mae" / "config.json").read_text())["auto_map"] == AUTO_MAP


def test_vit_export_of_a_grayscale_encoder(tmp_path):
    """The embedded default data is 1-channel: the stock processor must keep grayscale images as they are."""
    config = tiny_config(num_channels=1)
    source = tmp_path / "gray"
    MAEModel(config).save_pretrained(source)
    MAEImageProcessor.for_config(config).save_pretrained(source)
    folder = build_encoder_folder(source, tmp_path / "vit", format="vit")
    image = Image.fromarray((torch.rand(19, 23) * 255).to(torch.uint8).numpy(), mode="L")
    stock = AutoImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt").pixel_values
    ours = MAEImageProcessor.from_pretrained(source)(images=image, return_tensors="pt").pixel_values
    assert stock.shape == (1, 1, 16, 16)
    torch.testing.assert_close(stock, ours, atol=1e-5, rtol=0)
    card = render_model_card("encoder", folder, repo_id="tester/gray", format="vit")
    assert 'Image.new("L", (16, 16))' in card.text and "grayscale" in card.text


def test_vit_export_of_a_finetuned_cls_classifier(runs):
    model = _classifier(MAEModel(tiny_config()), classifier_head="finetune")
    pixels = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit_classifier_from_mae(model)(pixels).logits, model(pixels).logits,
                                   atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# (2) the upload: contract tests against a local fake Hub
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_backoff_sleep(monkeypatch):
    """The client retries dropped connections with 1-8 s sleeps, and hf_mae retries a failed push 2, 4 s later;
    keep the retries, skip the waiting."""
    monkeypatch.setattr(hf_http, "time", SimpleNamespace(**{**vars(hf_http.time), "sleep": lambda s: None}))
    monkeypatch.setattr(hub_module, "RETRY_BACKOFF_S", 0.0)


def run_cli(argv: list[str]) -> int:
    """`python -m hf_mae.push_to_hub ARGV` in this process; the exit status."""
    from hf_mae.cli import push_to_hub as cli

    return cli.main(cli.parse_args(argv))


@pytest.mark.parametrize("client_path", ["xet-pipeline", "create_commit"])
def test_push_all_three_one_commit_each(hub, runs, client_path, monkeypatch, caplog, capfd):
    # huggingface_hub's upload_folder takes a pipelined path when hf_xet is installed, create_commit otherwise
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", client_path == "create_commit")
    caplog.set_level(logging.DEBUG)
    pushed = push_to_hub(checkpoint=runs.pre, probe=runs.probe, encoder_repo="tester/mae-enc",
                         probe_repo="tester/mae-probe", pretrain_repo="tester/mae", format="vit",
                         private=True, revision="v1", commit_message="hf_mae test push")
    assert set(pushed) == {"tester/mae", "tester/mae-enc", "tester/mae-probe"}
    for repo_id, kind, fmt in (("tester/mae", "pretraining", "hf_mae"), ("tester/mae-enc", "encoder", "vit"),
                               ("tester/mae-probe", "probe", "vit")):
        repo = hub.repo(repo_id)
        assert repo.private and repo.created_with["visibility"] == "private"
        assert len(repo.commits) == 1, "one commit per repo"
        commit = repo.commits[0]
        assert commit["revision"] == "v1" and commit["summary"] == "hf_mae test push"
        assert pushed[repo_id].endswith(commit["oid"])
        assert set(commit["files"]) == EXPECTED_FILES[kind, fmt], repo_id
        assert ModelCard(commit["files"]["README.md"].decode()).data.pipeline_tag
        assert ("POST", f"/api/models/{repo_id}/branch/v1") in hub.requests
    files = hub.files("tester/mae", "v1")
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() == sha256(runs.pre / "model.safetensors")
    assert files["training_args.json"] == (runs.pre / "training_args.json").read_bytes()
    assert hub.unauthorized == []  # every request carried the token ...
    captured = capfd.readouterr()
    assert TOKEN not in caplog.text + captured.out + captured.err  # ... and nothing printed or logged it
    assert_untouched(runs)


def test_push_from_training_scripts_defaults(hub, runs):
    pushed = push_pretraining_outputs(runs.pre, "tester/mae")
    assert list(pushed) == ["tester/mae", "tester/mae-encoder"]
    encoder = hub.repo("tester/mae-encoder")
    assert "visibility" not in encoder.created_with and not encoder.private  # the namespace default applies
    assert [c["revision"] for c in encoder.commits] == ["main"] and encoder.commits[0]["summary"] == \
        "Upload MAE encoder"
    assert set(encoder.commits[0]["files"]) == EXPECTED_FILES["encoder", "hf_mae"]
    assert not any("/branch/" in path for _, path in hub.requests)
    url = push_probe(runs.probe, "tester/mae-probe", checkpoint=runs.pre)
    probe_files = hub.files("tester/mae-probe")
    assert url.endswith(hub.repo("tester/mae-probe").commits[0]["oid"])
    assert probe_files["model.safetensors"] == (runs.probe / "model.safetensors").read_bytes()
    assert "| Final training loss | 0.6123 |" in probe_files["README.md"].decode()  # recipe from --checkpoint
    push_pretraining_outputs(runs.pre, "tester/mae")  # pushing again to existing repos works: a second commit
    assert len(hub.repo("tester/mae").commits) == 2
    assert_untouched(runs)


def test_no_token_fails_before_any_request(hub, runs, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubPushError) as info:
        push_pretraining_outputs(runs.pre, "tester/mae")
    message = str(info.value)
    assert "no Hugging Face token" in message and "hf auth login" in message
    assert "untouched" in message and str(runs.pre.resolve()) in message
    assert info.value.retry_command in message and "--pretrain_repo tester/mae" in info.value.retry_command
    assert hub.requests == []
    assert_untouched(runs)


def test_refused_token_is_reported_without_the_token(hub, runs, monkeypatch):
    wrong = "hf_WRONGtoken0123456789"
    monkeypatch.setenv("HF_TOKEN", wrong)
    with pytest.raises(HubPushError) as info:
        push_to_hub(checkpoint=runs.pre, encoder_repo="tester/mae-enc")
    message = str(info.value)
    assert "refused the token (HTTP 401" in message and "write access" in message
    assert wrong not in message and "Retry with:" in message
    assert hub.repos == {} and not hub.commit_attempts
    assert_untouched(runs)


@pytest.mark.parametrize("answer", [
    (409, {"error": "You already created a dataset repo with this name",
           "url": "{url}/datasets/tester/mae-enc"}),
    (400, {"error": "A dataset repository with this name already exists"}),
], ids=["409-with-dataset-url", "400"])
def test_repo_of_another_type(hub, runs, answer):
    status, body = answer
    hub.conflict = (status, {k: v.format(url=hub.url) for k, v in body.items()})
    with pytest.raises(HubPushError) as info:
        push_to_hub(checkpoint=runs.pre, encoder_repo="tester/mae-enc")
    message = str(info.value)
    assert "tester/mae-enc" in message and "dataset" in message and "untouched" in message
    assert "Retry with:\n  HF_ENDPOINT=" in message and "--encoder_repo tester/mae-enc" in message
    assert not hub.commit_attempts and not any("preupload" in path for _, path in hub.requests)
    assert_untouched(runs)


@pytest.mark.parametrize("client_path", ["xet-pipeline", "create_commit"])
def test_connection_dropped_mid_commit_then_retry(hub, runs, client_path, monkeypatch, no_backoff_sleep,
                                                  capfd):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", client_path == "create_commit")
    hub.drop_commits = {"tester/mae-enc"}
    with pytest.raises(HubPushError) as info:
        push_to_hub(checkpoint=runs.pre, pretrain_repo="tester/mae", encoder_repo="tester/mae-enc",
                    commit_message="first try")
    message = str(info.value)
    assert "Pushing the MAE encoder to tester/mae-enc" in message and "network failure" in message
    assert "untouched" in message and "Already pushed: tester/mae" in message
    assert hub.commit_attempts["tester/mae-enc"] >= 1 and hub.repo("tester/mae-enc").commits == []
    assert_untouched(runs)
    # the printed command, run as printed, finishes the job once the network is back
    hub.drop_commits = False
    env_part, command = info.value.retry_command.split(" ", 1)
    assert env_part == f"HF_ENDPOINT={hub.url}"
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "hf_mae.push_to_hub"]  # no path into a source checkout: works after any install
    assert run_cli(argv[3:]) == 0
    assert [c["summary"] for c in hub.repo("tester/mae-enc").commits] == ["first try"]
    captured = capfd.readouterr()
    assert TOKEN not in message + captured.out + captured.err
    assert_untouched(runs)


@pytest.mark.slow
def test_cli_subprocess_honours_hf_endpoint(hub, runs, tmp_path):
    """`python scripts/push_to_hub.py` from the repo root; HF_ENDPOINT set before huggingface_hub loads."""
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf_home"), "NO_PROXY": "127.0.0.1,localhost"}
    proc = subprocess.run([sys.executable, "scripts/push_to_hub.py", "--checkpoint", str(runs.pre),
                           "--encoder_repo", "tester/cli-enc", "--format", "vit", "--private"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=subprocess_timeout(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed tester/cli-enc" in proc.stdout
    assert TOKEN not in proc.stdout + proc.stderr
    repo = hub.repo("tester/cli-enc")
    assert repo.private and set(repo.commits[0]["files"]) == EXPECTED_FILES["encoder", "vit"]
    assert_untouched(runs)


def test_cli_help_dry_run_and_argument_errors(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)  # a dry run needs no token (and offline mode stays on)
    spec = importlib.util.spec_from_file_location("push_cli", REPO_ROOT / "scripts" / "push_to_hub.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    from hf_mae.cli import push_to_hub as cli

    assert shim.cli is cli.cli  # the shim only forwards
    assert len((REPO_ROOT / "scripts" / "push_to_hub.py").read_text().splitlines()) <= 12
    parser = cli.build_parser()
    help_text = parser.format_help()
    for action in parser._actions:
        assert action.help, action.option_strings
        assert action.option_strings[0] in help_text
    for flag in ("--checkpoint", "--encoder_repo", "--probe", "--probe_repo", "--pretrain_repo", "--format",
                 "--private", "--revision", "--commit_message", "--dry_run", "--timeout", "--attempts"):
        assert flag in help_text
    assert "examples:" in help_text and "--dry_run /tmp/plan" in help_text

    plan = tmp_path / "plan"
    assert run_cli(["--checkpoint", str(runs.pre), "--encoder_repo", "me/enc", "--probe", str(runs.probe),
                    "--probe_repo", "me/probe", "--dry_run", str(plan)]) == 0
    printed = capsys.readouterr().out
    assert "Dry run: nothing pushed" in printed and "me/enc" in printed and "model.safetensors" in printed
    assert sorted(p.name for p in plan.iterdir()) == ["encoder", "probe"]
    assert (plan / "encoder" / "README.md").is_file()
    encoder_only = ["--checkpoint", str(runs.pre), "--encoder_repo", "me/enc", "--dry_run"]
    assert run_cli([*encoder_only, str(plan)]) == 2  # not empty
    inside = runs.pre / "plan"
    assert run_cli([*encoder_only, str(inside)]) == 2
    assert "inside" in capsys.readouterr().err and not inside.exists()
    (tmp_path / "afile").write_text("x")
    assert run_cli([*encoder_only, str(tmp_path / "afile")]) == 2
    assert "is a file" in capsys.readouterr().err
    for argv in (["--probe", str(runs.probe)], ["--encoder_repo", "me/enc"], []):
        with pytest.raises(SystemExit) as info:
            cli.parse_args(argv)
        assert info.value.code == 2
    capsys.readouterr()
    # bad numbers are named at parse time, flags and environment variables alike
    base = ["--checkpoint", str(runs.pre), "--encoder_repo", "me/enc"]
    for extra, env, named in ((["--timeout", "0"], {}, "argument --timeout"),
                              (["--timeout", "nan"], {}, "argument --timeout"),
                              (["--attempts", "0"], {}, "argument --attempts"),
                              (["--attempts", "2.5"], {}, "argument --attempts"),
                              ([], {"HF_MAE_HUB_TIMEOUT": "-3"}, "HF_MAE_HUB_TIMEOUT"),
                              ([], {"HF_MAE_HUB_ATTEMPTS": "many"}, "HF_MAE_HUB_ATTEMPTS")):
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            with pytest.raises(SystemExit) as info:
                cli.parse_args(base + extra)
        assert info.value.code == 2 and named in capsys.readouterr().err, (extra, env)
    assert_untouched(runs)


def push_env(endpoint: str, tmp_path: Path, **extra) -> dict:
    """The environment of a `python -m hf_mae.push_to_hub` subprocess that pushes to `endpoint` with the test token."""
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"), "NO_PROXY": "127.0.0.1,localhost", **extra}


@pytest.mark.slow
def test_module_cli_runs_from_any_folder(hub, runs, tmp_path):
    """`python -m hf_mae.push_to_hub` (what the retry command runs) from a folder that is not the repository."""
    proc = subprocess.run([sys.executable, "-m", "hf_mae.push_to_hub", "--checkpoint", str(runs.pre),
                           "--encoder_repo", "tester/anywhere"], cwd=tmp_path, env=push_env(hub.url, tmp_path),
                          capture_output=True, text=True, timeout=subprocess_timeout(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pushed tester/anywhere" in proc.stdout and len(hub.repo("tester/anywhere").commits) == 1
    assert "scripts/" not in hub_module.retry_command(checkpoint=runs.pre, encoder_repo="tester/anywhere")
    assert not hasattr(hub_module, "PUSH_SCRIPT")


@pytest.mark.slow
def test_endpoint_that_never_answers_fails_in_bounded_time(runs, tmp_path):
    """`python -m hf_mae.push_to_hub ... --timeout 2 --attempts 2` against an endpoint that accepts the connection and
    never answers: it fails within the timeouts instead of hanging silently, says so, prints the retry
    command, and never the token."""
    with SilentServer() as silent:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hf_mae.push_to_hub", "--checkpoint", str(runs.pre),
                               "--encoder_repo", "tester/silent", "--timeout", "2", "--attempts", "2"],
                              cwd=tmp_path, env=push_env(silent.url, tmp_path), capture_output=True, text=True,
                              timeout=subprocess_timeout(120))
        elapsed = time.monotonic() - start
        connections = silent.connections
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert elapsed < 60, elapsed  # 2 attempts x 2 s + 2 s between them, plus the start-up of python
    assert connections >= 2  # one per attempt (huggingface_hub may open one more, with its own timeout)
    assert "no answer from the Hub in time" in proc.stderr and "after 2 attempts, 2 s timeout" in proc.stderr
    assert "trying again in 2 s (attempt 2 of 2)" in proc.stderr
    assert "Retry with:" in proc.stderr and "python -m hf_mae.push_to_hub" in proc.stderr
    assert TOKEN not in output
    assert_untouched(runs)


def test_training_push_times_out_through_the_environment(runs, monkeypatch, no_backoff_sleep):
    """The training programs' --push_to_hub calls push_pretraining_outputs: HF_MAE_HUB_TIMEOUT bounds it."""
    monkeypatch.setenv("HF_MAE_HUB_TIMEOUT", "1")
    monkeypatch.setenv("HF_MAE_HUB_ATTEMPTS", "2")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with SilentServer() as silent:
        monkeypatch.setenv("HF_ENDPOINT", silent.url)
        start = time.monotonic()
        with pytest.raises(HubPushError) as info:
            push_pretraining_outputs(runs.pre, "tester/mae")
        elapsed = time.monotonic() - start
    close_session()
    assert elapsed < 20 and silent.connections >= 2, (elapsed, silent.connections)
    assert "no answer from the Hub in time" in str(info.value) and "after 2 attempts, 1 s timeout" in str(info.value)
    assert "--timeout" not in info.value.retry_command  # the environment carries the setting
    assert_untouched(runs)


def test_commit_that_never_answers_fails_and_the_retry_finishes(hub, runs, monkeypatch, no_backoff_sleep):
    """The Hub takes the repo, then never answers the commit: bounded failure, then the printed retry works."""
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    hub.hang_commits = True
    start = time.monotonic()
    with pytest.raises(HubPushError) as info:
        push_to_hub(checkpoint=runs.pre, encoder_repo="tester/mae-enc", timeout=1, attempts=2)
    elapsed = time.monotonic() - start
    assert elapsed < 30, elapsed
    assert hub.commit_attempts["tester/mae-enc"] >= 2 and hub.repo("tester/mae-enc").commits == []
    message = str(info.value)
    assert "no answer from the Hub in time" in message and "retrying is safe" in message
    assert "--timeout 1 --attempts 2" in info.value.retry_command
    hub.hang_commits = False
    assert run_cli(shlex.split(info.value.retry_command.split(" ", 1)[1])[3:]) == 0
    assert len(hub.repo("tester/mae-enc").commits) == 1
    hub._stopping.set()  # release the handlers still waiting on the abandoned commits
    assert_untouched(runs)


def test_transient_server_errors_are_retried(hub, runs, no_backoff_sleep, caplog):
    hub.create_errors = [503, 502]
    caplog.set_level(logging.WARNING)
    pushed = push_to_hub(checkpoint=runs.pre, encoder_repo="tester/mae-enc", attempts=3)
    assert list(pushed) == ["tester/mae-enc"] and len(hub.repo("tester/mae-enc").commits) == 1
    assert "attempt 2 of 3" in caplog.text and "attempt 3 of 3" in caplog.text and "HTTP 503" in caplog.text
    hub.create_errors = [500, 500]
    with pytest.raises(HubPushError, match=r"HTTP 500.*after 2 attempts"):
        push_to_hub(checkpoint=runs.pre, encoder_repo="tester/other", attempts=2)
    hub.create_errors = []
    assert_untouched(runs)


@pytest.mark.parametrize("status", [403, 500])
def test_server_echoing_the_token_never_shows_it(hub, runs, status, no_backoff_sleep, caplog, capfd):
    """A Hub error whose body and X-Error-Message echo the Authorization header: the token is
    redacted from the message, the log, the output and the traceback (nothing chained to it)."""
    hub.echo_auth = status
    caplog.set_level(logging.INFO)  # what the CLI shows (the HTTP libraries' DEBUG logs print raw headers)
    with pytest.raises(HubPushError) as info:
        push_to_hub(checkpoint=runs.pre, encoder_repo="tester/mae-enc", attempts=2)
    message = str(info.value)
    assert "Authorization: Bearer hf_***" in message and f"HTTP {status}" in message
    shown = "".join(traceback.format_exception(info.value)) + caplog.text
    captured = capfd.readouterr()
    assert TOKEN not in shown + captured.out + captured.err + info.value.retry_command
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert_untouched(runs)


@pytest.mark.slow
def test_cli_with_a_server_echoing_the_token(hub, runs, tmp_path):
    hub.echo_auth = 401
    proc = subprocess.run([sys.executable, "-m", "hf_mae.push_to_hub", "--checkpoint", str(runs.pre),
                           "--encoder_repo", "tester/leak"], cwd=tmp_path, env=push_env(hub.url, tmp_path),
                          capture_output=True, text=True, timeout=subprocess_timeout(300))
    assert proc.returncode == 1 and "refused the token (HTTP 401" in proc.stderr, proc.stderr[-3000:]
    assert "hf_***" in proc.stderr and TOKEN not in proc.stdout + proc.stderr


def test_redact():
    text = f'{{"error": "bad", "auth": "Bearer {TOKEN}"}} header Authorization: bearer sk-other; raw {TOKEN}.'
    out = hub_module.redact(text, TOKEN)
    assert TOKEN not in out and "sk-other" not in out and out.count("hf_***") == 3
    assert hub_module.redact("hf_abcdefghijklmnopqrstuvwxyz0123 in a log line") == "hf_*** in a log line"
    assert hub_module.redact("repo tester/hf_mae-enc, file hf_mae_run.json") == "repo tester/hf_mae-enc, file " \
        "hf_mae_run.json"


def test_processor_that_does_not_fit_the_model_is_refused_before_pushing(hub, runs, tmp_path):
    """A 224-pixel processor saved beside a 16-pixel model: refused, naming both sizes, before any request."""
    probe = tmp_path / "probe"
    shutil.copytree(runs.probe, probe)
    MAEImageProcessor().save_pretrained(probe)  # the default 224 x 224 crop
    with pytest.raises(ValueError, match=r"224x224.*16x16") as info:
        push_to_hub(probe=probe, probe_repo="tester/mae-probe")
    assert str(probe) in str(info.value) and hub.requests == []
    with pytest.raises(ValueError, match=r"224x224.*16x16"):
        build_upload_folders(tmp_path / "plan", probe=probe, probe_repo="tester/mae-probe", format="vit")


# ----------------------------------------------------------------------------------------------------------
# (3) opt-in: a real Hub endpoint
# ----------------------------------------------------------------------------------------------------------
REAL_HUB_CHILD = textwrap.dedent("""
    import sys, uuid
    from huggingface_hub import HfApi
    from transformers import AutoModel
    from hf_mae.hub.push import push_to_hub
    api = HfApi()
    repo_id = f"{api.whoami()['name']}/hf-mae-hub-test-{uuid.uuid4().hex[:8]}"
    try:
        push_to_hub(checkpoint=sys.argv[1], encoder_repo=repo_id, private=True)
        model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
        assert type(model).__name__ == "MAEModel"
        print("REAL HUB OK", repo_id)
    finally:
        api.delete_repo(repo_id, missing_ok=True)
""")


HAS_TOKEN = bool(os.environ.get("HF_TOKEN") or Path(constants.HF_TOKEN_PATH).is_file())


@pytest.mark.skipif(os.environ.get("HF_MAE_HUB_TEST") != "1" or not HAS_TOKEN,
                    reason="opt-in: set HF_MAE_HUB_TEST=1 and a token with write access to use a real Hub")
def test_real_hub_round_trip(runs, tmp_path):
    """Pushes a tiny private encoder to the real Hub (HF_ENDPOINT or huggingface.co), loads it, deletes it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HUB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", REAL_HUB_CHILD, str(runs.pre)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=subprocess_timeout(600))
    assert proc.returncode == 0 and "REAL HUB OK" in proc.stdout, proc.stderr[-3000:]


def test_card_templates_ship_as_package_data():
    """Cards render from any install (wheel, not only editable): the templates are package data."""
    import importlib.resources

    from hf_mae.hub.cards import KINDS

    templates = importlib.resources.files("hf_mae") / "model_cards"
    assert {f"{kind}.md" for kind in KINDS} <= {f.name for f in templates.iterdir()}
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    package_data = pyproject.split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert '"model_cards/*.md"' in package_data
