"""RandAugment and random erasing (the fine-tuning recipe's extra augmentations)."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hf_mae.data.augment import FILL, RandAugment, RandomErasing
from hf_mae.data.transforms import TrainTransform


def photo(mode="RGB", size=(40, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(30, 220, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(int)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("op", RandAugment.OPS)
def test_every_op_keeps_size_and_mode(op, mode):
    img = photo(mode)
    for level in (0.0, 0.5, 1.0):
        out = RandAugment().apply(op, img, level)
        assert out.size == img.size and out.mode == img.mode


@pytest.mark.parametrize("op", ["Rotate", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness",
                                "ShearX", "ShearY", "TranslateX", "TranslateY"])
def test_magnitude_zero_is_the_identity_for_graded_ops(op):
    img = photo()
    assert np.array_equal(pixels(RandAugment().apply(op, img, 0.0)), pixels(img))


def test_full_magnitude_strengths():
    img, augment = photo(), RandAugment()
    assert pixels(augment.apply("Posterize", img, 1.0)).max() == 0  # no bits kept
    assert np.array_equal(pixels(augment.apply("Posterize", img, 0.0)), pixels(img) & 0xF0)  # 4 bits kept
    assert np.array_equal(pixels(augment.apply("Solarize", img, 1.0)), 255 - pixels(img))  # every pixel inverted
    brighter = pixels(augment.apply("SolarizeAdd", img, 1.0))
    dark = pixels(img) < 128
    assert np.array_equal(brighter[dark], np.minimum(255, pixels(img)[dark] + 110))
    assert np.array_equal(brighter[~dark], pixels(img)[~dark])
    assert np.array_equal(pixels(augment.apply("Invert", img, 0.3)), 255 - pixels(img))


def test_translation_fills_the_uncovered_strip_with_the_mean_colour():
    img = photo(size=(40, 32))
    out = pixels(RandAugment(generator=torch.Generator().manual_seed(0)).apply("TranslateX", img, 1.0))
    strip = round(0.45 * 40) - 1  # columns surely uncovered on the side the image moved away from
    left, right = out[:, :strip], out[:, -strip:]
    assert (left == FILL).all() or (right == FILL).all()
    grey = pixels(RandAugment(generator=torch.Generator().manual_seed(0)).apply("TranslateX", photo("L"), 1.0))
    assert (grey[:, :strip] == round(sum(FILL) / 3)).all() or (grey[:, -strip:] == round(sum(FILL) / 3)).all()


def test_seeded_generators_reproduce_and_differ():
    images = [photo(seed=i) for i in range(8)]

    def run(seed):
        augment = RandAugment(generator=torch.Generator().manual_seed(seed))
        return [pixels(augment(img)) for img in images]

    first, again, other = run(0), run(0), run(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    assert sum(not np.array_equal(a, pixels(img)) for a, img in zip(first, images)) >= 4  # ops do get applied


def test_no_ops_or_zero_probability_leave_images_alone():
    img = photo()
    assert RandAugment(num_ops=0)(img) is img
    assert RandAugment(prob=0.0)(img) is img


def test_policy_strings():
    official = RandAugment.from_string("rand-m9-mstd0.5-inc1")
    assert (official.num_ops, official.magnitude, official.magnitude_std, official.prob) == (2, 9.0, 0.5, 0.5)
    custom = RandAugment.from_string("rand-n3-m7-p1-inc1")
    assert (custom.num_ops, custom.magnitude, custom.magnitude_std, custom.prob) == (3, 7.0, 0.0, 1.0)
    assert RandAugment.from_string("none") is None
    with pytest.raises(ValueError, match="inc1"):
        RandAugment.from_string("rand-m9-mstd0.5")  # timm's default op set, not implemented
    with pytest.raises(ValueError, match="cannot read 'x5'"):
        RandAugment.from_string("rand-m9-x5-inc1")
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        RandAugment.from_string("augmix-m5")
    with pytest.raises(ValueError, match="magnitude"):
        RandAugment.from_string("rand-m12-inc1")


def test_random_erasing_replaces_one_rectangle_with_noise():
    for seed in range(20):
        image = torch.zeros(3, 32, 40)
        out = RandomErasing(prob=1.0, generator=torch.Generator().manual_seed(seed))(image)
        changed = (out != 0).any(0)
        rows, cols = changed.any(1).nonzero().squeeze(1), changed.any(0).nonzero().squeeze(1)
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one filled rectangle
        assert 0.02 * 0.5 <= box.numel() / changed.numel() <= 1 / 3 * 1.5  # rounding of the sides aside
        values = out[:, changed]
        assert values.std() > 0.5 and values.abs().mean() < 1.5  # per-pixel N(0, 1) noise


def test_random_erasing_probability():
    generator = torch.Generator().manual_seed(0)
    erase = RandomErasing(prob=0.25, generator=generator)
    erased = sum(bool((erase(torch.zeros(3, 16, 16)) != 0).any()) for _ in range(400))
    assert 60 <= erased <= 140
    assert not (RandomErasing(prob=0.0)(torch.zeros(3, 8, 8)) != 0).any()
    with pytest.raises(ValueError, match="prob"):
        RandomErasing(prob=-0.1)


def test_train_transform_runs_augment_on_the_crop_and_erase_on_the_normalised_tensor():
    img = photo(size=(16, 16))
    seen = {}

    def augment(crop):
        seen["size"] = crop.size
        return ImageOps.invert(crop)

    def erase(tensor):
        seen["mean"] = tensor.mean().item()
        return tensor * 0

    plain = TrainTransform(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, mean=0.5, std=0.5, output="float")
    hooked = TrainTransform(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, mean=0.5, std=0.5, augment=augment,
                            erase=erase, output="float")
    out = hooked(img)
    assert seen["size"] == (8, 8) and not out.any()
    assert seen["mean"] == pytest.approx(-plain(img).mean().item(), abs=1e-2)  # the inverted crop, normalised
