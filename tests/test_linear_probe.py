"""Linear probe: learning on separable data, saved probe == cached-feature head, BN folding, LARS, bad input."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY
from transformers import AutoModelForImageClassification

from hf_mae import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEImageProcessor
from hf_mae.cli.linear_probe import main, parse_args
from hf_mae.convert.vitmae import fold_batchnorm
from hf_mae.evaluation.classifier import load_classifier
from hf_mae.evaluation.probe import ProbeHead, probe_logits


@pytest.fixture
def root(two_class_root) -> Path:
    """Image folders (train 16 + val 8 per class) and a tiny pretraining folder whose seed (1) is not the probe's:
    --random_init must differ. Shared, read-only."""
    return two_class_root


@pytest.fixture(scope="module")
def unlabelled(two_class_root, tmp_path_factory) -> Path:
    """A parquet dataset (train + validation splits) with images and no label column."""
    folder = tmp_path_factory.mktemp("unlabelled")
    image = {"bytes": (two_class_root / "train" / "a_left" / "0.png").read_bytes(), "path": None}
    for split in ("train", "validation"):
        pq.write_table(pa.table({"image": [image] * 4}), folder / f"{split}.parquet")
    return folder


def probe(root: Path, out: Path, *extra: str) -> dict:
    argv = ["--model", str(root / "pretrain"), "--train_dir", str(root / "train"), "--eval_dir", str(root / "val"),
            "--output_dir", str(out), "--epochs", "30", "--per_device_batch_size", "16", "--warmup_epochs", "3",
            "--num_workers", "0", "--eval_batch_size", "10", *extra]
    return main(parse_args(argv))


def eval_batch(root: Path, processor) -> dict:
    """All held-out images through the eval transform, in the order the probe saw them."""
    from hf_mae.data.sources import load_image_datasets
    from hf_mae.evaluation.features import eval_dataloader

    _, eval_data, _ = load_image_datasets(train_dir=str(root / "train"), eval_dir=str(root / "val"))
    return next(iter(eval_dataloader(eval_data, processor, batch_size=len(eval_data))))


def test_probe_learns_and_the_saved_probe_is_the_trained_head(root, tmp_path, monkeypatch):
    import hf_mae.evaluation.probe as evaluation  # the cached-features head trains there

    optimizers = []

    class SpyLARS(evaluation.LARS):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            optimizers.append(self)

    monkeypatch.setattr(evaluation, "LARS", SpyLARS)
    out = tmp_path / "probe"
    results = probe(root, out, "--cache_features", "--blr", "100", "--epochs", "60")
    assert results["top1"] >= 90 and results["top5"] == 100  # 2 separable classes: chance is 50%
    saved = json.loads((out / "results.json").read_text())
    assert saved["top1"] == results["top1"] and saved["pooling"] == "cls" and saved["mode"] == "cached_features"
    assert saved["num_train"] == 32 and saved["num_eval"] == 16 and saved["optimizer_steps"] == 60 * 2
    assert saved["effective_batch_size"] == 16 and saved["lr"] == pytest.approx(100 * 16 / 256)

    # LARS on the head only (BatchNorm has no affine parameters, the encoder is frozen), lr annealed to 0
    (lars,) = optimizers
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    params = [p for group in lars.param_groups for p in group["params"]]
    assert [tuple(p.shape) for p in params] == [(2, 32), (2,)]
    assert lars.param_groups[0]["weight_decay"] == 0 and lars.param_groups[0]["lr"] < 1e-3 * saved["lr"]

    # the saved folder is the trained probe: BN statistics from training, labels by name, logits equal
    assert type(model).__name__ == "MAEForImageClassification" and model.config.classifier_head == "linear_probe"
    assert model.config.id2label == {0: "a_left", 1: "b_top"} and model.config.num_labels == 2
    assert model.fc_norm.num_batches_tracked.item() == 120 and not torch.allclose(
        model.fc_norm.running_var, torch.ones(32))
    cache = torch.load(out / "features.pt", weights_only=False)
    eval_features, eval_labels, skipped = cache["eval"]
    assert skipped == 0
    cached_logits = probe_logits(ProbeHead(model.fc_norm, model.head), eval_features)
    batch = eval_batch(root, MAEImageProcessor.from_pretrained(out))
    with torch.no_grad():
        logits = model(batch["pixel_values"]).logits
    assert torch.equal(batch["labels"], eval_labels)
    assert torch.allclose(logits, cached_logits, atol=1e-5)
    with torch.no_grad():  # the trained BatchNorm folds into the Linear layer
        assert torch.allclose(fold_batchnorm(model.fc_norm, model.head)(eval_features), cached_logits, atol=1e-5)
    assert 100 * (logits.argmax(1) == eval_labels).float().mean().item() == pytest.approx(results["top1"])

    # a saved probe given as --model keeps its head: 0 epochs re-evaluates it
    again = probe(root, tmp_path / "again", "--model", str(out), "--epochs", "0")
    assert again["top1"] == results["top1"] and again["optimizer_steps"] == 0


def test_push_to_hub_calls_the_hub_module(root, tmp_path, monkeypatch):
    import hf_mae.hub.push

    calls = []
    monkeypatch.setattr(hf_mae.hub.push, "push_probe", lambda *args, **kwargs: calls.append((args, kwargs)))
    probe(root, tmp_path / "push", "--epochs", "1", "--push_to_hub", "--hub_model_id", "me/probe", "--hub_private")
    assert calls == [((tmp_path / "push", "me/probe"), {"checkpoint": None, "private": True})]


def test_batchnorm_folds_into_the_linear_layer():
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(8, affine=False, eps=1e-6)
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.1, 3)
    head = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8)
    folded = fold_batchnorm(norm, head)
    assert torch.allclose(folded(x), head(norm.eval()(x)), atol=1e-6)
    affine = torch.nn.BatchNorm1d(8, eps=1e-6).eval()
    affine.running_mean.normal_()
    affine.weight.data.normal_()
    affine.bias.data.normal_()
    assert torch.allclose(fold_batchnorm(affine, head)(x), head(affine(x)), atol=1e-6)


def test_augment_mode_uses_accumulation_and_the_schedule(root, tmp_path):
    results = probe(root, tmp_path / "aug", "--augment", "--epochs", "2", "--per_device_batch_size", "8",
                    "--gradient_accumulation_steps", "2", "--crop_min_scale", "0.5")
    # 32 images / 8 = 4 micro-batches per epoch -> 2 optimizer steps per epoch
    assert results["mode"] == "augment" and results["optimizer_steps"] == 4 and results["effective_batch_size"] == 16
    log = [json.loads(line) for line in (tmp_path / "aug" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r.get("event") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and "eval_top1" in epochs[-1]
    assert (tmp_path / "aug" / "model.safetensors").exists()


def test_raw_pixel_and_random_init_baselines(root, tmp_path):
    raw = probe(root, tmp_path / "raw", "--raw_pixels", "--epochs", "60", "--blr", "100")
    assert raw["features"] == "raw_pixels" and raw["feature_dim"] == 3 * 16 * 16 and raw["top1"] >= 90
    assert (tmp_path / "raw" / "results.json").exists() and not (tmp_path / "raw" / "model.safetensors").exists()
    rand = probe(root, tmp_path / "rand", "--random_init", "--epochs", "2", "--pooling", "mean")
    assert rand["features"] == "random_init" and rand["pooling"] == "mean"
    trained = MAEForPreTraining.from_pretrained(root / "pretrain")
    model = MAEForImageClassification.from_pretrained(tmp_path / "rand")
    assert model.config.pooling == "mean"
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, trained.encoder.blocks[0].attn.qkv.weight)


def test_load_classifier_sources(root, tmp_path):
    full = MAEForPreTraining.from_pretrained(root / "pretrain")
    full.encoder.save_pretrained(tmp_path / "encoder")
    for source in (root / "pretrain", tmp_path / "encoder"):
        model, processor, note = load_classifier(str(source), classifier_head="linear_probe", num_labels=3)
        assert torch.equal(model.encoder.blocks[1].mlp.fc2.weight, full.encoder.blocks[1].mlp.fc2.weight)
        assert model.config.num_labels == 3 and "new head" in note
        assert 0.005 < model.head.weight.std().item() < 0.015  # official init std 0.01
        assert not model.encoder.blocks[0].attn.qkv.weight.requires_grad
    # a saved probe of the same kind keeps its head; a fine-tune classifier gets a new one
    model.head.weight.data.fill_(0.5)
    model.save_pretrained(tmp_path / "probe3")
    again, _, note = load_classifier(str(tmp_path / "probe3"), classifier_head="linear_probe", num_labels=3)
    assert "head loaded" in note and torch.all(again.head.weight == 0.5)
    tuned, _, _ = load_classifier(str(tmp_path / "probe3"), classifier_head="finetune", num_labels=3,
                                  pooling="mean")
    assert isinstance(tuned.fc_norm, torch.nn.LayerNorm) and tuned.head.weight.abs().max() < 1e-3


def test_bad_inputs_are_clear_errors(root, unlabelled, tmp_path):
    # a probe for 3 classes applied to 2-class data
    probe3 = MAEForImageClassification(MAEConfig(**TINY, num_labels=3))
    probe3.save_pretrained(tmp_path / "probe3")
    with pytest.raises(ValueError, match="3 classes, but the data has 2"):
        probe(root, tmp_path / "a", "--model", str(tmp_path / "probe3"))
    # not an MAE checkpoint
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="'vit' checkpoint, not an hf_mae MAE encoder.*convert_checkpoint"):
        probe(root, tmp_path / "b", "--model", str(tmp_path / "vit"))
    from safetensors.torch import save_file

    MAEConfig(**TINY).save_pretrained(tmp_path / "no_weights")  # an hf_mae config over unrelated weights
    save_file({"something.else": torch.zeros(2)}, tmp_path / "no_weights" / "model.safetensors")
    with pytest.raises(ValueError, match="not a complete MAE encoder: [0-9]+ encoder tensors are missing"):
        probe(root, tmp_path / "g", "--model", str(tmp_path / "no_weights"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        probe(root, tmp_path / "c", "--model", str(tmp_path / "empty"))
    # data without labels, a missing label column, no held-out split
    common = ["--model", str(root / "pretrain"), "--output_dir", str(tmp_path / "d")]
    with pytest.raises(ValueError, match="has no labels: no label column was found"):
        main(parse_args([*common, "--dataset_name", str(unlabelled)]))
    with pytest.raises(ValueError, match="no held-out split 'validation'"):
        main(parse_args([*common, "--data_files", str(unlabelled / "train.parquet")]))
    with pytest.raises(ValueError, match="label column 'species' not found"):
        probe(root, tmp_path / "f", "--label_column", "species")
    with pytest.raises(SystemExit, match="hub_model_id"):
        parse_args(["--push_to_hub"])
