"""Checkpoint conversion: official / timm / transformers (5.x and legacy names) / hf_mae in and out, parity
without the official code, resolution handling, bad input, and the convert_checkpoint.py CLI."""

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import subprocess_timeout, tiny_config
from safetensors.torch import save_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForPreTraining,
    ViTMAEConfig,
    ViTMAEForPreTraining,
)

from hf_mae import PRESETS, MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEModel
from hf_mae.cli import convert_checkpoint
from hf_mae.cli.convert_checkpoint import main as convert_main
from hf_mae.cli.convert_checkpoint import parse_args as convert_args
from hf_mae.convert import vitmae as convert_module
from hf_mae.convert.config_inference import infer_config
from hf_mae.convert.load import export_state_dict, load_any
from hf_mae.convert.names import ConversionError
from hf_mae.models.mae.modeling_mae import sincos_pos_embed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_convert(argv: list[str]) -> int:
    """`python scripts/convert_checkpoint.py ARGV` in this process; the exit status."""
    return convert_main(convert_args(argv))


HEADS = {"num_attention_heads": 2, "decoder_num_attention_heads": 2}  # heads are not stored in weights
ARCH_FIELDS = ["image_size", "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "intermediate_size", "qkv_bias"]
DECODER_FIELDS = ["decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                  "decoder_intermediate_size"]


def randomized(model):
    """Random non-zero weights everywhere (a swapped norm or bias would otherwise go unnoticed)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def transformers_mae(tmp_path, **overrides) -> ViTMAEForPreTraining:
    """A tiny random transformers ViTMAE with fixed sin-cos positions (as released checkpoints hold), saved
    and re-loaded through `from_pretrained`."""
    fields = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=128, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                  decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True,
                  layer_norm_eps=1e-6)
    fields.update(overrides)
    model = randomized(ViTMAEForPreTraining(ViTMAEConfig(**fields)))
    with torch.no_grad():
        model.vit.embeddings.position_embeddings.copy_(sincos_pos_embed(fields["hidden_size"], (4, 4)))
        model.decoder.decoder_pos_embed.copy_(sincos_pos_embed(fields["decoder_hidden_size"], (4, 4)))
    model.save_pretrained(tmp_path / "transformers")
    return ViTMAEForPreTraining.from_pretrained(tmp_path / "transformers").eval()


def official_state_dict(theirs: ViTMAEForPreTraining) -> dict:
    """transformers 5.x ViTMAE -> official facebookresearch/mae names, written out from the documented map."""
    sd, config = theirs.state_dict(), theirs.config
    out = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["vit.layernorm.weight"],
        "norm.bias": sd["vit.layernorm.bias"],
    }
    for name in ["mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
                 "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"]:
        out[name] = sd[f"decoder.{name}"]
    stacks = [("vit.layers", "blocks", config.num_hidden_layers),
              ("decoder.decoder_layers", "decoder_blocks", config.decoder_num_hidden_layers)]
    for theirs_prefix, ours_prefix, depth in stacks:
        for i in range(depth):
            s, d = f"{theirs_prefix}.{i}.", f"{ours_prefix}.{i}."
            for suffix in ("weight", "bias"):
                out[f"{d}attn.qkv.{suffix}"] = torch.cat(
                    [sd[f"{s}attention.q_proj.{suffix}"], sd[f"{s}attention.k_proj.{suffix}"],
                     sd[f"{s}attention.v_proj.{suffix}"]], dim=0)
                out[f"{d}attn.proj.{suffix}"] = sd[f"{s}attention.o_proj.{suffix}"]
                out[f"{d}norm1.{suffix}"] = sd[f"{s}layernorm_before.{suffix}"]
                out[f"{d}norm2.{suffix}"] = sd[f"{s}layernorm_after.{suffix}"]
                out[f"{d}mlp.fc1.{suffix}"] = sd[f"{s}mlp.fc1.{suffix}"]
                out[f"{d}mlp.fc2.{suffix}"] = sd[f"{s}mlp.fc2.{suffix}"]
    fused = 4 * (config.num_hidden_layers + config.decoder_num_hidden_layers)  # q, k, v weights and biases
    assert len(out) == len(sd) - fused
    return out


def legacy_state_dict(theirs: ViTMAEForPreTraining) -> dict:
    """transformers 5.x ViTMAE names -> 4.x / Hub names (`vit.encoder.layer.i.attention.attention.query`)."""
    renames = [(r"^vit\.layers\.", "vit.encoder.layer."),
               (r"attention\.q_proj", "attention.attention.query"),
               (r"attention\.k_proj", "attention.attention.key"),
               (r"attention\.v_proj", "attention.attention.value"),
               (r"attention\.o_proj", "attention.output.dense"),
               (r"mlp\.fc1", "intermediate.dense"),
               (r"mlp\.fc2", "output.dense")]
    out = {}
    for key, value in theirs.state_dict().items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        out[key] = value.clone()
    assert "vit.encoder.layer.1.attention.attention.value.bias" in out
    assert "decoder.decoder_layers.0.intermediate.dense.weight" in out
    return out


def assert_same_pretraining_outputs(theirs, ours, atol=1e-5) -> tuple[float, float]:
    pixels, noise = torch.randn(2, 3, 16, 16), torch.rand(2, 16)
    with torch.no_grad():
        a, b = theirs(pixels, noise=noise), ours(pixels, noise=noise)
    assert torch.equal(a.mask, b.mask)
    logits_diff, loss_diff = (a.logits - b.logits).abs().max().item(), (a.loss - b.loss).abs().item()
    assert logits_diff <= atol and loss_diff <= atol, (logits_diff, loss_diff)
    return logits_diff, loss_diff


def assert_same_state(expected: dict, actual: dict):
    assert set(expected) == set(actual)
    for key, value in expected.items():
        assert torch.equal(value, actual[key]), key


# --- parity without the official code -----------------------------------------------------------------------

def test_official_pth_built_from_transformers_matches_loss_and_logits(tmp_path):
    theirs = transformers_mae(tmp_path)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": official_state_dict(theirs)}, path)
    ours, report = load_any(path, config=HEADS)
    assert isinstance(ours, MAEForPreTraining) and report.layout == "official (encoder + decoder)"
    assert not report.unmapped and not report.missing and not report.ignored
    assert len(set(report.mapped.values())) == len(ours.state_dict())
    assert any("pos_embed: fixed 2-D sin-cos" in note for note in report.notes)
    assert_same_pretraining_outputs(theirs, ours)


def test_legacy_transformers_names_load_and_match(tmp_path):
    theirs = transformers_mae(tmp_path, layer_norm_eps=1e-12)  # transformers' default eps, from config.json
    folder = tmp_path / "legacy"
    theirs.config.save_pretrained(folder)
    save_file(legacy_state_dict(theirs), folder / "model.safetensors")
    # the names are real legacy names: transformers itself renames them at load time
    reloaded, info = ViTMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_same_pretraining_outputs(theirs, reloaded.eval())

    ours, report = load_any(folder)  # config (heads, eps, norm_pix_loss) from config.json
    assert "legacy 4.x names" in report.layout and not report.unmapped and not report.missing
    assert ours.config.layer_norm_eps == 1e-12 and ours.config.num_attention_heads == 2
    assert_same_pretraining_outputs(theirs, ours)
    # what transformers 5 `save_pretrained` writes: legacy names, decoder as `decoder.decoder_encoder.layer.i`
    ours, report = load_any(tmp_path / "transformers")
    assert "legacy 4.x names" in report.layout
    assert report.mapped["decoder.decoder_encoder.layer.0.output.dense.bias"] == "decoder_blocks.0.mlp.fc2.bias"
    assert_same_pretraining_outputs(theirs, ours)
    # the same names as a bare state dict inside wrappers and a DDP prefix
    wrapped = {"state_dict": {f"module.{k}": v for k, v in legacy_state_dict(theirs).items()}, "epoch": 1}
    ours, report = load_any(wrapped, config={**HEADS, "layer_norm_eps": 1e-12})
    assert any("'module.'" in note for note in report.notes)
    assert_same_pretraining_outputs(theirs, ours)


def test_timm_and_vit_encoders_give_the_same_features(tmp_path):
    encoder = randomized(MAEModel(tiny_config()))
    pixels = torch.randn(2, 3, 16, 16)
    expected = encoder(pixels).last_hidden_state
    for layout in ("timm", "transformers"):
        state = export_state_dict(encoder, layout)
        if layout == "transformers":  # a ViTModel with its pooler
            state.update({"pooler.dense.weight": torch.randn(32, 32), "pooler.dense.bias": torch.randn(32)})
        path = tmp_path / f"{layout}.safetensors"
        save_file(state, path)
        ours, report = load_any(path, config=HEADS)
        assert isinstance(ours, MAEModel) and not report.unmapped and not report.missing
        pooler = {"pooler.dense.weight", "pooler.dense.bias"}
        assert set(report.ignored) == (pooler if layout == "transformers" else set())
        assert torch.allclose(ours(pixels).last_hidden_state, expected, atol=1e-6), layout


# --- round trips and presets --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["official", "timm", "transformers", "hf_mae"])
@pytest.mark.parametrize("model_class", [MAEModel, MAEForPreTraining])
def test_export_then_load_is_the_identity(layout, model_class):
    model = randomized(model_class(tiny_config()))
    state = export_state_dict(model, layout)
    back, report = load_any({"model": state} if layout == "official" else state, config=model.config)
    if layout == "timm" and model_class is MAEForPreTraining:  # timm has no decoder: the encoder comes back
        assert not any(k.startswith("decoder") or k == "mask_token" for k in state)
        model = model.encoder
    assert type(back) is type(model) and not report.missing and not report.unmapped
    assert_same_state(model.state_dict(), back.state_dict())
    # without a config the architecture is inferred (heads given: they are not in the weights)
    inferred, _ = load_any(state, config=HEADS)
    for name in ARCH_FIELDS + (DECODER_FIELDS if isinstance(model, MAEForPreTraining) else []):
        assert getattr(inferred.config, name) == getattr(model.config, name), name


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_architecture_survives_export_and_inference(preset):
    config = MAEConfig.from_preset(preset)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = MAEForPreTraining(config)
    assert model.encoder.blocks[0].attn.qkv.weight.is_meta
    for layout in ("official", "timm", "transformers"):
        inferred = infer_config(export_state_dict(model, layout))  # heads from the preset table by width
        fields = ARCH_FIELDS + (DECODER_FIELDS if layout != "timm" else [])
        assert {f: getattr(inferred, f) for f in fields} == {f: getattr(config, f) for f in fields}, layout


# --- positions and resolution -------------------------------------------------------------------------------

def test_learned_positions_are_kept_and_resampled_bicubically(tmp_path):
    encoder = randomized(MAEModel(tiny_config()))
    learned = torch.randn(1, 17, 32)
    encoder.pos_embed.copy_(learned)
    state = export_state_dict(encoder, "timm")
    state.update({"head.weight": torch.randn(10, 32), "head.bias": torch.randn(10)})  # a fine-tuned timm ViT
    ours, report = load_any(state, config=HEADS)
    assert torch.equal(ours.pos_embed, learned) and set(report.ignored) == {"head.weight", "head.bias"}
    assert any("learned position embeddings" in note for note in report.notes)
    pixels = torch.randn(2, 3, 16, 16)
    assert torch.allclose(ours(pixels).last_hidden_state, encoder(pixels).last_hidden_state, atol=1e-6)

    bigger, report = load_any(state, config={**HEADS, "image_size": 32})  # grid 4x4 -> 8x8
    grid = learned[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    expected = torch.cat([learned[:, :1], expected.permute(0, 2, 3, 1).reshape(1, 64, 32)], dim=1)
    assert torch.allclose(bigger.pos_embed, expected, atol=1e-6)
    assert torch.equal(bigger.pos_embed[:, 0], learned[:, 0])
    assert any("resampled bicubically from 4x4 to 8x8" in note for note in report.notes)

    no_cls_row = {**state, "pos_embed": learned[:, 1:]}  # timm `no_embed_class`: the CLS token has no position
    ours, report = load_any(no_cls_row, config=HEADS, strict=False)
    assert torch.equal(ours.pos_embed[:, 0], torch.zeros(1, 32)) and torch.equal(ours.pos_embed[:, 1:],
                                                                                 learned[:, 1:])


def test_fixed_sincos_at_another_resolution_is_regenerated():
    model = randomized(MAEForPreTraining(tiny_config()))
    state = export_state_dict(model, "official")
    ours, report = load_any(state, config={**HEADS, "image_size": 24})
    assert torch.allclose(ours.encoder.pos_embed, sincos_pos_embed(32, (6, 6)))
    assert torch.allclose(ours.decoder_pos_embed, sincos_pos_embed(16, (6, 6)))
    assert sum("regenerated for the 6x6 grid" in note for note in report.notes) == 2
    assert torch.equal(ours.encoder.blocks[1].mlp.fc2.weight, model.encoder.blocks[1].mlp.fc2.weight)


def test_official_training_checkpoint_with_args(tmp_path):
    """Official training checkpoints hold `args` (an argparse.Namespace): read without running code, and its
    norm_pix_loss / mask_ratio / input_size are used."""
    model = randomized(MAEForPreTraining(tiny_config()))
    args = argparse.Namespace(norm_pix_loss=False, mask_ratio=0.6, input_size=16, model="mae_vit_tiny")
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": export_state_dict(model, "official"), "optimizer": {"state": {}}, "epoch": 799,
                "args": args}, path)
    ours, report = load_any(path, config=HEADS)
    assert ours.config.norm_pix_loss is False and ours.config.mask_ratio == 0.6
    assert_same_state(model.state_dict(), ours.state_dict())


# --- bad input ----------------------------------------------------------------------------------------------

class NotATensor:  # a pickle of this needs code from this module to load
    pass


def _bad_files(tmp_path) -> dict:
    good = tmp_path / "good.pth"
    torch.save({"model": export_state_dict(MAEModel(tiny_config()), "official")}, good)
    save_file(export_state_dict(MAEModel(tiny_config()), "timm"), tmp_path / "good.safetensors")
    files = {"empty": (tmp_path / "empty.pth", "is empty"),
             "truncated": (tmp_path / "truncated.pth", "truncated or corrupt"),
             "truncated_safetensors": (tmp_path / "truncated.safetensors", "truncated or corrupt"),
             "needs_code": (tmp_path / "code.pth", "needs code to load"),
             "not_a_state_dict": (tmp_path / "list.pth", "not a state dict")}
    files["empty"][0].write_bytes(b"")
    files["truncated"][0].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    data = (tmp_path / "good.safetensors").read_bytes()
    files["truncated_safetensors"][0].write_bytes(data[: len(data) - 100])
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}, "extra": NotATensor()}, files["needs_code"][0])
    torch.save([torch.zeros(1)], files["not_a_state_dict"][0])
    return files


def test_bad_files_raise_clear_errors_and_the_script_writes_nothing(tmp_path, capsys):
    for name, (path, message) in _bad_files(tmp_path).items():
        with pytest.raises(ConversionError, match=message):
            load_any(path)
        out = tmp_path / "out" / name
        assert run_convert([str(path), str(out)]) == 1
        assert message in capsys.readouterr().err, name
        assert not out.exists(), name
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # no temporary leftovers
    with pytest.raises(ConversionError, match=r"NotATensor"):
        load_any(tmp_path / "code.pth")


def test_unknown_keys_are_refused_unless_allowed(tmp_path, capsys):
    state = export_state_dict(randomized(MAEModel(tiny_config())), "timm")
    state.update({f"extra.layer{i}.weight": torch.zeros(2) for i in range(7)})
    message = r"7 unknown key.*'extra.layer0.weight'.*\(2 more\).*strict=False"
    with pytest.raises(ConversionError, match=message):
        load_any(state, config=HEADS)
    ours, report = load_any(state, config=HEADS, strict=False)
    assert len(report.unmapped) == 7 and not report.missing

    path, out = tmp_path / "extra.safetensors", tmp_path / "out"
    save_file(state, path)
    assert run_convert([str(path), str(out)]) == 1
    assert "--allow_unknown_keys" in capsys.readouterr().err and not out.exists()
    heads = '{"num_attention_heads": 2}'
    assert run_convert([str(path), str(out), "--allow_unknown_keys", "--config", heads]) == 0
    printed = capsys.readouterr().out
    assert "unmapped: 7" in printed and (out / "model.safetensors").exists()


def test_shape_mismatch_and_missing_keys(tmp_path):
    state = export_state_dict(MAEModel(tiny_config()), "official")
    bad = {**state, "blocks.1.mlp.fc1.weight": torch.zeros(64, 32)}
    with pytest.raises(ConversionError, match=r"'blocks.1.mlp.fc1.weight'.*\(64, 32\).*\(128, 32\)"):
        load_any(bad, config=HEADS)
    with pytest.raises(ConversionError, match=r"shape mismatch for 'cls_token'.*\(1, 1, 32\).*\(1, 1, 192\)"):
        load_any(state, config="mae-vit-tiny-patch16")  # a preset that does not fit
    deeper = {**state, **{k.replace(".1.", ".2."): v for k, v in state.items() if k.startswith("blocks.1.")}}
    with pytest.raises(ConversionError, match=r"do not fit MAEModel.*blocks.2"):
        load_any(deeper, config=tiny_config(**HEADS))
    incomplete = {k: v for k, v in state.items() if k != "norm.weight"}
    with pytest.raises(ConversionError, match=r"lacks 1 key.*'norm.weight'.*strict=False"):
        load_any(incomplete, config=HEADS)
    _, report = load_any(incomplete, config=HEADS, strict=False)
    assert report.missing == ["norm.weight"]
    finetuned = {k: v for k, v in state.items() if not k.startswith("norm.")}  # timm / official global pool
    finetuned.update({"fc_norm.weight": torch.ones(32), "fc_norm.bias": torch.zeros(32),
                      "head.weight": torch.zeros(5, 32), "head.bias": torch.zeros(5)})
    with pytest.raises(ConversionError, match=r"lacks 2 key.*global pooling"):
        load_any(finetuned, config=HEADS)


def test_export_refuses_classifiers_and_unknown_layouts():
    with pytest.raises(TypeError, match="model.encoder"):
        export_state_dict(MAEForImageClassification(tiny_config(num_labels=3)), "timm")
    with pytest.raises(ValueError, match="layout"):
        export_state_dict(MAEModel(tiny_config()), "mmseg")


# --- the script ---------------------------------------------------------------------------------------------

def test_script_writes_loadable_folders_and_files(tmp_path, capsys):
    model = randomized(MAEForPreTraining(tiny_config(**HEADS)))
    model.encoder.pos_embed.normal_()  # learned positions must survive save_pretrained / from_pretrained
    source = tmp_path / "official.pth"
    torch.save({"model": export_state_dict(model, "official")}, source)
    folder = tmp_path / "hf"
    config_json = tmp_path / "heads.json"
    config_json.write_text('{"num_attention_heads": 2, "decoder_num_attention_heads": 2}')
    assert run_convert([str(source), str(folder), "--config", str(config_json)]) == 0
    assert "layout:   official (encoder + decoder)" in capsys.readouterr().out
    loaded = AutoModelForPreTraining.from_pretrained(folder).eval()
    assert_same_state(model.state_dict(), loaded.state_dict())
    assert AutoImageProcessor.from_pretrained(folder).crop_size == {"height": 16, "width": 16}
    marker = json.loads((folder / "hf_mae_run.json").read_text())  # hf_mae's own output: other programs refuse it
    assert (marker["program"], marker["status"]) == ("convert", "finished")
    assert isinstance(AutoModel.from_pretrained(folder), MAEModel)

    for to, name in [("timm", "vit.safetensors"), ("official", "mae.pth"), ("transformers", "vitmae")]:
        out = tmp_path / name
        assert run_convert([str(folder), str(out), "--to", to]) == 0
        back, _ = load_any(out, config=HEADS)
        expected = model.encoder if to == "timm" else model
        assert_same_state(expected.state_dict(), back.state_dict())
    assert list(torch.load(tmp_path / "mae.pth", weights_only=True)) == ["model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heads.json", "hf", "mae.pth", "official.pth",
                                                        "vit.safetensors", "vitmae"]  # no temporary leftovers


def test_script_never_overwrites_without_flag(tmp_path, capsys):
    source = tmp_path / "timm.safetensors"
    save_file(export_state_dict(MAEModel(tiny_config()), "timm"), source)
    out = tmp_path / "out.pth"
    out.write_bytes(b"precious")
    assert run_convert([str(source), str(out), "--to", "official"]) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert run_convert([str(source), str(out), "--to", "official", "--overwrite"]) == 0
    assert "cls_token" in torch.load(out, weights_only=True)["model"]
    assert run_convert([str(source), str(tmp_path / "x.npz"), "--to", "timm"]) == 1
    assert ".safetensors or" in capsys.readouterr().err


@pytest.mark.slow
def test_script_help_documents_every_flag():
    result = subprocess.run([sys.executable, "scripts/convert_checkpoint.py", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=subprocess_timeout(120),
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    for flag in ("--to", "--config", "--allow_unknown_keys", "--overwrite", "--verbose", "input", "output"):
        assert flag in result.stdout
    assert "hf_mae,official,timm,transformers" in result.stdout.replace(" ", "")
    assert "examples:" in result.stdout and "scripts/convert_checkpoint.py mae_pretrain_vit_base.pth" in result.stdout
    for action in convert_checkpoint.build_parser()._actions:
        assert action.help, action.option_strings or action.dest


# --- anything that is not a checkpoint: ConversionError naming the path and what it is ---------------------

def _not_checkpoints(tmp_path) -> dict:
    """name -> (path, words the error must hold): files a user may pass by mistake."""
    save_file(export_state_dict(MAEModel(tiny_config()), "timm"), tmp_path / "good.safetensors")
    data = (tmp_path / "good.safetensors").read_bytes()
    cases = {}

    def case(name, content, words):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content)
        cases[name] = (path, words)

    case("random.bin", bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                         dtype=torch.uint8).tolist()), "not a checkpoint: unrecognised binary")
    case("random.pth", b"\x13\x37" + bytes(range(256)) * 4, "not a checkpoint: unrecognised binary")
    case("empty.safetensors", b"", "is empty")
    case("notes.txt", "step 1 loss 0.9\nstep 2 loss 0.8\n", "not a checkpoint: a text file")
    case("config.json", '{"model_type": "hf_mae", "hidden_size": 32}', "not a checkpoint: a JSON or text file")
    case("model.pth", "{\"looks\": \"like json\"}", "not a checkpoint: a JSON or text file")
    case("half.safetensors", data[: len(data) // 2], "truncated or corrupt")
    case("half_no_suffix", data[: len(data) // 3], "truncated or corrupt")
    case("list.pkl", pickle.dumps([1, 2, 3], protocol=4), "cannot read")
    case("string.pth", pickle.dumps("a string", protocol=2), "not a readable PyTorch checkpoint")
    torch.save([torch.zeros(1)], tmp_path / "tensor_list.pth")
    cases["tensor_list.pth"] = (tmp_path / "tensor_list.pth", "not a state dict")
    folder = tmp_path / "no_weights"
    folder.mkdir()
    (folder / "config.json").write_text(MAEConfig(**tiny_config().to_dict()).to_json_string())
    cases["no_weights"] = (folder, "holds no model.safetensors")
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text('{"model_type": "hf_mae", ')  # a save killed mid-write
    (bad_config / "model.safetensors").write_bytes(data)
    cases["bad_config"] = (bad_config, "is not readable JSON")
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text(
        '{"weight_map": {"cls_token": "model-00001-of-00002.safetensors"}}')
    cases["sharded"] = (sharded, "lists the shard model-00001-of-00002.safetensors, which is missing")
    return cases


def test_anything_that_is_not_a_checkpoint_raises_conversion_error(tmp_path, capsys):
    """`convert_checkpoint.py notes.txt out` (and every other non-checkpoint): a ConversionError that names the
    path and says what the file is; exit status 1; nothing written. (A random file gave a raw IndexError.)"""
    for name, (path, words) in _not_checkpoints(tmp_path).items():
        with pytest.raises(ConversionError) as info:
            load_any(path)
        message = str(info.value)
        assert str(path) in message and words in message, (name, message)
        out = tmp_path / "out" / name.replace(".", "_")
        assert run_convert([str(path), str(out)]) == 1, name
        assert words in capsys.readouterr().err, name
        assert not out.exists(), name
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_bad_config_flag_is_named_at_parse_time(tmp_path, capsys):
    for value in ("{not json", "[1, 2]", "mae-vit-gigantic", str(tmp_path / "missing.json")):
        with pytest.raises(SystemExit) as info:
            convert_args(["in.pth", "out", "--config", value])
        assert info.value.code == 2
        assert "argument --config" in capsys.readouterr().err, value


def test_overwrite_never_deletes_the_input_and_a_failed_write_keeps_the_old_output(tmp_path, capsys,
                                                                                   monkeypatch):
    """`convert_checkpoint.py out/model.pth out --overwrite` would replace the folder holding its own input:
    refused. A conversion that dies while writing (--overwrite) leaves the previous output as it was and no
    temporary files."""
    out = tmp_path / "out"
    out.mkdir()
    source = out / "timm.safetensors"
    save_file(export_state_dict(MAEModel(tiny_config()), "timm"), source)
    before = source.read_bytes()
    assert run_convert([str(source), str(out), "--overwrite", "--config", '{"num_attention_heads": 2}']) == 1
    assert "inside the output folder" in capsys.readouterr().err and source.read_bytes() == before

    target = tmp_path / "hf"
    assert run_convert([str(source), str(target), "--config", '{"num_attention_heads": 2}']) == 0
    state = {p.name: p.read_bytes() for p in target.iterdir()}

    def dies_midway(model, config, args, kind, temp):
        os.makedirs(temp, exist_ok=True)
        (Path(temp) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # as a Ctrl-C or a kill would stop it

    monkeypatch.setattr(convert_checkpoint, "_write", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_convert([str(source), str(target), "--overwrite", "--config", '{"num_attention_heads": 2}'])
    assert {p.name: p.read_bytes() for p in target.iterdir()} == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no temporary leftovers


def test_fold_batchnorm_is_the_one_implementation():
    """One BatchNorm-into-Linear fold, in convert.py, used by the Hub's stock-ViT export and the ONNX wrapper."""
    from hf_mae.convert.vitmae import fold_batchnorm
    from hf_mae.export import wrappers as export
    from hf_mae.hub import folders as hub

    assert hub.fold_batchnorm is fold_batchnorm and export.fold_batchnorm is fold_batchnorm
    torch.manual_seed(0)
    x = torch.randn(7, 8)
    head = torch.nn.Linear(8, 3)
    for affine in (False, True):
        norm = torch.nn.BatchNorm1d(8, affine=affine, eps=1e-6).eval()
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.1, 3)
        if affine:
            norm.weight.data.normal_()
            norm.bias.data.normal_()
        folded = fold_batchnorm(norm, head)
        assert isinstance(folded, torch.nn.Linear) and folded.weight.requires_grad
        torch.testing.assert_close(folded(x), head(norm(x)), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="BatchNorm"):
        fold_batchnorm(torch.nn.LayerNorm(8), head)


def test_from_transformers_goes_through_load_any(tmp_path, monkeypatch):
    theirs = transformers_mae(tmp_path)
    calls = []
    original = convert_module.load_any
    monkeypatch.setattr(convert_module, "load_any", lambda *a, **k: calls.append(a) or original(*a, **k))
    ours = convert_module.from_transformers(theirs)
    assert len(calls) == 1 and calls[0][0] is theirs
    assert_same_pretraining_outputs(theirs, ours)


def test_module_cli_runs_from_anywhere(tmp_path):
    """`python -m hf_mae.cli.convert_checkpoint` works outside the repository (no scripts/, no sys.path edits)."""
    result = subprocess.run([sys.executable, "-m", "hf_mae.cli.convert_checkpoint", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=subprocess_timeout(120),
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "examples:" in result.stdout and "--overwrite" in result.stdout


KILLED = """
import os, signal, sys
from pathlib import Path
from hf_mae.cli import convert_checkpoint as convert

def write_then_die(model, config, args, kind, temp):
    os.makedirs(temp, exist_ok=True)
    Path(temp, "model.safetensors").write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)

convert._write = write_then_die
convert.main(convert.parse_args(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_conversion_leaves_no_output(tmp_path):
    """SIGKILL while the hf_mae folder is being written: the output path does not exist (only a hidden
    temporary folder beside it), so nothing half-written can be loaded by mistake."""
    source = tmp_path / "timm.safetensors"
    save_file(export_state_dict(MAEModel(tiny_config()), "timm"), source)
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, "-c", KILLED, str(source), str(out), "--config",
                             '{"num_attention_heads": 2}'], capture_output=True, text=True,
                            timeout=subprocess_timeout(120), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == -9, result.stderr[-2000:]
    assert not out.exists()
    assert [p.name.startswith(".hf.") and p.name.endswith(".tmp") for p in tmp_path.iterdir() if p != source] == [True]
    assert run_convert([str(source), str(out), "--config", '{"num_attention_heads": 2}']) == 0  # a rerun works
    assert (out / "model.safetensors").stat().st_size > 1000


def test_an_output_under_a_file_is_named(tmp_path, capsys):
    source = tmp_path / "timm.safetensors"
    save_file(export_state_dict(MAEModel(tiny_config()), "timm"), source)
    (tmp_path / "afile").write_text("x")
    assert run_convert([str(source), str(tmp_path / "afile" / "x.pth"), "--to", "official"]) == 1
    assert "afile is a file, not a folder" in capsys.readouterr().err
