"""Fine-tuning: mixup / cutmix / label smoothing, layer-wise lr decay groups, an end-to-end tiny run."""

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_same_weights
from transformers import AutoModelForImageClassification

from hf_mae.cli.finetune import main, parse_args
from hf_mae.data.mixup import Mixup, cutmix_box, mix_targets, smooth_one_hot
from hf_mae.training.output_dir import OutputDirError

# --- mixup / cutmix / label smoothing ------------------------------------------------------------------


def test_label_smoothing_values():
    targets = smooth_one_hot(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert torch.allclose(targets[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(targets.sum(1), torch.ones(2))
    assert torch.equal(smooth_one_hot(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))


@pytest.mark.parametrize("mode", ["mixup", "cutmix", "none"])
def test_mixed_targets_sum_to_one_and_match_the_pixels(mode):
    batch = 6
    pixels = torch.arange(batch * 3 * 8 * 10, dtype=torch.float32).reshape(batch, 3, 8, 10)  # every value unique
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    mix = Mixup(mixup_alpha=0.8 if mode == "mixup" else 0.0, cutmix_alpha=1.0 if mode == "cutmix" else 0.0,
                prob=0.0 if mode == "none" else 1.0, label_smoothing=0.1, num_classes=5,
                generator=torch.Generator().manual_seed(3))
    original = pixels.clone()
    for _ in range(20):
        mixed, targets = mix(pixels, labels)
        lam = mix.last_lam
        assert mix.last_mode == mode and torch.equal(pixels, original)  # input untouched
        assert targets.shape == (batch, 5) and torch.allclose(targets.sum(1), torch.ones(batch))
        assert torch.allclose(targets, mix_targets(labels, 5, lam, 0.1))
        if mode == "mixup":
            assert torch.allclose(mixed, lam * pixels + (1 - lam) * pixels.flip(0))
        elif mode == "cutmix":
            kept = (mixed == pixels).all(dim=1).float().mean(dim=(1, 2))  # per image: fraction of own pixels
            assert torch.allclose(kept, torch.full((batch,), lam))  # lambda == the area actually kept
            assert torch.equal(mixed[(mixed != pixels)], pixels.flip(0)[(mixed != pixels)])
        else:
            assert lam == 1.0 and torch.equal(mixed, pixels)
            assert torch.allclose(targets, smooth_one_hot(labels, 5, 0.1))


def test_cutmix_box_is_clipped_and_draws_are_reproducible():
    for seed in range(50):
        top, bottom, left, right = cutmix_box(8, 10, 0.3, torch.Generator().manual_seed(seed))
        assert 0 <= top <= bottom <= 8 and 0 <= left <= right <= 10
    draws = [Mixup(generator=torch.Generator().manual_seed(0))(torch.ones(2, 1, 4, 4), torch.tensor([0, 1]))[1]
             for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="label_smoothing"):
        Mixup(label_smoothing=1.0)


# --- end to end --------------------------------------------------------------------------------------


@pytest.fixture
def root(two_class_root) -> Path:
    return two_class_root  # train 16 + val 8 per class and `pretrain`, shared read-only


def test_augmentation_defaults_and_bad_values(capsys):
    embedded = parse_args(["--model", "x"])
    assert embedded.aa == "none" and embedded.reprob == 0  # digits: no RandAugment, no erasing by default
    # the embedded recipe chosen on validation digits: 30 epochs at blr 2e-3, no mixup / cutmix
    assert (embedded.epochs, embedded.blr, embedded.warmup_epochs) == (30, 2e-3, 2)
    assert embedded.mixup == 0 and embedded.cutmix == 0 and embedded.smoothing == 0.1
    assert parse_args(["--model", "x", "--mixup", "0.2"]).mixup == 0.2  # a flag still wins
    named = parse_args(["--model", "x", "--dataset_name", "some/imagenet"])
    assert named.aa == "rand-m9-mstd0.5-inc1" and named.reprob == 0.25  # the official recipe
    assert (named.epochs, named.mixup, named.cutmix) == (100, 0.8, 1.0)
    with pytest.raises(SystemExit, match="inc1"):
        parse_args(["--model", "x", "--aa", "rand-m9"])
    with pytest.raises(SystemExit):  # refused at parse time, the flag named
        parse_args(["--model", "x", "--reprob", "1.5"])
    assert "--reprob" in capsys.readouterr().err


def finetune(root: Path, out: Path, *extra: str) -> dict:
    argv = ["--model", str(root / "pretrain"), "--train_dir", str(root / "train"), "--eval_dir", str(root / "val"),
            "--output_dir", str(out), "--epochs", "2", "--per_device_batch_size", "8", "--warmup_epochs", "1",
            "--num_workers", "0", "--mixed_precision", "no", "--logging_steps", "1", "--blr", "1e-3", *extra]
    return main(parse_args(argv))


def test_finetune_run_layer_decay_and_outputs(root, tmp_path, monkeypatch):
    import hf_mae.cli.finetune as finetuning

    built, real_build_adamw = [], finetuning.build_adamw

    def spy_adamw(groups, **kwargs):
        built.append(real_build_adamw(groups, **kwargs))
        return built[-1]

    monkeypatch.setattr(finetuning, "build_adamw", spy_adamw)
    out = tmp_path / "ft"
    results = finetune(root, out, "--layer_decay", "0.5", "--drop_path", "0.2")

    # layer-wise decay: embeddings 0.5^3, block i 0.5^(2 - i), head and fc_norm 1; final norm unused (frozen)
    (optimizer,) = built
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    scales = {g["layer_id"]: g["lr_scale"] for g in optimizer.param_groups}
    assert scales == {0: 0.125, 1: 0.25, 2: 0.5, 3: 1.0}
    model = AutoModelForImageClassification.from_pretrained(out)
    counted = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert counted == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder.norm."))
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0]
    assert all(p.ndim <= 1 or p.shape == (1, 1, 32) for g in no_decay for p in g["params"])
    last_lr = [g["lr"] for g in optimizer.param_groups]
    assert all(lr == pytest.approx(max(last_lr) * g["lr_scale"]) for lr, g in zip(last_lr, optimizer.param_groups))

    # outputs: eval every epoch, best + final models, results
    assert model.config.classifier_head == "finetune" and model.config.pooling == "mean"
    assert model.config.drop_path_rate == 0.2 and isinstance(model.fc_norm, torch.nn.LayerNorm)
    assert model.config.id2label == {0: "a_left", 1: "b_top"}
    saved = json.loads((out / "results.json").read_text())
    assert [h["epoch"] for h in saved["history"]] == [1, 2] and saved["optimizer_steps"] == 8
    assert saved["final_top1"] == saved["history"][-1]["top1"] == results["top1"]
    assert saved["best_top1"] == max(h["top1"] for h in saved["history"]) and saved["best_epoch"] in (1, 2)
    assert saved["init"] == "pretrained" and saved["layer_decay"] == 0.5 and saved["mixup"] == 0.8
    assert saved["randaugment"] == "rand-m9-mstd0.5-inc1" and saved["reprob"] == 0.25  # a named dataset: official
    best = AutoModelForImageClassification.from_pretrained(out / "best")
    assert type(best).__name__ == "MAEForImageClassification"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    with pytest.raises(OutputDirError, match="finished fine-tuning run"):
        finetune(root, out)


def test_finetune_from_random_init_uses_the_same_recipe(root, tmp_path):
    results = finetune(root, tmp_path / "scratch", "--random_init", "--epochs", "1", "--mixup", "0", "--cutmix", "0",
                       "--aa", "none", "--reprob", "0")
    assert results["init"] == "random_init" and results["optimizer_steps"] == 4
    assert results["randaugment"] == "none" and results["reprob"] == 0
    assert 0 <= results["top1"] <= 100 and (tmp_path / "scratch" / "model.safetensors").exists()


def test_resume_after_an_epoch_reproduces_the_uninterrupted_run(root, tmp_path):
    full = finetune(root, tmp_path / "full", "--checkpoints_total_limit", "5")
    checkpoints = sorted((tmp_path / "full" / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-4", "checkpoint-8"]  # one per epoch, 4 steps each
    resumed = finetune(root, tmp_path / "resumed", "--resume_from_checkpoint", str(checkpoints[0]))
    assert resumed["resumed_from"] == str(checkpoints[0]) and resumed["optimizer_steps"] == 8
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]  # epoch 1 comes from the checkpoint
    assert resumed["history"][1]["top1"] == full["history"][1]["top1"]
    assert resumed["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], rel=1e-5)
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")
    # a fresh folder has no `best` from epoch 1: the best is tracked from the resume on, and is on disk
    assert resumed["best_epoch"] == 2 and (tmp_path / "resumed" / "best" / "model.safetensors").exists()


def test_mid_epoch_checkpoint_resumes_exactly(root, tmp_path, capsys):
    """--checkpointing_steps N adds checkpoints within epochs; resuming from one (with other data workers)
    ends where the uninterrupted run ends: crops, RandAugment, erasing, mixup and drop path all draw alike."""
    full = finetune(root, tmp_path / "full", "--checkpointing_steps", "3", "--checkpoints_total_limit", "5")
    names = sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir())
    assert names == ["checkpoint-3", "checkpoint-4", "checkpoint-6", "checkpoint-8"]  # 4 steps per epoch
    state = json.loads((tmp_path / "full" / "checkpoints" / "checkpoint-6" / "training_state.json").read_text())
    assert state["epoch"] == 1 and state["batches_in_epoch"] == 2 and state["update_step"] == 6
    resumed = finetune(root, tmp_path / "resumed", "--num_workers", "2", "--resume_from_checkpoint",
                       str(tmp_path / "full" / "checkpoints" / "checkpoint-6"))
    assert resumed["history"][1]["top1"] == full["history"][1]["top1"]
    assert resumed["history"][1]["train_loss"] == pytest.approx(full["history"][1]["train_loss"], rel=1e-5)
    assert_same_weights(tmp_path / "full", tmp_path / "resumed")
    with pytest.raises(SystemExit):
        parse_args(["--checkpointing_steps", "0"])
    assert "--checkpointing_steps" in capsys.readouterr().err


def test_resume_latest_in_place_keeps_the_best_and_the_log(root, tmp_path):
    out = tmp_path / "ft"
    finetune(root, out, "--epochs", "1")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-4"]
    results = finetune(root, out, "--resume_from_checkpoint", "latest",  # the same run, extended to 2 epochs
                       "--allow_changed_resume")
    assert results["optimizer_steps"] == 8 and [h["epoch"] for h in results["history"]] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-8"]  # limit 2
    assert results["best_top1"] == max(h["top1"] for h in results["history"])
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = [r for r in records if r.get("event") == "start"]
    assert len(starts) == 2 and starts[1]["resumed_from"].endswith("checkpoint-4")
    with pytest.raises(FileNotFoundError, match="not a complete hf_mae checkpoint"):
        finetune(root, tmp_path / "other", "--resume_from_checkpoint", str(tmp_path / "missing"))
