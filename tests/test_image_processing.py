import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_mae import MAEConfig, MAEImageProcessor
from hf_mae.image_processing_mae import convert_image_mode


def make(mode: str, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random((size[1], size[0]), dtype=np.float32))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1", "YCbCr"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_image_mode(mode, channels):
    processor = MAEImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16},
                                  num_channels=channels, image_mean=[0.5] * channels, image_std=[0.5] * channels)
    pixels = processor(make(mode), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, channels, 16, 16) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 - 1e-6 and pixels.max() <= 1.0 + 1e-6


def test_high_bit_depth_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    out = np.asarray(convert_image_mode(Image.fromarray(values), 1))
    assert out.tolist() == [[0, 100, 255]]
    floats = np.asarray(convert_image_mode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), 1))
    assert floats.tolist() == [[0, 128, 255]]


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    assert np.asarray(convert_image_mode(rgba, 3)).tolist() == [[[255, 255, 255], [255, 255, 255]]]


def test_eval_transform_resize_crop_normalise():
    processor = MAEImageProcessor()  # official eval: shortest edge 256 bicubic, center crop 224
    image = Image.new("RGB", (500, 375), (124, 116, 104))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)
    expected = (torch.tensor([124, 116, 104]) / 255 - torch.tensor(processor.image_mean)) / torch.tensor(
        processor.image_std)
    assert torch.allclose(pixels[0, :, 100, 100], expected.float(), atol=1e-4)


def test_for_config_and_auto_registration(tmp_path):
    config = MAEConfig.from_preset("mae-vit-mnist-patch4")
    processor = MAEImageProcessor.for_config(config)
    assert processor.crop_size["height"] == 28 and processor.num_channels == 1 and processor.patch_size == 4
    processor.save_pretrained(tmp_path)
    config.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is MAEImageProcessor and loaded.patch_size == 4 and loaded.num_channels == 1


def test_patch_round_trip_and_norm_pix_inverse():
    processor = MAEImageProcessor(patch_size=4)
    pixels = torch.randn(2, 3, 8, 12)
    patches = processor.patchify(pixels)
    assert patches.shape == (2, 6, 48)
    assert torch.equal(processor.unpatchify(patches, (8, 12)), pixels)
    # channels are last inside a patch vector (official nchpwq -> nhwpqc)
    assert torch.equal(patches[0, 0, :3], pixels[0, :, 0, 0])
    targets, mean, var = processor.normalize_patches(pixels)
    assert mean.shape == (2, 6, 1)
    assert torch.allclose(targets * (var + 1e-6).sqrt() + mean, patches, atol=1e-5)


def test_postprocess_reconstruction_makes_the_statistics_choice_explicit():
    processor = MAEImageProcessor(patch_size=4, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    pixels = torch.rand(1, 3, 8, 8) * 2 - 1
    targets, _, _ = processor.normalize_patches(pixels)
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="statistics"):
        processor.postprocess_reconstruction(targets, pixels, mask, norm_pix_loss=True)
    leak = processor.postprocess_reconstruction(targets, pixels, mask, norm_pix_loss=True, statistics="target")
    original = (pixels + 1) / 2
    assert torch.allclose(leak["original"], original, atol=1e-5)
    assert torch.allclose(leak["reconstruction"], original, atol=1e-4)  # perfect prediction + true stats
    honest = processor.postprocess_reconstruction(targets, pixels, mask, norm_pix_loss=True, statistics="visible")
    assert not torch.allclose(honest["reconstruction"], original, atol=1e-3)  # masked stats not used
    # visible patches pasted from the input; masked ones come from the prediction
    assert torch.allclose(honest["reconstruction_visible"][..., :4, :4], original[..., :4, :4], atol=1e-5)
    assert torch.allclose(honest["masked"][..., 4:, 4:], torch.full((1, 3, 4, 4), 0.5))
    pixels_pred = processor.postprocess_reconstruction(processor.patchify(pixels), pixels, mask,
                                                       norm_pix_loss=False)
    assert torch.allclose(pixels_pred["reconstruction"], original, atol=1e-5)
    with pytest.raises(ValueError, match="norm-pix"):
        processor.postprocess_reconstruction(targets, pixels, mask, norm_pix_loss=False, statistics="target")
