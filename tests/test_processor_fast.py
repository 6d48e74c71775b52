"""MAEImageProcessorFast: the torch backend, chosen by AutoImageProcessor(use_fast=True), same outputs."""

import numpy as np
import pytest
import torch
from conftest import save_tiny_checkpoint
from PIL import Image
from transformers import AutoImageProcessor
from transformers.models.auto import image_processing_auto
from transformers.testing_utils import CaptureLogger

from hf_mae import MAEConfig, MAEImageProcessor, MAEImageProcessorFast

RNG = np.random.default_rng(0)


def mixed_inputs():
    return [Image.fromarray(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8)),
            Image.fromarray(RNG.integers(0, 256, (50, 20), dtype=np.uint8)),  # "L"
            RNG.integers(0, 256, (3, 25, 33), dtype=np.uint8),
            torch.rand(3, 19, 23),
            Image.fromarray(RNG.integers(0, 256, (16, 16, 4), dtype=np.uint8))]  # RGBA, smaller than the crop


@pytest.mark.parametrize("channels", [1, 3])
def test_same_outputs_as_the_pil_processor(channels):
    config = MAEConfig.from_preset("mae-vit-mnist-patch4", num_channels=channels, image_size=24)
    slow = MAEImageProcessor.for_config(config)
    fast = MAEImageProcessorFast(**slow.to_dict())
    images = mixed_inputs()
    expected = slow(images, return_tensors="pt")["pixel_values"]
    got = fast(images, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape == (5, channels, 24, 24) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    no_crop = {"do_center_crop": False}  # sizes differ: a list back, one tensor per image
    slow_list = MAEImageProcessor(**{**slow.to_dict(), **no_crop})(images[:2])["pixel_values"]
    fast_list = MAEImageProcessorFast(**{**slow.to_dict(), **no_crop})(images[:2])["pixel_values"]
    assert [tuple(x.shape) for x in fast_list] == [(channels, 27, 36), (channels, 67, 27)]
    for a, b in zip(fast_list, slow_list):
        torch.testing.assert_close(a, torch.as_tensor(b), atol=1e-5, rtol=0)


def test_auto_image_processor_use_fast_without_a_warning(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "checkpoint", seed=0)
    with CaptureLogger(image_processing_auto.logger) as captured:
        fast = AutoImageProcessor.from_pretrained(folder, use_fast=True)
        by_backend = AutoImageProcessor.from_pretrained(folder, backend="torchvision")
        pil = AutoImageProcessor.from_pretrained(folder, backend="pil")
    assert "use_fast" in captured.out  # transformers' own deprecation note: the capture works
    assert "not available" not in captured.out and "Falling back" not in captured.out
    assert type(fast) is MAEImageProcessorFast and type(by_backend) is MAEImageProcessorFast
    assert type(pil) is MAEImageProcessor
    fast.save_pretrained(tmp_path / "saved")  # saved as the one processor config, backend chosen at load
    saved = (tmp_path / "saved" / "preprocessor_config.json").read_text()
    assert '"image_processor_type": "MAEImageProcessor"' in saved
    assert '"AutoImageProcessor": "image_processing_mae.MAEImageProcessor"' in saved
    image = Image.fromarray(RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    torch.testing.assert_close(fast(image, return_tensors="pt")["pixel_values"],
                               pil(image, return_tensors="pt")["pixel_values"], atol=1e-5, rtol=0)
