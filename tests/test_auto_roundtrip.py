"""Every way of naming a config (the seed's aliases, transformers' field names, presets, a loaded config) saves
and loads with every Auto class, backbone stage choices included."""

import pytest
import torch
from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from hf_mae import PRESETS, MAEBackbone, MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel

SEED_NAMES = dict(img_size=32, patch_size=4, encoder_dim=64, decoder_dim=32, encoder_layers=2, decoder_layers=1,
                  encoder_heads=4, decoder_heads=4)
HF_NAMES = dict(image_size=32, patch_size=4, hidden_size=64, decoder_hidden_size=32, num_hidden_layers=2,
                decoder_num_hidden_layers=1, num_attention_heads=4, decoder_num_attention_heads=4)
AUTO_CLASSES = {AutoModel: MAEModel, AutoModelForPreTraining: MAEForPreTraining,
                AutoModelForImageClassification: MAEForImageClassification, AutoBackbone: MAEBackbone}
ARCHITECTURE_FIELDS = ("image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                       "num_attention_heads", "decoder_hidden_size", "decoder_num_hidden_layers",
                       "decoder_num_attention_heads", "stage_names", "out_features", "out_indices")


def _fields(config: MAEConfig) -> dict:
    return {field: getattr(config, field) for field in ARCHITECTURE_FIELDS}


def test_seed_aliases_and_hf_names_build_the_same_config():
    assert _fields(MAEConfig(**SEED_NAMES)) == _fields(MAEConfig(**HF_NAMES))
    assert MAEConfig(**SEED_NAMES).stage_names == ["stem", "stage1", "stage2"]


@pytest.mark.parametrize("names", [SEED_NAMES, HF_NAMES], ids=["seed_aliases", "hf_names"])
@pytest.mark.parametrize("saved_class", [MAEForPreTraining, MAEForImageClassification, MAEModel])
def test_saved_model_loads_with_every_auto_class(tmp_path, names, saved_class):
    """The issue's reproduction: a pretraining model saved from seed-alias fields loaded with AutoModel raised
    "out_features must be a subset of stage_names". Every Auto class loads the encoder weights unchanged."""
    torch.manual_seed(0)
    saved = saved_class(MAEConfig(**names, num_labels=3))
    saved.save_pretrained(tmp_path)
    expected = saved.base_model.state_dict()
    for auto_class, model_class in AUTO_CLASSES.items():
        loaded = auto_class.from_pretrained(tmp_path)
        assert type(loaded) is model_class, auto_class.__name__
        assert _fields(loaded.config) == _fields(saved.config), auto_class.__name__
        for key, value in loaded.base_model.state_dict().items():
            assert torch.equal(value, expected[key]), (auto_class.__name__, key)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips_through_auto_config(tmp_path, preset):
    """Each preset saves and loads as itself, and every Auto class builds a model from it (on the meta device:
    the large presets hold up to 630M weights), backbone stage choices kept."""
    config = MAEConfig.from_preset(preset, out_indices=[1, 2])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MAEConfig and _fields(loaded) == _fields(config)
    assert loaded.out_indices == [1, 2] and loaded.out_features == ["stage1", "stage2"]
    assert loaded.stage_names[-1] == f"stage{PRESETS[preset]['num_hidden_layers']}"
    with torch.device("meta"):
        for auto_class, model_class in AUTO_CLASSES.items():
            if auto_class is AutoBackbone:
                model = MAEBackbone(loaded)  # AutoBackbone has no from_config
                assert model.out_indices == [1, 2]
            else:
                model = auto_class.from_config(loaded)
            assert type(model) is model_class


def test_loaded_config_saves_again_and_backbone_stages_follow(tmp_path):
    """A config that came from from_pretrained (the third naming route) round-trips again; out_indices given at
    load time replace the saved ones and the backbone returns those stages."""
    MAEForPreTraining(MAEConfig(**SEED_NAMES)).save_pretrained(tmp_path / "first")
    config = AutoConfig.from_pretrained(tmp_path / "first")
    config.save_pretrained(tmp_path / "second")
    assert _fields(AutoConfig.from_pretrained(tmp_path / "second")) == _fields(config)
    backbone = AutoBackbone.from_pretrained(tmp_path / "first", out_indices=[0, 2]).eval()
    assert backbone.out_features == ["stem", "stage2"]
    maps = backbone(torch.randn(2, 3, 32, 32)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 64, 8, 8)] * 2
    backbone.save_pretrained(tmp_path / "backbone")
    assert AutoConfig.from_pretrained(tmp_path / "backbone").out_indices == [0, 2]
