import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_mae import MAEConfig, MAEImageProcessor
from hf_mae.models.mae.image_processing_mae import convert_image_mode


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


RNG = np.random.default_rng(1)
RGB = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)  # (H, W, C)


@pytest.mark.parametrize("layout", ["pil", "hwc", "chw", "torch_chw", "float01_hwc", "float255_chw", "torch_float01"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_input_layout_gives_the_pil_result(layout, channels):
    processor = MAEImageProcessor(size={"shortest_edge": 18}, crop_size={"height": 16, "width": 16},
                                  num_channels=channels, image_mean=[0.5] * channels, image_std=[0.5] * channels)
    inputs = {
        "pil": Image.fromarray(RGB),
        "hwc": RGB,
        "chw": RGB.transpose(2, 0, 1),
        "torch_chw": torch.from_numpy(RGB).permute(2, 0, 1),
        "float01_hwc": RGB / 255.0,
        "float255_chw": RGB.transpose(2, 0, 1).astype(np.float32),
        "torch_float01": torch.from_numpy(RGB).permute(2, 0, 1) / 255.0,
    }
    expected = processor(Image.fromarray(RGB), return_tensors="pt")["pixel_values"]
    pixels = processor(inputs[layout], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, channels, 16, 16)
    torch.testing.assert_close(pixels, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image", [RGB[..., :1], RGB[..., 0], RGB[None, ..., 0], np.dstack([RGB, RGB[..., :1]])],
                         ids=["gray_hw1", "gray_hw", "gray_1hw", "rgba"])
def test_gray_and_rgba_arrays_convert_like_pil(image):
    for channels in (1, 3):
        processor = MAEImageProcessor(do_resize=False, crop_size={"height": 20, "width": 24}, num_channels=channels,
                                      image_mean=[0.0] * channels, image_std=[1.0] * channels)
        squeezed = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
        picture = Image.fromarray(squeezed[..., 0] if squeezed.ndim == 3 and squeezed.shape[-1] == 1 else squeezed)
        expected = processor(picture, return_tensors="pt")["pixel_values"]
        assert processor(image, return_tensors="pt")["pixel_values"].shape == (1, channels, 20, 24)
        torch.testing.assert_close(processor(image, return_tensors="pt")["pixel_values"], expected)


def test_one_channel_processor_takes_an_rgb_array():
    config = MAEConfig.from_preset("mae-vit-mnist-patch4")
    rgb = RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    assert MAEImageProcessor.for_config(config)(rgb, return_tensors="pt")["pixel_values"].shape == (1, 1, 28, 28)
    processor = MAEImageProcessor.for_config(config, crop_pct=1.0)  # no resize: the values are checkable
    pixels = processor(rgb, return_tensors="pt")["pixel_values"]
    luminance = np.asarray(Image.fromarray(rgb).convert("L"))  # PIL's ITU-R 601 weights
    expected = (luminance / 255 - processor.image_mean[0]) / processor.image_std[0]
    np.testing.assert_allclose(pixels[0, 0].numpy(), expected, atol=1e-5)


def test_unreadable_arrays_are_named():
    processor = MAEImageProcessor()
    with pytest.raises(ValueError, match="channel axis"):
        processor(np.zeros((7, 8, 9), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        processor(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"in \[-2, 1\]; already normalised"):
        processor(torch.tensor([-2.0, 1.0]).repeat(3, 8, 4))


def test_sixteen_bit_arrays_match_pil_i16():
    values = RNG.integers(0, 65536, (20, 24), dtype=np.uint16)
    processor = MAEImageProcessor(do_resize=False, crop_size={"height": 20, "width": 24}, num_channels=1,
                                  image_mean=[0.0], image_std=[1.0])
    torch.testing.assert_close(processor(values.astype(np.int32), return_tensors="pt")["pixel_values"],
                               processor(Image.fromarray(values), return_tensors="pt")["pixel_values"])


def test_size_as_height_width_sets_the_output_size():
    processor = MAEImageProcessor(size={"height": 32, "width": 32})
    assert processor.crop_size == {"height": 32, "width": 32} and processor.output_size == (32, 32)
    assert processor(Image.new("RGB", (50, 40)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
    explicit = MAEImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32})
    assert explicit.output_size == (32, 32)  # an explicit crop still wins


def test_check_matches_names_both_sides():
    config = MAEConfig.from_preset("mae-vit-mnist-patch4")
    MAEImageProcessor.for_config(config).check_matches(config)  # matching: no error
    with pytest.raises(ValueError, match=r"outputs 224x224 pixels, the model takes 28x28"):
        MAEImageProcessor(num_channels=1, patch_size=4).check_matches(config)
    with pytest.raises(ValueError, match=r"3 channel\(s\), the model takes 1"):
        MAEImageProcessor.for_config(config, num_channels=3).check_matches(config)
    with pytest.raises(ValueError, match="follows the input"):
        MAEImageProcessor.for_config(config, do_center_crop=False).check_matches(config)
    with pytest.raises(ValueError, match="patch_size is 16, the model's 4"):
        MAEImageProcessor.for_config(config, patch_size=16).check_matches(config)


def test_check_works_for_any_transformers_processor():
    from transformers import ViTImageProcessor

    from hf_mae.models.mae.image_processing_mae import check_processor_matches

    config = MAEConfig(image_size=32, patch_size=4, hidden_size=32, num_attention_heads=2)
    check_processor_matches(ViTImageProcessor(size={"height": 32, "width": 32}), config)
    with pytest.raises(ValueError, match=r"outputs 224x224 pixels, the model takes 32x32"):
        check_processor_matches(ViTImageProcessor(), config)
