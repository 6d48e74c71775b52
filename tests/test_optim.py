import math

import pytest
import torch
from torch import nn

from hf_mae.training.optim import (
    LARS,
    build_adamw,
    layer_id_for_vit,
    lr_at_step,
    param_groups_layer_decay,
    param_groups_weight_decay,
    scaled_lr,
    set_lr,
)

D = 8


# --- tiny models with the official/timm parameter names -----------------------------------------------
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(D)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(D, 3 * D)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(D, 2 * D)


class _Encoder(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_buffer("pos_embed", torch.zeros(1, 5, D))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, D, 2, 2)
        self.blocks = nn.ModuleList(_Block() for _ in range(depth))
        self.norm = nn.LayerNorm(D)


class _PreTraining(nn.Module):
    def __init__(self, depth=2, decoder_depth=3):
        super().__init__()
        self.encoder = _Encoder(depth)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D))
        self.decoder_embed = nn.Linear(D, D)
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 5, D), requires_grad=False)  # frozen table
        self.decoder_blocks = nn.ModuleList(_Block() for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, 12)


class _Classifier(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.encoder = _Encoder(depth)
        self.fc_norm = nn.LayerNorm(D)
        self.head = nn.Sequential(nn.BatchNorm1d(D, affine=False), nn.Linear(D, 3))


def _names_by_group(model, groups):
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [{name_of[id(p)] for p in g["params"]} for g in groups]


# --- lr scaling and schedule ---------------------------------------------------------------------------
def test_scaled_lr():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # official pretraining
    assert scaled_lr(0.1, 16384) == pytest.approx(6.4)  # official linear probe
    assert scaled_lr(1e-3, 256) == pytest.approx(1e-3)


def test_lr_schedule_values():
    kw = dict(total_steps=110, warmup_steps=10, base_lr=1.0, min_lr=0.1)
    assert lr_at_step(0, **kw) == 0.0
    assert lr_at_step(2.5, **kw) == pytest.approx(0.25)  # fractional steps allowed
    assert lr_at_step(5, **kw) == pytest.approx(0.5)
    assert lr_at_step(10, **kw) == pytest.approx(1.0)  # end of warmup
    assert lr_at_step(60, **kw) == pytest.approx(0.55)  # cosine half-way: (base + min) / 2
    assert lr_at_step(110, **kw) == pytest.approx(0.1)
    assert lr_at_step(1000, **kw) == pytest.approx(0.1)  # clamped past the end
    after = [lr_at_step(s, **kw) for s in range(10, 111)]
    assert all(a > b for a, b in zip(after, after[1:]))  # strictly decreasing after warmup
    assert min(after) >= 0.1


def test_lr_schedule_degenerate():
    assert lr_at_step(0, 100, 0, base_lr=2.0) == pytest.approx(2.0)  # no warmup: starts at base
    assert lr_at_step(50, 100, 0, base_lr=2.0) == pytest.approx(1.0)
    # warmup == total: warmup then straight to min_lr, no division by zero
    assert lr_at_step(5, 10, 10, base_lr=1.0, min_lr=0.01) == pytest.approx(0.5)
    assert lr_at_step(10, 10, 10, base_lr=1.0, min_lr=0.01) == pytest.approx(0.01)
    assert lr_at_step(0, 0, 0, base_lr=1.0, min_lr=0.01) == pytest.approx(0.01)


# --- weight decay groups -------------------------------------------------------------------------------
def test_param_groups_weight_decay_split():
    model = _PreTraining()
    model.decoder_norm.weight.requires_grad_(False)
    groups = param_groups_weight_decay(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert all(g["lr_scale"] == 1.0 for g in groups)
    decay, no_decay = _names_by_group(model, groups)
    assert decay == {
        "encoder.patch_embed.proj.weight",
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.0.mlp.fc1.weight",
        "encoder.blocks.1.attn.qkv.weight",
        "encoder.blocks.1.mlp.fc1.weight",
        "decoder_embed.weight",
        "decoder_pred.weight",
        *(f"decoder_blocks.{i}.{m}.weight" for i in range(3) for m in ("attn.qkv", "mlp.fc1")),
    }
    assert {
        "encoder.cls_token",
        "mask_token",
        "encoder.patch_embed.proj.bias",
        "encoder.norm.weight",
        "encoder.blocks.1.norm1.bias",
        "decoder_pred.bias",
        "decoder_norm.bias",
    } <= no_decay
    # every ndim > 1 tensor outside the keywords decays; frozen params and the buffer are nowhere
    assert all(p.ndim <= 1 or "token" in n for n, p in model.named_parameters() if n in no_decay)
    assert not ({"decoder_pos_embed", "decoder_norm.weight", "encoder.pos_embed"} & (decay | no_decay))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decay | no_decay == trainable and not decay & no_decay


def test_param_groups_weight_decay_keywords_and_empty_groups():
    model = _Encoder(depth=1)
    decay, _ = _names_by_group(model, param_groups_weight_decay(model, 0.1, no_decay_keywords=()))
    assert "cls_token" in decay  # official behaviour when no keywords are exempt
    only_bias = nn.Linear(2, 2)
    only_bias.weight.requires_grad_(False)
    groups = param_groups_weight_decay(only_bias, 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0  # empty decay group dropped


# --- layer-wise lr decay -------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "encoder."])
@pytest.mark.parametrize(
    "name,expected",
    [
        ("cls_token", 0),
        ("pos_embed", 0),
        ("patch_embed.proj.weight", 0),
        ("patch_embed.proj.bias", 0),
        ("blocks.0.norm1.weight", 1),
        ("blocks.3.attn.qkv.weight", 4),
        ("blocks.11.mlp.fc2.bias", 12),
        ("norm.weight", 13),
    ],
)
def test_layer_id_for_vit(prefix, name, expected):
    assert layer_id_for_vit(prefix + name, 13) == expected


@pytest.mark.parametrize(
    "name", ["head.weight", "head.1.bias", "fc_norm.weight", "decoder_blocks.0.norm1.weight"]
)
def test_layer_id_for_vit_rest_is_top(name):
    assert layer_id_for_vit(name, 7) == 7


def test_param_groups_layer_decay_scales():
    model = _Classifier(depth=2)  # num_layers = 3
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
    scale, wd = {}, {}
    for names, g in zip(_names_by_group(model, groups), groups):
        assert g["lr_scale"] == pytest.approx(0.5 ** (3 - g["layer_id"]))
        for n in names:
            assert n not in scale  # each param in exactly one group
            scale[n], wd[n] = g["lr_scale"], g["weight_decay"]
    assert set(scale) == {n for n, _ in model.named_parameters()}
    assert scale["encoder.cls_token"] == scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.125)
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.25)
    assert scale["encoder.blocks.1.norm1.bias"] == pytest.approx(0.5)
    assert scale["encoder.norm.weight"] == scale["fc_norm.bias"] == scale["head.1.weight"] == 1.0
    assert wd["encoder.blocks.0.attn.qkv.weight"] == 0.05 and wd["encoder.patch_embed.proj.weight"] == 0.05
    assert wd["encoder.blocks.0.attn.qkv.bias"] == 0.0 and wd["encoder.cls_token"] == 0.0
    # layers 0..3, each with a decay and a no-decay group, sorted by (layer, decay first)
    assert [(g["layer_id"], g["weight_decay"]) for g in groups] == [
        (i, w) for i in range(4) for w in (0.05, 0.0)
    ]


def test_param_groups_layer_decay_depth_ignores_decoder_and_frozen():
    model = _PreTraining(depth=2, decoder_depth=3)
    for p in model.encoder.blocks[0].parameters():
        p.requires_grad_(False)
    groups = param_groups_layer_decay(model, layer_decay=0.5)
    scale = {n: g["lr_scale"] for names, g in zip(_names_by_group(model, groups), groups) for n in names}
    assert not any(n.startswith("encoder.blocks.0.") for n in scale)
    # depth 2 (decoder_blocks not counted) even with block 0 frozen: block 1 -> 0.5 ** (3 - 2)
    assert scale["encoder.blocks.1.attn.qkv.weight"] == pytest.approx(0.5)
    assert scale["decoder_blocks.2.attn.qkv.weight"] == 1.0


def test_set_lr_applies_lr_scale():
    model = _Classifier(depth=2)
    groups = param_groups_layer_decay(model, layer_decay=0.5)
    opt = torch.optim.SGD(groups + [{"params": [nn.Parameter(torch.zeros(1))]}], lr=1.0)
    assert set_lr(opt, 0.2) == 0.2
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.2 * g.get("lr_scale", 1.0))
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.2)
    assert min(g["lr"] for g in opt.param_groups) == pytest.approx(0.2 * 0.125)


# --- LARS ----------------------------------------------------------------------------------------------
def test_lars_matches_hand_computation():
    lr, wd, mom, tc = 0.5, 0.1, 0.9, 0.001
    w = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0, -1.0]))
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, trust_coefficient=tc)
    g1w, g1b = torch.tensor([[0.7, 0.0], [2.4, 0.0]]), torch.tensor([0.5, 0.25])
    w.grad, b.grad = g1w.clone(), g1b.clone()
    opt.step()
    # d = g + wd * w = [[1.0, 0], [2.4, 0.4]]; ||d|| = sqrt(1 + 5.76 + 0.16); ratio = tc * 5 / ||d||
    d1 = torch.tensor([[1.0, 0.0], [2.4, 0.4]])
    r1 = tc * 5.0 / math.sqrt(6.92)
    w1 = torch.tensor([[3.0, 0.0], [0.0, 4.0]]) - lr * r1 * d1
    torch.testing.assert_close(w.detach(), w1)
    torch.testing.assert_close(b.detach(), torch.tensor([1.0, -1.0]) - lr * g1b)  # plain SGD, no decay
    # second step: momentum buffer accumulates the trust-scaled update
    g2w, g2b = torch.ones(2, 2), torch.tensor([-1.0, 1.0])
    w.grad, b.grad = g2w.clone(), g2b.clone()
    opt.step()
    d2 = g2w + wd * w1
    r2 = tc * w1.norm() / d2.norm()
    torch.testing.assert_close(w.detach(), w1 - lr * (mom * r1 * d1 + r2 * d2))
    torch.testing.assert_close(b.detach(), torch.tensor([1.0, -1.0]) - lr * g1b - lr * (mom * g1b + g2b))


def test_lars_zero_norm_ratio_is_one_and_closure():
    w = nn.Parameter(torch.zeros(2, 3))  # ||w|| = 0 -> ratio 1, update is the raw gradient
    opt = LARS([w], lr=0.1, weight_decay=0.5)

    def closure():
        opt.zero_grad()
        loss = (w * torch.arange(6.0).view(2, 3)).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 0.0
    torch.testing.assert_close(w.detach(), -0.1 * torch.arange(6.0).view(2, 3))
    w.grad = None
    before = w.detach().clone()
    opt.step()  # no grad: untouched
    torch.testing.assert_close(w.detach(), before)


def test_lars_reduces_least_squares_loss():
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = x @ torch.randn(8, 1) + 0.5
    model = nn.Linear(8, 1)
    # trust-ratio steps are ~lr * 1e-3 * ||w||, so the weight needs a large lr; the bias gets plain SGD
    opt = LARS([{"params": [model.weight], "lr": 10.0}, {"params": [model.bias], "lr": 0.1}])

    def loss_fn():
        return ((model(x) - y) ** 2).mean()

    first = loss_fn().item()
    for _ in range(100):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    assert loss_fn().item() < 1e-3 * first


# --- AdamW ---------------------------------------------------------------------------------------------
def test_build_adamw_fused_on_cpu_and_steps():
    torch.manual_seed(0)
    model = _Classifier(depth=1)
    ref = _Classifier(depth=1)
    ref.load_state_dict(model.state_dict())
    head_before = model.head[1].weight.detach().clone()
    opt = build_adamw((g for g in param_groups_weight_decay(model, 0.05)), lr=1e-2)  # a generator is fine
    ref_opt = torch.optim.AdamW(
        param_groups_weight_decay(ref, 0.05), lr=1e-2, betas=(0.9, 0.95), foreach=False
    )
    assert opt.defaults["fused"] is True and opt.defaults["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    x = torch.randn(4, 3, 4, 4)
    for m, o in ((model, opt), (ref, ref_opt)):
        feats = m.encoder.patch_embed.proj(x).flatten(2).mean(-1)
        m.head(m.fc_norm(m.encoder.blocks[0].attn.qkv(feats)[:, :D])).square().sum().backward()
        o.step()
    assert not torch.equal(model.head[1].weight, head_before)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, msg=n)  # fused == for-loop AdamW


def test_build_adamw_explicit_choices():
    p = nn.Parameter(torch.ones(3))
    assert build_adamw([p], lr=1e-3, fused=False).defaults["fused"] is False
    opt = build_adamw([p], lr=1e-3, foreach=True)  # explicit foreach is not overridden by auto-fuse
    assert opt.defaults["foreach"] is True and not opt.defaults["fused"]
