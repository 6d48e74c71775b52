"""MAEBackbone: the MAE encoder under AutoBackbone, feeding transformers' dense-prediction heads."""

import pytest
import torch
import torch.nn.functional as F
from conftest import save_tiny_checkpoint, tiny_config
from transformers import AutoBackbone, DPTConfig, DPTForDepthEstimation, UperNetConfig, UperNetForSemanticSegmentation

from hf_mae import MAEBackbone, MAEForImageClassification, MAEForPreTraining, MAEModel
from hf_mae.models.mae.modeling_mae import AUTO_MAP


def test_stages_are_the_encoder_blocks_as_maps_without_cls(config):
    backbone = MAEBackbone(tiny_config(out_indices=[0, 1, 2])).eval()
    assert backbone.stage_names == ["stem", "stage1", "stage2"] and backbone.channels == [32, 32, 32]
    pixels = torch.randn(2, 3, 16, 24)  # non-square: 4 x 6 patches
    maps = backbone(pixels).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 6)] * 3
    tokens = backbone.encoder(pixels, output_hidden_states=True).hidden_states  # (B, 1 + N, D) each
    for feature_map, hidden in zip(maps, tokens):
        # patch (row, col) sits at [:, :, row, col]; the CLS token is dropped
        assert torch.equal(feature_map[:, :, 1, 5], hidden[:, 1 + 1 * 6 + 5])
    assert backbone(pixels).hidden_states is None
    assert len(backbone(pixels, output_hidden_states=True).hidden_states) == 3
    default = MAEBackbone(tiny_config())
    assert default.out_features == ["stage2"]  # the last block when nothing is chosen


def test_tokens_instead_of_maps_for_dpt():
    backbone = MAEBackbone(tiny_config(out_indices=[2], reshape_hidden_states=False))
    assert backbone(torch.randn(1, 3, 16, 16)).feature_maps[0].shape == (1, 17, 32)


def test_feature_pyramid_is_4x_2x_1x_half():
    config = tiny_config(num_hidden_layers=4, out_indices=[1, 2, 3, 4], add_fpn=True)
    maps = MAEBackbone(config)(torch.randn(2, 3, 16, 16)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 4, 4), (2, 32, 2, 2)]
    with pytest.raises(ValueError, match="out_indices"):
        tiny_config(num_hidden_layers=4, out_indices=[1, 4], add_fpn=True)


@pytest.mark.parametrize("source", [MAEModel, MAEForPreTraining, MAEForImageClassification])
def test_auto_backbone_loads_the_encoder_weights_of_any_checkpoint(tmp_path, source):
    folder = save_tiny_checkpoint(tmp_path / "checkpoint", seed=3, model_class=source)
    original = source.from_pretrained(folder)
    encoder = original if source is MAEModel else original.encoder
    backbone = AutoBackbone.from_pretrained(folder, out_indices=[1, 2])
    assert type(backbone) is MAEBackbone and backbone.out_features == ["stage1", "stage2"]
    expected = encoder.state_dict()
    loaded = backbone.encoder.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    assert backbone(torch.randn(1, 3, 16, 16)).feature_maps[0].ndim == 4


def test_saved_backbone_round_trip_and_auto_map(tmp_path):
    backbone = MAEBackbone(tiny_config(num_hidden_layers=4, out_indices=[1, 2, 3, 4], add_fpn=True)).eval()
    backbone.save_pretrained(tmp_path)
    assert AUTO_MAP["AutoBackbone"] == "backbone_mae.MAEBackbone"
    loaded = AutoBackbone.from_pretrained(tmp_path).eval()
    assert loaded.config.add_fpn and loaded.out_indices == [1, 2, 3, 4]
    pixels = torch.randn(2, 3, 16, 16)
    for a, b in zip(backbone(pixels).feature_maps, loaded(pixels).feature_maps):
        assert torch.equal(a, b)


def test_input_embeddings_and_timm_forward_features(config):
    model = MAEForPreTraining(config).eval()
    assert model.get_input_embeddings() is model.encoder.patch_embed
    assert MAEBackbone(config).get_input_embeddings().proj.weight.shape == (32, 3, 4, 4)
    pixels = torch.randn(2, 3, 16, 16)
    features = model.encoder.forward_features(pixels)
    assert isinstance(features, torch.Tensor) and features.shape == (2, 17, 32)
    assert torch.equal(features, model.encoder(pixels).last_hidden_state)  # after the final norm, as timm


def halves_task(n: int = 8, seed: int = 0):
    """Images whose left half is bright or dark at random; the label is that half's class per pixel."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 16, 16, generator=generator) * 0.1
    bright = torch.rand(n, generator=generator) > 0.5
    pixels[:, :, :, :8] += torch.where(bright, 1.0, -1.0).view(n, 1, 1, 1)
    labels = torch.zeros(n, 16, 16, dtype=torch.long)
    labels[:, :, :8] = torch.where(bright, 1, 2).view(n, 1, 1)
    return pixels, labels


def train_steps(model, step_loss, steps: int = 15, lr: float = 3e-3) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
def test_upernet_segmentation_on_mae_backbone_trains(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "pretraining", seed=0)
    backbone = AutoBackbone.from_pretrained(folder, out_indices=[1, 2])
    # UperNet's auxiliary head reads the third map (in_index=2): with two maps, train without it
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone.config, num_labels=3,
                                                         hidden_size=32, use_auxiliary_head=False))
    model.backbone.load_state_dict(backbone.state_dict())  # the pretrained encoder under the head
    pixels, labels = halves_task()
    losses = train_steps(model, lambda: model(pixel_values=pixels, labels=labels).loss)
    assert model(pixel_values=pixels).logits.shape == (8, 3, 16, 16)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_upernet_with_the_feature_pyramid_trains():
    backbone_config = tiny_config(num_hidden_layers=4, out_indices=[1, 2, 3, 4], add_fpn=True)
    # UperNet's defaults, auxiliary head included (it reads the third map), but a narrow head for speed
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone_config, num_labels=3,
                                                         hidden_size=32))
    assert model.auxiliary_head is not None
    pixels, labels = halves_task()
    losses = train_steps(model, lambda: model(pixel_values=pixels, labels=labels).loss)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_dpt_depth_on_mae_backbone_trains():
    backbone_config = tiny_config(num_hidden_layers=4, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DPTConfig(backbone_config=backbone_config, is_hybrid=False, neck_hidden_sizes=[8, 16, 32, 32],
                       reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=16, head_in_index=-1,
                       hidden_size=32)
    model = DPTForDepthEstimation(config)
    pixels, labels = halves_task()
    depth = labels.float()  # "depth" 1 or 2 on the left half, 0 on the right

    def depth_loss():  # DPT predicts at 16x the patch grid (64 px here): compare at the target's size
        predicted = model(pixel_values=pixels).predicted_depth.unsqueeze(1)  # (B, 1, 64, 64)
        return (F.interpolate(predicted, size=(16, 16), mode="bilinear")[:, 0] - depth).pow(2).mean()

    losses = train_steps(model, depth_loss)
    assert losses[-1] < 0.5 * losses[0], losses
