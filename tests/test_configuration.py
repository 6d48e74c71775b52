import pytest

from hf_mae import PRESETS, MAEConfig

SEED_CONFIG = {"img_size": 224, "patch_size": 16, "encoder_dim": 768, "decoder_dim": 512, "encoder_layers": 12,
               "decoder_layers": 8, "encoder_heads": 12, "decoder_heads": 16, "mask_ratio": 0.75,
               "norm_pix_loss": True}


def test_seed_config_dict_maps_to_hf_fields():
    config = MAEConfig(**SEED_CONFIG)
    assert (config.image_size, config.hidden_size, config.decoder_hidden_size) == (224, 768, 512)
    assert (config.num_hidden_layers, config.decoder_num_hidden_layers) == (12, 8)
    assert (config.num_attention_heads, config.decoder_num_attention_heads) == (12, 16)
    assert config.intermediate_size == 3072 and config.decoder_intermediate_size == 2048
    assert config.encoder_dim == 768  # aliases read back too


def test_defaults_follow_the_paper():
    config = MAEConfig()
    assert config.layer_norm_eps == 1e-6 and config.norm_pix_loss and config.mask_ratio == 0.75
    assert config.grid_size == (14, 14) and config.num_patches == 196


def test_round_trip(tmp_path):
    config = MAEConfig(image_size=(32, 48), patch_size=16, hidden_size=64, num_attention_heads=4)
    config.save_pretrained(tmp_path)
    loaded = MAEConfig.from_pretrained(tmp_path)
    assert loaded.image_size == (32, 48) and loaded.grid_size == (2, 3)
    assert loaded.to_dict()["hidden_size"] == 64 and loaded.model_type == "hf_mae"


@pytest.mark.parametrize("fields, named", [
    ({"image_size": 30, "patch_size": 4}, "patch_size"),
    ({"image_size": (32, 30), "patch_size": 4}, "image_size"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"mask_ratio": -0.1}, "mask_ratio"),
    ({"hidden_size": 100, "num_attention_heads": 3}, "num_attention_heads"),
    ({"decoder_hidden_size": 100, "decoder_num_attention_heads": 16}, "decoder_num_attention_heads"),
    ({"hidden_size": 6, "num_attention_heads": 2}, "hidden_size"),
    ({"pooling": "max"}, "pooling"),
    ({"classifier_head": "mlp"}, "classifier_head"),
    ({"drop_path_rate": 1.5}, "drop_path_rate"),
])
def test_invalid_values_name_the_field(fields, named):
    with pytest.raises(ValueError, match=named):
        MAEConfig(**fields)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets(name):
    config = MAEConfig.from_preset(name)
    assert config.hidden_size % config.num_attention_heads == 0
    assert config.decoder_hidden_size == PRESETS[name]["decoder_hidden_size"]


def test_preset_values_and_overrides():
    base = MAEConfig.from_preset("mae-vit-base-patch16", mask_ratio=0.5)
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads, base.mask_ratio) == (768, 12, 12, 0.5)
    huge = MAEConfig.from_preset("mae-vit-huge-patch14")
    assert (huge.hidden_size, huge.num_hidden_layers, huge.patch_size) == (1280, 32, 14)
    assert MAEConfig.from_preset("mae-vit-large-patch16").decoder_num_hidden_layers == 8
    with pytest.raises(ValueError, match="unknown preset"):
        MAEConfig.from_preset("mae-vit-gigantic")


@pytest.mark.parametrize("fields, named", [
    ({"hidden_size": -32}, "hidden_size"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"intermediate_size": -1}, "intermediate_size"),
    ({"intermediate_size": 0}, "intermediate_size"),
    ({"decoder_hidden_size": -16}, "decoder_hidden_size"),
    ({"decoder_intermediate_size": -4}, "decoder_intermediate_size"),
    ({"initializer_range": -0.02}, "initializer_range"),
    ({"initializer_range": 0.0}, "initializer_range"),
    ({"initializer_range": float("nan")}, "initializer_range"),
    ({"initializer_range": float("inf")}, "initializer_range"),
    ({"layer_norm_eps": -1}, "layer_norm_eps"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ({"layer_norm_eps": float("nan")}, "layer_norm_eps"),
    ({"num_hidden_layers": -1}, "num_hidden_layers"),
    ({"decoder_num_hidden_layers": -1}, "decoder_num_hidden_layers"),
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"mask_ratio": float("nan")}, "mask_ratio"),
    ({"eval_mask_seed": -1}, "eval_mask_seed"),
    ({"add_fpn": True}, "out_indices"),
    ({"out_indices": [3, 13]}, "out_indices"),
    ({"out_features": ["stage99"]}, "out_features"),
])
def test_every_size_eps_and_init_field_is_checked(fields, named):
    with pytest.raises(ValueError, match=named):
        MAEConfig(**fields)


def test_zero_depth_and_backbone_fields_round_trip(tmp_path):
    assert MAEConfig(num_hidden_layers=0, decoder_num_hidden_layers=0).stage_names == ["stem"]
    config = MAEConfig(num_hidden_layers=4, out_indices=[1, 2, 3, 4], add_fpn=True, eval_mask_seed=None)
    config.save_pretrained(tmp_path)
    loaded = MAEConfig.from_pretrained(tmp_path)
    assert loaded.out_features == ["stage1", "stage2", "stage3", "stage4"] and loaded.add_fpn
    assert loaded.eval_mask_seed is None
    MAEConfig(num_hidden_layers=4).save_pretrained(tmp_path / "plain")
    overridden = MAEConfig.from_pretrained(tmp_path / "plain", out_indices=[2, 3, 4])  # AutoBackbone's path
    assert overridden.out_features == ["stage2", "stage3", "stage4"]
