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
