"""Semantic segmentation (UperNet on MAEBackbone): data, paired transforms, label checks, the mIoU metric, the
program's contract (results.json, from_pretrained, pipeline) and exact resume. Tiny configs, tiny scenes."""

import json

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

import hf_mae  # noqa: F401  (registers hf_mae with the Auto classes)
from hf_mae import MAEForPreTraining, MAEImageProcessor
from hf_mae.data.segmentation import (
    IGNORE_INDEX,
    PairedTrainTransform,
    SegmentationTransformFn,
    check_label_map,
    collate_segmentation,
    digit_scenes,
    load_segmentation_datasets,
    reduce_label_ids,
)
from hf_mae.evaluation.metrics.mean_iou import confusion_matrix, scores_from_confusion
from hf_mae.evaluation.segmentation import MEAN_IOU_PATH, default_out_indices
from hf_mae.models.mae.segmentation_mae import slide_logits
from hf_mae.training.optim import poly_lr_at_step

# ------------------------------------------------------------------------------------------ data and checks


def test_digit_scenes_are_deterministic_and_labelled_by_stroke():
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    classes = np.arange(6) % 10
    images, maps = digit_scenes(digits, classes, num_scenes=5, seed=3)
    again_images, again_maps = digit_scenes(digits, classes, num_scenes=5, seed=3)
    assert images.shape == maps.shape == (5, 56, 56)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(maps, again_maps)
    assert (maps[images < 128] == 0).all()  # dim pixels are background
    assert (maps[images >= 128] >= 1).all() and maps.max() <= 10  # strokes carry a digit class + 1


def test_digit_scenes_never_overlap_two_digits():
    digits = np.zeros((10, 28, 28), dtype=np.uint8)
    digits[:, 9:19, 9:19] = 255  # each "digit" a 10x10 square of ink: its box is that square
    images, maps = digit_scenes(digits, np.arange(10), num_scenes=40, seed=0)
    for image, labels in zip(images, maps):
        assert ((labels > 0) == (image == 255)).all()
        counts = np.bincount(labels.ravel(), minlength=11)[1:]
        assert counts.sum() >= 200  # at least two squares: small boxes always find room
        assert (counts % 100 == 0).all()  # whole squares only: no square covers part of another


def test_label_map_errors_name_the_row_and_value():
    with pytest.raises(ValueError, match=r"row 7 .*4x3.*image 5x3"):
        check_label_map(np.zeros((3, 4), dtype=np.int64), (3, 5), num_labels=2, row=7)
    bad = np.zeros((3, 4), dtype=np.int64)
    bad[1, 1] = 9
    with pytest.raises(ValueError, match=r"row 2 holds class id\(s\) \[9\] outside \[0, 3\)"):
        check_label_map(bad, (3, 4), num_labels=3, row=2)
    bad[1, 1] = IGNORE_INDEX
    check_label_map(bad, (3, 4), num_labels=3, row=2)  # the ignore index is allowed


def test_reduce_labels_ignores_zero_and_shifts():
    np.testing.assert_array_equal(reduce_label_ids(np.array([0, 1, 5, 255])), [255, 0, 4, 255])


def test_paired_transform_keeps_image_and_map_aligned():
    # a map that equals the image's pixel values: after resize (nearest), crop and flip they must still agree
    image = np.zeros((20, 24), dtype=np.uint8)
    image[:, 12:] = 1
    image[5:9, 3:7] = 2
    transform = PairedTrainTransform((16, 16), mean=(0.0,), std=(1.0 / 255,), ratio_range=(0.5, 2.0), hflip=True)
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, labels = transform(Image.fromarray(image), image.astype(np.int64))
        assert pixels.shape == (1, 16, 16) and labels.shape == (16, 16)
        valid = labels != IGNORE_INDEX  # padding: image 0, map ignored
        # bilinear image vs nearest map agree away from edges: compare only where the image is a class value
        exact = valid & torch.isclose(pixels[0], pixels[0].round())
        assert (pixels[0][exact].round().long() == labels[exact]).float().mean() > 0.9
        assert (pixels[0][~valid] == 0).all()


def test_segmentation_data_finds_ade20k_and_transformers_layouts(tmp_path):
    maps = [np.array([[0, 1], [1, 0]], dtype=np.uint8)] * 2
    images = [Image.fromarray(np.full((2, 2), 100, dtype=np.uint8))] * 2
    for columns, features in (
            (("image", "annotation"), {"image": datasets.Image(), "annotation": datasets.Image(),
                                       "scene_category": datasets.ClassLabel(names=["a", "b"])}),
            (("pixel_values", "label"), {"pixel_values": datasets.Image(), "label": datasets.Image()})):
        rows = {columns[0]: images, columns[1]: [Image.fromarray(m) for m in maps]}
        if "scene_category" in features:
            rows["scene_category"] = [0, 1]
        folder = tmp_path / columns[1]
        datasets.DatasetDict({split: datasets.Dataset.from_dict(rows, features=datasets.Features(features))
                              for split in ("train", "validation")}).save_to_disk(str(folder))
        data = load_segmentation_datasets(dataset_name=str(folder))
        assert data.train.column_names == ["image", "label"]
        np.testing.assert_array_equal(np.asarray(data.evaluation[0]["label"]), maps[0])


def test_transform_fn_names_the_bad_row():
    rows = {"image": [Image.new("L", (4, 4)), Image.new("L", (4, 4))],
            "label": [np.zeros((4, 4), np.uint8), np.full((4, 4), 7, np.uint8)]}
    fn = SegmentationTransformFn(lambda image, labels: (torch.zeros(1), torch.from_numpy(labels)), num_channels=1,
                                 num_labels=3)
    with pytest.raises(ValueError, match=r"row 11 holds class id\(s\) \[7\]"):
        fn(rows, [10, 11])


def test_collate_pads_maps_with_the_ignore_index():
    items = [{"pixel_values": torch.ones(1, 3, 5), "labels": torch.zeros(3, 5, dtype=torch.long)},
             {"pixel_values": None, "labels": None}]
    batch = collate_segmentation(items, pad_to_multiple=4)
    assert batch["pixel_values"].shape == (1, 1, 4, 8)
    assert (batch["labels"][0, 3:] == IGNORE_INDEX).all() and (batch["labels"][0, :3, :5] == 0).all()


# ------------------------------------------------------------------------------------------ metric and schedule


def test_mean_iou_metric_against_a_hand_computed_case():
    import evaluate

    predictions = [np.array([[0, 1, 1], [2, 2, 0]])]
    references = [np.array([[0, 1, 0], [2, 255, 1]])]
    # labelled pixels (ref, pred): (0,0) (1,1) (0,1) (2,2) (1,0); class 0: TP 1, FP 1, FN 1 -> 1/3;
    # class 1: TP 1, FP 1, FN 1 -> 1/3; class 2: TP 1 -> 1; class 3 absent everywhere -> None
    metric = evaluate.load(MEAN_IOU_PATH, keep_in_memory=True)
    result = metric.compute(predictions=predictions, references=references, num_labels=4)
    assert result["per_class_iou"][:3] == pytest.approx([100 / 3, 100 / 3, 100.0])
    assert result["per_class_iou"][3] is None
    assert result["mean_iou"] == pytest.approx((100 / 3 + 100 / 3 + 100) / 3)
    assert result["pixel_accuracy"] == pytest.approx(60.0)
    assert scores_from_confusion(confusion_matrix(predictions[0], references[0], 4)) == result
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([5]), np.array([0]), 4)


def test_poly_schedule_warms_up_then_decays_linearly():
    assert poly_lr_at_step(5, 110, 10, 1.0) == pytest.approx(0.5)
    assert poly_lr_at_step(10, 110, 10, 1.0) == pytest.approx(1.0)
    assert poly_lr_at_step(60, 110, 10, 1.0) == pytest.approx(0.5)
    assert poly_lr_at_step(110, 110, 10, 1.0, min_lr=0.1) == pytest.approx(0.1)


def test_default_out_indices_match_mmsegmentation_for_vit_b():
    assert default_out_indices(12) == [4, 6, 8, 12]
    assert default_out_indices(6) == [2, 3, 4, 6]


def test_sliding_window_covers_every_pixel_once_averaged():
    def echo(crop):  # logits = the input's first channel: averaging windows must give it back
        return crop[:, :1].repeat(1, 2, 1, 1)

    pixels = torch.randn(1, 1, 20, 28)
    logits = slide_logits(echo, pixels, 2, window=(8, 8), stride=(5, 5))
    torch.testing.assert_close(logits[:, 0], pixels[:, 0])


# ------------------------------------------------------------------------------------------ the program


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny pretraining folder, tiny digit scenes, and one short segmentation run on them."""
    from hf_mae.cli.segment import cli

    root = tmp_path_factory.mktemp("segment")
    torch.manual_seed(0)
    config = tiny_config(num_channels=1, image_size=28, num_hidden_layers=4)
    MAEForPreTraining(config).save_pretrained(root / "pretrain")
    MAEImageProcessor.for_config(config, crop_pct=1.0).save_pretrained(root / "pretrain")
    scenes = {"train": digit_scenes(*_digits(0), 24, seed=0), "validation": digit_scenes(*_digits(1), 6, seed=1)}
    features = datasets.Features({"image": datasets.Image(), "annotation": datasets.Image()})
    datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {"image": list(images), "annotation": list(maps)}, features=features)
        for split, (images, maps) in scenes.items()}).save_to_disk(str(root / "scenes"))
    common = ["--model", str(root / "pretrain"), "--dataset_name", str(root / "scenes"), "--num_labels", "11",
              "--crop_size", "32", "--per_device_batch_size", "4", "--max_train_steps", "6", "--warmup_steps", "2",
              "--head_hidden_size", "16", "--num_workers", "0", "--mixed_precision", "no", "--eval_mode", "slide"]
    results = cli([*common, "--output_dir", str(root / "out")])
    return root, common, results


def _digits(seed):
    rng = np.random.default_rng(seed)
    digits = np.zeros((10, 28, 28), dtype=np.uint8)
    for i in range(10):
        digits[i, 4 + i:12 + i, 6:22] = rng.integers(128, 256)
    return digits, np.arange(10)


def test_results_json_holds_the_contract_keys(tiny_run):
    root, _, results = tiny_run
    saved = json.loads((root / "out" / "results.json").read_text())
    for key in ("mean_iou", "pixel_accuracy", "per_class_iou"):
        assert key in saved
    assert 0 <= saved["mean_iou"] <= 100 and 0 <= saved["pixel_accuracy"] <= 100
    assert saved["mean_iou"] == results["mean_iou"]
    assert len(saved["per_class_iou"]) == 11
    assert (root / "out" / "segmentation_examples.png").is_file()


def test_output_folder_loads_with_auto_and_runs_in_the_pipeline(tiny_run, capfd):
    from transformers import AutoModelForSemanticSegmentation, UperNetForSemanticSegmentation, pipeline

    root, _, _ = tiny_run
    capfd.readouterr()
    model = AutoModelForSemanticSegmentation.from_pretrained(root / "out").eval()
    assert isinstance(model, UperNetForSemanticSegmentation) and type(model).__name__ == "MAEForSemanticSegmentation"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), dtype=np.uint8))
    segmenter = pipeline("image-segmentation", model=str(root / "out"))
    masks = segmenter(image)
    assert masks and all(m["mask"].size == image.size for m in masks)
    assert {m["label"] for m in masks} <= set(model.config.id2label.values())
    total = sum(np.asarray(m["mask"]) > 0 for m in masks)
    assert (total == 1).all()  # per-class masks cover every pixel exactly once
    assert "custom code" not in capfd.readouterr().out  # hf_mae installed: no remote-code question


def test_the_pipeline_logs_no_false_unsupported_model_error(tiny_run):
    import logging

    from transformers import pipeline

    root, _, _ = tiny_run
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    pipeline_logger = logging.getLogger("transformers.pipelines.base")  # transformers' loggers do not propagate
    pipeline_logger.addHandler(handler)
    try:
        pipeline("image-segmentation", model=str(root / "out"))
    finally:
        pipeline_logger.removeHandler(handler)
    assert not [r.getMessage() for r in records if "not supported" in r.getMessage()]


def _scored_predictions(root):
    """The held-out scenes of the tiny run as the program scored them: its eval transform and the saved model."""
    from transformers import AutoModelForSemanticSegmentation

    from hf_mae.data.segmentation import PairedEvalTransform

    model = AutoModelForSemanticSegmentation.from_pretrained(root / "out").eval()
    processor = MAEImageProcessor.from_pretrained(root / "out")
    data = load_segmentation_datasets(dataset_name=str(root / "scenes"))
    fn = SegmentationTransformFn(PairedEvalTransform(processor.image_mean, processor.image_std), 1, 11)
    rows = [{k: v[0] for k, v in fn(data.evaluation[[i]], [i]).items()} for i in range(len(data.evaluation))]
    with torch.no_grad():
        logits = [model(pixel_values=row["pixel_values"][None]).logits[0] for row in rows]
    return model, data.evaluation, rows, logits


def test_eval_forward_segments_as_its_config_says(tiny_run):
    from transformers import UperNetForSemanticSegmentation

    root, _, _ = tiny_run
    model, _, rows, _ = _scored_predictions(root)
    assert (model.config.inference_mode, model.config.inference_window, model.config.inference_stride) == (
        "slide", 32, 21)

    def upernet(pixels):  # transformers' own forward, no windows, no padding
        return UperNetForSemanticSegmentation.forward(model, pixel_values=pixels).logits

    scene = rows[0]["pixel_values"][None]  # 56x56: larger than the 32-px window
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=scene).logits,
                                   slide_logits(upernet, scene, 11, (32, 32), (21, 21)))
        assert not torch.allclose(model(pixel_values=scene).logits, upernet(scene))  # really not the whole image
        odd = scene[..., :30, :27]  # not a multiple of the 4-px patch: padded for the encoder, cropped back
        padded = torch.nn.functional.pad(odd, (0, 1, 0, 2))
        torch.testing.assert_close(model(pixel_values=odd).logits, upernet(padded)[..., :30, :27])
        assert model(pixel_values=scene, return_dict=False)[0].shape == (1, 11, 56, 56)
        labels = rows[0]["labels"][None]
        loss = model(pixel_values=scene, labels=labels).loss
        torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(model(pixel_values=scene).logits, labels,
                                                                           ignore_index=IGNORE_INDEX))
    model.train()
    scenes = torch.stack([row["pixel_values"] for row in rows[:2]])  # two: UperNet's batch norms need a batch
    maps = torch.stack([row["labels"] for row in rows[:2]])
    torch.manual_seed(0)
    trained = model(pixel_values=scenes, labels=maps)
    torch.manual_seed(0)
    expected = UperNetForSemanticSegmentation.forward(model, pixel_values=scenes, labels=maps)
    torch.testing.assert_close(trained.logits, expected.logits)  # training: UperNet's forward and loss, unchanged
    torch.testing.assert_close(trained.loss, expected.loss)


def test_pipeline_segments_as_the_program_scored(tiny_run):
    from segmentation_inference import mask_map  # benchmarks/ is on pytest's pythonpath (pyproject.toml)
    from transformers import pipeline

    root, _, results = tiny_run
    model, evaluation, rows, logits = _scored_predictions(root)
    segmenter = pipeline("image-segmentation", model=str(root / "out"))
    confusion = np.zeros((11, 11), dtype=np.int64)
    for item, row, scored in zip(evaluation, rows, logits):
        masks = segmenter(item["image"])
        predicted = mask_map(masks, model.config.label2id, item["image"].size[::-1])
        assert predicted.shape == tuple(row["labels"].shape)  # the image's own size, not the 32-px crop
        agree = (predicted == scored.argmax(0).numpy()).mean()
        assert agree > 0.999, agree
        confusion += confusion_matrix(predicted, row["labels"].numpy(), 11, IGNORE_INDEX)
    assert len(np.unique(np.concatenate([s.argmax(0).numpy().ravel() for s in logits]))) > 1  # a real check
    assert scores_from_confusion(confusion)["mean_iou"] == pytest.approx(results["mean_iou"], abs=0.5)


REMOTE_CHILD = """
import json, sys
sys.modules["hf_mae"] = None  # any `import hf_mae` now fails
import numpy as np, torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
folder, pixels = sys.argv[1], torch.load(sys.argv[2])
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(pixel_values=pixels).logits
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36), dtype=np.uint8))
masks = pipeline("image-segmentation", model=folder, trust_remote_code=True)(image)
print("RESULT", json.dumps({"config": type(config).__name__, "model": type(model).__name__,
                            "backbone": type(model.backbone).__name__, "processor": type(processor).__name__,
                            "logits": logits.sum().item(), "labels": sorted(m["label"] for m in masks),
                            "hf_mae_modules": sorted(m for m in sys.modules if m.startswith("hf_mae."))}))
"""


@pytest.mark.slow
def test_output_folder_loads_without_hf_mae(tiny_run, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import subprocess_timeout
    from transformers import AutoModelForSemanticSegmentation

    root, _, _ = tiny_run
    pixels = torch.randn(2, 1, 32, 32)
    torch.save(pixels, tmp_path / "pixels.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", REMOTE_CHILD, str(root / "out"), str(tmp_path / "pixels.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=subprocess_timeout(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["config"] == "MAEUperNetConfig" and result["model"] == "MAEForSemanticSegmentation"
    assert result["backbone"] == "MAEBackbone" and result["processor"] == "MAEImageProcessor"
    assert result["hf_mae_modules"] == []
    local = AutoModelForSemanticSegmentation.from_pretrained(root / "out").eval()
    with torch.no_grad():
        assert abs(result["logits"] - local(pixel_values=pixels).logits.sum().item()) < 1e-3
    assert result["labels"] and set(result["labels"]) <= set(local.config.id2label.values())


def test_saved_model_predicts_like_the_trained_one(tiny_run):
    from transformers import AutoModelForSemanticSegmentation

    root, _, _ = tiny_run
    model = AutoModelForSemanticSegmentation.from_pretrained(root / "out").eval()
    again = AutoModelForSemanticSegmentation.from_pretrained(root / "out").eval()
    pixels = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).logits, again(pixel_values=pixels).logits)
    pos = model.backbone.encoder.embeddings.position_embeddings if hasattr(
        model.backbone.encoder, "embeddings") else None
    assert pos is None or torch.isfinite(pos).all()


def test_bad_label_ids_stop_the_program_with_the_row(tiny_run, capsys):
    from hf_mae.cli.segment import cli

    root, common, _ = tiny_run
    args = [a if a != "11" else "3" for a in common]  # 3 classes: the scenes' digit ids 3-10 are out of range
    with pytest.raises(SystemExit):
        cli([*args, "--output_dir", str(root / "bad")])
    assert "outside [0, 3)" in capsys.readouterr().err


def test_resume_continues_exactly(tiny_run):
    from hf_mae.cli.segment import cli

    root, common, _ = tiny_run
    straight = cli([*common, "--output_dir", str(root / "straight"), "--checkpointing_steps", "3", "--seed", "1"])
    ckpt = sorted((root / "straight" / "checkpoints").glob("checkpoint-3*"))
    assert ckpt, list((root / "straight" / "checkpoints").iterdir())
    resumed = cli([*common, "--output_dir", str(root / "resumed"), "--seed", "1",
                   "--resume_from_checkpoint", str(ckpt[0])])
    assert resumed["mean_iou"] == pytest.approx(straight["mean_iou"], abs=1e-6)
    assert resumed["eval_loss"] == pytest.approx(straight["eval_loss"], rel=1e-6)  # the same weights at the end


def test_card_carries_the_miou_in_its_model_index(tiny_run):
    from hf_mae.hub.cards import segmentation_card

    root, _, results = tiny_run
    card = segmentation_card(root / "out", "me/digit-seg")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["mean_iou"] == pytest.approx(results["mean_iou"], abs=1e-3)
    assert "image-segmentation" in str(card) and "UperNet" in str(card)
    assert "sliding-window inference" in str(card) and "32-px training crop slid over" in str(card)  # as scored


def test_push_to_hub_cli_pushes_the_segmenter_with_its_card(tiny_run, hub, capsys):
    from huggingface_hub import ModelCard

    from hf_mae.cli.push_to_hub import cli
    from hf_mae.models.mae.modeling_mae import CODE_FILES
    from hf_mae.models.mae.segmentation_mae import SEGMENTATION_AUTO_MAP

    root, _, results = tiny_run
    assert cli(["--segmentation", str(root / "out"), "--segmentation_repo", "me/digit-seg"]) == 0
    files = hub.files("me/digit-seg")
    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "results.json",
                 "segmentation_examples.png", *CODE_FILES):
        assert name in files, name
    assert json.loads(files["config.json"])["auto_map"] == SEGMENTATION_AUTO_MAP
    (root / "pushed_card.md").write_bytes(files["README.md"])
    card = ModelCard.load(root / "pushed_card.md")
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["mean_iou"] == pytest.approx(results["mean_iou"], abs=1e-3)
    assert "pushed me/digit-seg" in capsys.readouterr().out


def test_push_to_hub_cli_refuses_a_folder_that_is_not_a_segmenter(tiny_run, capsys):
    from hf_mae.cli.push_to_hub import cli

    root, _, _ = tiny_run
    code = cli(["--segmentation", str(root / "pretrain"), "--segmentation_repo", "me/x", "--dry_run",
                str(root / "plan")])
    assert code == 2
    assert "not an hf_mae segmentation model" in capsys.readouterr().err
