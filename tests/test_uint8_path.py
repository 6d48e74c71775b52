"""The training data path: uint8 batches through the DataLoader, normalised (and erased) on the device.

The programs build `TrainTransform(..., output="uint8")` (OpenCV resize) and pass `transform.normalizer()` to
the training loop; the float/PIL path (`output="float", resize="pil"`) is what benchmarks/benchmark.py
--case loader compares it with.
"""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_mae.data import transforms as hd
from hf_mae.data.augment import RandomErasing
from hf_mae.data.decoding import collate, make_transform_fn
from hf_mae.data.train_loader import EpochSeededDataset, train_dataloader
from hf_mae.data.transforms import DeviceNormalize, TrainTransform, resize_box

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo_jpeg(width=200, height=150, seed=0, quality=90) -> bytes:
    """Photo-like: smooth gradients plus mild noise (compresses like a photo, not like white noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * rng.uniform(0.5, 1.5) + y * rng.uniform(0.2, 1.0)) % 256,
                     (x * rng.uniform(0.2, 1.2)) % 256, (y * rng.uniform(0.5, 1.5)) % 256], axis=-1)
    image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def jpeg_dataset():
    images = [{"bytes": photo_jpeg(seed=i), "path": None} for i in range(12)]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(12)]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.Value("int64")}))


def first_batch(dataset, transform, batch_size=12, seed=4):
    loader = train_dataloader(dataset, make_transform_fn(transform), batch_size, num_workers=0, seed=seed)
    return next(iter(loader))


def test_uint8_batch_equals_the_float_batch(jpeg_dataset):
    """Same crops and flips (per-image seeds) either way; uint8 crosses the loader, normalised afterwards."""
    float_path = TrainTransform(32, mean=MEAN, std=STD, resize="pil", output="float")
    old = first_batch(jpeg_dataset, float_path)["pixel_values"]
    transform = TrainTransform(32, mean=MEAN, std=STD, resize="pil", output="uint8")
    batch = first_batch(jpeg_dataset, transform)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (12, 3, 32, 32)
    new = transform.normalizer()(batch)["pixel_values"]
    assert new.dtype == torch.float32 and torch.equal(new, old)  # the same float32 operations: the same bits
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    unnormalised = old * std + mean
    assert (batch["pixel_values"] / 255 - unnormalised).abs().max() <= 1 / 255


def test_the_programs_path_is_close_to_the_old_one(jpeg_dataset):
    """OpenCV's resize (the programs' path) against the PIL float path: within a grey level on average."""
    old = first_batch(jpeg_dataset, TrainTransform(48, resize="pil", output="float"))["pixel_values"]
    transform = TrainTransform(48, output="uint8")
    assert transform.resize == "opencv"
    batch = first_batch(jpeg_dataset, transform)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    difference = (batch["pixel_values"] / 255 - (old * std + mean)).abs()
    assert difference.mean() < 1 / 255, difference.mean() * 255  # measured ~0.5 grey levels here
    assert torch.equal(transform.normalizer()(batch)["pixel_values"],
                       DeviceNormalize(MEAN, STD)(batch)["pixel_values"])


@pytest.mark.parametrize("crop", [(10, 20, 150, 120), (30, 5, 40, 30)])  # shrinking (area), enlarging (cubic)
def test_opencv_resize_against_pil_bicubic(crop):
    pixels = np.asarray(Image.open(io.BytesIO(photo_jpeg(seed=3))).convert("RGB"))
    left, top, w, h = crop
    box = (left, top, left + w, top + h)
    ours = resize_box(pixels, box, (64, 64)).astype(int)
    pil = np.asarray(Image.fromarray(pixels).resize((64, 64), Image.Resampling.BICUBIC, box=box)).astype(int)
    assert ours.shape == pil.shape == (64, 64, 3)
    assert np.abs(ours - pil).mean() < 1.5  # grey levels
    gray = resize_box(pixels[..., 0], box, (64, 48))
    assert gray.shape == (48, 64) and gray.dtype == np.uint8


def test_opencv_and_pil_paths_decode_grey_and_colour_alike():
    data = photo_jpeg(seed=5)
    for channels in (1, 3):
        for output in ("uint8", "float"):
            transform = TrainTransform(24, num_channels=channels, output=output)
            torch.manual_seed(0)
            out = transform(Image.open(io.BytesIO(data)))
            assert out.shape == (channels, 24, 24)
            assert out.dtype == (torch.uint8 if output == "uint8" else torch.float32)


def test_erasing_drawn_in_the_worker_applied_on_the_device():
    data = photo_jpeg(seed=1)
    erase = RandomErasing(prob=1.0)
    uint8 = TrainTransform(32, hflip=False, output="uint8", erase=erase)
    float_path = TrainTransform(32, hflip=False, erase=erase, output="float")
    torch.manual_seed(7)
    item = uint8(Image.open(io.BytesIO(data)))
    torch.manual_seed(7)
    reference = float_path(Image.open(io.BytesIO(data)))  # the float path erases in the worker
    top, left, height, width, seed = item["erase"]
    assert height > 0 and width > 0 and item["pixel_values"].dtype == torch.uint8
    normalize = uint8.normalizer()
    batch = normalize(collate([item, None, item]))  # a skipped image in between: draws stay aligned
    assert "erase" not in batch and batch["pixel_values"].shape == (2, 3, 32, 32)
    out = batch["pixel_values"][0]
    plain = normalize({"pixel_values": item["pixel_values"][None]})["pixel_values"][0]
    changed = (out != plain).any(0)
    inside = torch.zeros_like(changed)
    inside[top:top + height, left:left + width] = True
    assert changed[inside].float().mean() > 0.99 and not changed[~inside].any()  # exactly the drawn rectangle
    # The float path erased the same rectangle (the same draws from the image's random stream).
    torch.manual_seed(7)
    unerased = TrainTransform(32, hflip=False, output="float")(Image.open(io.BytesIO(data)))
    assert torch.equal((reference != unerased).any(0), changed)
    assert torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])  # the noise is seeded per image


def test_uint8_erasing_is_per_image_seeded_in_the_loader(jpeg_dataset):
    transform = TrainTransform(16, output="uint8", erase=RandomErasing(prob=0.5))
    dataset = EpochSeededDataset(jpeg_dataset, make_transform_fn(transform), seed=3)
    alone = dataset[13]  # epoch 1, image 1
    among = dataset.__getitems__([12, 13, 20])[1]
    assert alone["erase"] == among["erase"] and torch.equal(alone["pixel_values"], among["pixel_values"])
    draws = [dataset[k]["erase"] for k in range(12)]
    assert any(d is None for d in draws) and any(d is not None for d in draws)


def test_uint8_output_needs_a_random_erasing_it_can_draw():
    with pytest.raises(ValueError, match="RandomErasing"):
        TrainTransform(16, output="uint8", erase=lambda pixels: pixels)
    with pytest.raises(ValueError, match="output"):
        TrainTransform(16, output="bf16")


def test_the_default_output_is_the_programs_uint8_path():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    out = TrainTransform(16)(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    assert TrainTransform(16).output == "uint8"


def test_device_normalize_leaves_float_batches_alone_and_pins_when_asked(jpeg_dataset):
    placeholder = {"pixel_values": torch.zeros(2, 3, 8, 8)}
    assert DeviceNormalize(MEAN, STD)(placeholder) is placeholder
    loader = train_dataloader(jpeg_dataset, make_transform_fn(TrainTransform(8, output="uint8")), 4, pin_memory=True)
    assert loader.pin_memory


def test_without_opencv_pil_resizes(monkeypatch):
    monkeypatch.setattr(hd, "cv2", None)
    transform = TrainTransform(16, output="uint8")
    assert transform.resize == "pil"
    assert transform(Image.open(io.BytesIO(photo_jpeg(seed=2)))).shape == (3, 16, 16)


def test_pretraining_steps_see_the_normalised_batch_of_the_float_path(jpeg_dataset, tmp_path):
    """The loop normalises the uint8 batch on the device before the step: the first batch the model sees is the
    float path's batch (same crops, same normalisation) whose sum the run logs."""
    import json

    from conftest import TINY

    from hf_mae.cli.pretrain import main, parse_args
    from hf_mae.data.sources import load_image_datasets

    jpeg_dataset.to_parquet(str(tmp_path / "train.parquet"))
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    main(parse_args(["--data_files", str(tmp_path / "train.parquet"), "--model_config", str(tmp_path / "tiny.json"),
                     "--output_dir", str(tmp_path / "run"), "--per_device_batch_size", "4", "--max_train_steps", "1",
                     "--num_workers", "0", "--mixed_precision", "no", "--warmup_steps", "0", "--monitor_every", "-1"]))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    logged = next(r for r in log if r.get("event") == "first_batch")["pixel_sums_per_process"][0]
    processor = json.loads((tmp_path / "run" / "preprocessor_config.json").read_text())
    train, _, _ = load_image_datasets(data_files=str(tmp_path / "train.parquet"))
    transform = TrainTransform(TINY["image_size"], mean=processor["image_mean"], std=processor["image_std"],
                               output="float")
    expected = first_batch(train, transform, batch_size=4, seed=0)["pixel_values"]  # float32, normalised in the worker
    assert logged == pytest.approx(expected.sum().item(), rel=1e-5, abs=1e-3)
    assert abs(logged) < expected.numel()  # normalised values, not 0-255 pixels
