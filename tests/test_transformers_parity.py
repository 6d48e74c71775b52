"""Parity with transformers' ViTMAE / ViT, through save_pretrained/from_pretrained on the transformers side."""

import torch
from conftest import tiny_config
from transformers import ViTMAEConfig, ViTMAEForPreTraining, ViTModel

from hf_mae import MAEForPreTraining, MAEModel
from hf_mae.convert.vitmae import from_transformers, to_transformers


def transformers_model(tmp_path, **overrides) -> ViTMAEForPreTraining:
    fields = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                  decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True)
    fields.update(overrides)
    model = ViTMAEForPreTraining(ViTMAEConfig(**fields))
    with torch.no_grad():  # random, non-zero everything (transformers leaves positions at zero from scratch)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    return ViTMAEForPreTraining.from_pretrained(tmp_path).eval()


def test_from_transformers_matches_loss_logits_mask(tmp_path):
    theirs = transformers_model(tmp_path)
    ours = from_transformers(tmp_path).eval()
    assert ours.config.layer_norm_eps == theirs.config.layer_norm_eps and ours.config.norm_pix_loss
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    a, b = theirs(pixels, noise=noise), ours(pixels, noise=noise)
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)


def test_pixel_target_checkpoint_keeps_its_loss(tmp_path):
    ours = from_transformers(transformers_model(tmp_path, norm_pix_loss=False))
    assert ours.config.norm_pix_loss is False  # never written over (transformers#29416)


def test_to_transformers_round_trip(tmp_path):
    ours = MAEForPreTraining(tiny_config()).eval()
    to_transformers(ours).save_pretrained(tmp_path)
    theirs = ViTMAEForPreTraining.from_pretrained(tmp_path).eval()
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    a, b = ours(pixels, noise=noise), theirs(pixels, noise=noise)
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.loss, b.loss, atol=1e-5)
    back = from_transformers(theirs)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, back.state_dict()[key]), key


def test_encoder_matches_stock_vit_without_masking(tmp_path):
    encoder = MAEModel(tiny_config()).eval()
    to_transformers(encoder).save_pretrained(tmp_path)
    vit = ViTModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    pixels = torch.randn(2, 3, 16, 16)
    assert torch.allclose(vit(pixels).last_hidden_state, encoder(pixels).last_hidden_state, atol=1e-5)
