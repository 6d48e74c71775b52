import numpy as np
import pytest
import torch
from conftest import tiny_config

from hf_mae import MAEForImageClassification, MAEForPreTraining, MAEModel
from hf_mae.models.mae.image_processing_mae import normalize_patches
from hf_mae.models.mae.modeling_mae import random_masking, sincos_pos_embed


def official_sincos(dim, rows, cols):
    """Independent NumPy transcription of the official formula (meshgrid(w, h): first half = column)."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.meshgrid(np.arange(cols, dtype=np.float64), np.arange(rows, dtype=np.float64))  # (w, h)
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_from_scratch_positions_are_fixed_sincos(config):
    model = MAEForPreTraining(config)
    expected = official_sincos(config.hidden_size, 4, 4)
    assert np.abs(expected).sum() > 0
    np.testing.assert_allclose(model.encoder.pos_embed[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model.decoder_pos_embed[0].numpy(), official_sincos(16, 4, 4), atol=1e-6)
    names = {name for name, _ in model.named_parameters()}
    assert "encoder.pos_embed" not in names and "decoder_pos_embed" not in names  # frozen: never trained
    np.testing.assert_allclose(sincos_pos_embed(8, (2, 3))[0].numpy(), official_sincos(8, 2, 3), atol=1e-6)


def test_from_scratch_init(config):
    model = MAEForPreTraining(config)
    assert 0.01 < model.mask_token.std().item() < 0.04 and 0.01 < model.encoder.cls_token.std().item() < 0.04
    qkv = model.encoder.blocks[0].attn.qkv
    bound = (6 / (qkv.in_features + qkv.out_features)) ** 0.5  # xavier uniform
    assert qkv.weight.abs().max() <= bound and qkv.weight.abs().max() > 0.8 * bound
    assert torch.count_nonzero(qkv.bias) == 0
    conv = model.encoder.patch_embed.proj.weight
    conv_bound = (6 / (conv.shape[0] + conv[0].numel())) ** 0.5
    assert conv.abs().max() <= conv_bound and conv.abs().max() > 0.8 * conv_bound
    assert torch.all(model.encoder.norm.weight == 1) and torch.all(model.encoder.norm.bias == 0)


def test_shapes_and_kept_tokens(config):
    model = MAEForPreTraining(config)
    pixels = torch.randn(3, 3, 16, 16)
    for ratio in (0.75, 0.5, 0.9):
        out = model(pixels, mask_ratio=ratio, output_hidden_states=True)
        kept = int(16 * (1 - ratio))
        assert out.hidden_states[-1].shape == (3, kept + 1, 32)
        assert out.logits.shape == (3, 16, 4 * 4 * 3)
        assert torch.all(out.mask.sum(dim=1) == 16 - kept)
        assert len(out.hidden_states) == config.num_hidden_layers + 1


def test_seed_api_unpacks_three_fields(config):
    model = MAEForPreTraining(config)
    loss, pred, mask = model(torch.randn(2, 3, 16, 16))
    assert loss.ndim == 0 and pred.shape == (2, 16, 48) and mask.shape == (2, 16)
    assert model.unpatchify(pred).shape == (2, 3, 16, 16)
    assert torch.equal(model.unpatchify(model.patchify(torch.arange(768.).reshape(1, 3, 16, 16))),
                       torch.arange(768.).reshape(1, 3, 16, 16))
    loss2, pred2, mask2 = model(torch.randn(2, 3, 16, 16), return_dict=False)
    assert pred2.shape == pred.shape


def test_noise_makes_masking_deterministic(config):
    model = MAEForPreTraining(config).eval()
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    a, b = model(pixels, noise=noise), model(pixels, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.allclose(a.logits, b.logits) and a.loss == b.loss
    kept = noise.argsort(dim=1)[:, :4]
    assert torch.all(a.mask.gather(1, kept) == 0)  # the lowest-noise patches are the visible ones
    model.train()  # training mode without noise: fresh random masks on every call
    assert not torch.equal(model(pixels).mask, model(pixels).mask)


def test_eval_masks_are_fixed_by_the_seed_and_overridable(config):
    model = MAEForPreTraining(config).eval()
    pixels = torch.randn(2, 3, 16, 16)
    torch.manual_seed(1)
    a = model(pixels)
    torch.manual_seed(2)
    b = model(pixels)  # the global RNG does not matter in eval mode: the masks come from eval_mask_seed
    assert torch.equal(a.mask, b.mask) and a.loss == b.loss
    assert not torch.equal(a.mask[0], a.mask[1])  # per-image masks, not one pattern for the batch
    model.config.eval_mask_seed = 1
    assert not torch.equal(model(pixels).mask, a.mask)
    model.config.eval_mask_seed = None  # opt out: random masks in eval mode too
    assert not torch.equal(model(pixels).mask, model(pixels).mask)
    noise = torch.rand(2, 16)
    assert torch.equal(model(pixels, noise=noise).mask, model.train()(pixels, noise=noise).mask)  # noise wins


def test_masking_before_embedding_equals_the_official_order(config):
    """hf_mae embeds only the kept patches; the official code embeds all (a conv), adds positions, then masks."""
    model = MAEForPreTraining(config).eval()
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    encoder = model.encoder
    tokens = encoder.patch_embed.proj(pixels).flatten(2).transpose(1, 2) + encoder.pos_embed[:, 1:]
    kept, mask, _ = random_masking(tokens, 0.75, noise)
    out = encoder(pixels, mask_ratio=0.75, noise=noise, output_hidden_states=True)
    assert torch.equal(out.mask, mask)
    torch.testing.assert_close(out.hidden_states[0][:, 1:], kept, atol=1e-6, rtol=1e-5)
    unmasked = encoder(pixels, output_hidden_states=True).hidden_states[0][:, 1:]
    torch.testing.assert_close(unmasked, tokens, atol=1e-6, rtol=1e-5)


def test_encoder_does_not_mask_by_default(config):
    encoder = MAEModel(config).eval()
    pixels = torch.randn(2, 3, 16, 16)
    out = encoder(pixels)
    assert out.last_hidden_state.shape == (2, 17, 32) and out.mask is None and out.ids_restore is None
    assert torch.equal(out.last_hidden_state, encoder(pixels).last_hidden_state)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    masked = encoder(pixels, mask_ratio=0.5)
    assert masked.last_hidden_state.shape == (2, 9, 32) and masked.mask.sum() == 16
    # no masking equals masking nothing with the identity order
    identity = encoder(pixels, mask_ratio=0.0, noise=torch.arange(16.).expand(2, 16))
    assert torch.allclose(identity.last_hidden_state, out.last_hidden_state, atol=1e-6)


def test_loss_counts_only_masked_patches(config):
    model = MAEForPreTraining(config)
    pixels = torch.randn(2, 3, 16, 16)
    out = model(pixels)
    changed = out.logits.detach().clone()
    visible = out.mask == 0
    changed[visible] += 100.0
    assert torch.allclose(model.forward_loss(pixels, changed, out.mask), out.loss)
    changed[~visible] += 1.0
    assert not torch.allclose(model.forward_loss(pixels, changed, out.mask), out.loss)


def test_norm_pix_targets(config):
    pixels = torch.randn(2, 3, 16, 16)
    for norm_pix in (True, False):
        model = MAEForPreTraining(tiny_config(norm_pix_loss=norm_pix))
        out = model(pixels)
        target = model.patchify(pixels)
        if norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True, unbiased=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        expected = (((out.logits - target) ** 2).mean(-1) * out.mask).sum() / out.mask.sum()
        assert torch.allclose(out.loss, expected, atol=1e-6)
    targets, mean, var = normalize_patches(model.patchify(pixels))
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 16), atol=1e-5)


def test_pretraining_rejects_zero_mask_ratio(config):
    model = MAEForPreTraining(config)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(1, 3, 16, 16), mask_ratio=0.0)


def test_wrong_input_names_expected_and_got(config):
    model = MAEModel(config)
    with pytest.raises(ValueError, match="expected 3 channels.*got 1"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(16, 18\).*divisible by patch_size 4"):
        model(torch.randn(1, 3, 16, 18))
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        model(torch.randn(3, 16, 16))


def test_one_channel_and_non_square():
    config = tiny_config(num_channels=1, image_size=(16, 24))
    model = MAEForPreTraining(config)
    out = model(torch.randn(2, 1, 16, 24))
    assert out.logits.shape == (2, 24, 16) and torch.isfinite(out.loss)
    assert model.unpatchify(out.logits).shape == (2, 1, 16, 24)
    five = MAEModel(tiny_config(num_channels=5))
    assert five(torch.randn(1, 5, 16, 16)).last_hidden_state.shape == (1, 17, 32)


def test_other_resolutions_regenerate_sincos(config):
    model = MAEForPreTraining(config)
    out = model(torch.randn(1, 3, 24, 20))  # 6 x 5 patches, neither square nor the configured grid
    assert out.logits.shape == (1, 30, 48)
    assert torch.allclose(model.encoder.position_embedding((6, 5)), sincos_pos_embed(32, (6, 5)))
    assert torch.allclose(model.decoder_position_embedding((6, 5)), sincos_pos_embed(16, (6, 5)))
    assert model.encoder(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 65, 32)


def test_eager_and_sdpa_agree(config):
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    sdpa = MAEForPreTraining(config).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = MAEForPreTraining(tiny_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    a, b = sdpa(pixels, noise=noise), eager(pixels, noise=noise)
    assert torch.allclose(a.logits, b.logits, atol=1e-5) and torch.allclose(a.loss, b.loss, atol=1e-6)
    attn = sdpa(pixels, noise=noise, output_attentions=True).attentions
    assert len(attn) == 2 and attn[0].shape == (2, 2, 5, 5)
    assert torch.allclose(attn[0].sum(-1), torch.ones(2, 2, 5))


def test_gradient_checkpointing_gives_same_gradients(config):
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    plain = MAEForPreTraining(config).train()
    ckpt = MAEForPreTraining(config).train()
    ckpt.load_state_dict(plain.state_dict())
    # transformers >= 5.20 names it activation_checkpointing_enable; older releases gradient_checkpointing_enable
    (getattr(ckpt, "activation_checkpointing_enable", None) or ckpt.gradient_checkpointing_enable)()
    assert ckpt.encoder.blocks[0].gradient_checkpointing
    plain(pixels, noise=noise).loss.backward()
    ckpt(pixels, noise=noise).loss.backward()
    for (name, p1), (_, p2) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-6), name


def test_save_load_equality(config, tmp_path):
    model = MAEForPreTraining(config).eval()
    model.save_pretrained(tmp_path)
    loaded = MAEForPreTraining.from_pretrained(tmp_path).eval()
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    assert torch.equal(model(pixels, noise=noise).logits, loaded(pixels, noise=noise).logits)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    encoder = MAEModel.from_pretrained(tmp_path).eval()  # the encoder alone from a full checkpoint
    assert torch.equal(encoder(pixels).last_hidden_state, model.encoder(pixels).last_hidden_state)


def test_linear_probe_classifier_is_frozen(config):
    config.num_labels = 5
    model = MAEForImageClassification(config).train()
    assert not model.encoder.training and model.fc_norm.training
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert 0.005 < model.head.weight.std().item() < 0.015  # official init std 0.01
    out = model(torch.randn(4, 3, 16, 16), labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    assert model.head.weight.grad is not None and model.encoder.cls_token.grad is None


def test_finetune_classifier_trains_everything_and_takes_soft_labels():
    config = tiny_config(classifier_head="finetune", pooling="mean", num_labels=3, drop_path_rate=0.1)
    model = MAEForImageClassification(config).train()
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.5, 0.5]])
    out = model(torch.randn(2, 3, 16, 16), labels=soft)
    out.loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    logp = out.logits.log_softmax(-1)
    assert torch.allclose(out.loss, -(soft * logp).sum(-1).mean(), atol=1e-6)


def test_linear_probe_stays_frozen_after_loading(config, tmp_path):
    config.num_labels = 3
    MAEForImageClassification(config).save_pretrained(tmp_path)
    loaded = MAEForImageClassification.from_pretrained(tmp_path)
    assert not any(p.requires_grad for p in loaded.encoder.parameters())
    assert loaded.head.weight.requires_grad


def test_bad_inputs_are_named(config):
    model = MAEForPreTraining(config)
    encoder = model.encoder
    with pytest.raises(ValueError, match="empty batch"):
        model(torch.randn(0, 3, 16, 16))
    with pytest.raises(ValueError, match="empty batch"):
        encoder(torch.randn(0, 3, 16, 16))
    with pytest.raises(ValueError, match="floating point.*uint8"):
        model(torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        encoder(torch.randn(2, 3, 16, 16), mask_ratio=-0.1)
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        encoder(torch.randn(2, 3, 16, 16), mask_ratio=1.0)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(torch.randn(2, 3, 16, 16), mask_ratio=float("nan"))
    with pytest.raises(ValueError, match="noise must have shape"):
        model(torch.randn(2, 3, 16, 16), noise=torch.rand(2, 15))
    with pytest.raises(ValueError, match="noise holds NaN"):
        model(torch.randn(2, 3, 16, 16), noise=torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError, match="noise holds NaN"):
        encoder(torch.randn(2, 3, 16, 16), noise=torch.full((2, 16), float("inf")))
    with pytest.raises(ValueError, match="noise must be a floating-point"):
        model(torch.randn(2, 3, 16, 16), noise=torch.ones(2, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        MAEForImageClassification(tiny_config(num_labels=2))(torch.randn(0, 3, 16, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_cast_to_the_model_dtype(config, dtype):
    model = MAEForPreTraining(config).eval()
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    reference = model(pixels.to(dtype).float(), noise=noise)
    out = model(pixels.to(dtype), noise=noise)
    assert out.logits.dtype == torch.float32 and torch.equal(out.logits, reference.logits)
    features = model.encoder(pixels.to(dtype)).last_hidden_state
    assert features.dtype == torch.float32
    classifier = MAEForImageClassification(tiny_config(num_labels=2)).eval()
    assert classifier(pixels.to(dtype)).logits.dtype == torch.float32
