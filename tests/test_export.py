"""Deployment exports: ONNX (dynamic batch), torch.export, TorchScript and int8 against PyTorch, standalone
loading without hf_mae, and the bad-input errors (pretraining model, missing optional dependency)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from conftest import subprocess_timeout, tiny_config
from PIL import Image

from hf_mae import MAEForImageClassification, MAEForPreTraining, MAEImageProcessor, MAEModel
from hf_mae.cli.export import build_parser, main, parse_args
from hf_mae.export.folder import export_model
from hf_mae.export.formats import export_onnx, export_program, export_torchscript, quantize_int8
from hf_mae.export.parity import check_export, onnx_session
from hf_mae.export.spec import FILE_NAMES, ExportParityError, MissingExportDependency, PretrainingModelError
from hf_mae.export.wrappers import load_model, wrap_for_export

ATOL = 1e-4


@torch.no_grad()
def randomized(model):
    """Non-trivial weights everywhere (LayerNorm scales, biases, the probe's BatchNorm statistics)."""
    generator = torch.Generator().manual_seed(1)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and "pos_embed" not in name:
            noise = torch.randn(tensor.shape, generator=generator) * 0.2
            tensor.copy_(noise.abs() + 0.5 if "running_var" in name else tensor + noise)
    return model.eval()


def pixels(batch: int, seed: int = 0, channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return randomized(MAEModel(tiny_config()))


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return randomized(MAEForImageClassification(tiny_config(num_labels=3)))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, encoder, classifier):
    """save_pretrained folders: encoder, classifier, and a pretraining model with its encoder beside it."""
    root = tmp_path_factory.mktemp("models")
    processor = MAEImageProcessor.for_config(encoder.config)
    for name, model in (("encoder", encoder), ("classifier", classifier)):
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    pretraining = MAEForPreTraining(tiny_config())
    pretraining.save_pretrained(root / "pretrain")
    pretraining.encoder.save_pretrained(root / "pretrain" / "encoder")
    return root


def test_onnx_encoder_matches_pytorch_with_a_dynamic_batch_axis(tmp_path, encoder):
    path = export_onnx(encoder, tmp_path / "encoder.onnx")
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["pixel_values"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "pooler_output"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = onnx_session(path)
    for batch in (1, 3):  # exported with batch 2: both must work
        x = pixels(batch, seed=batch)
        hidden, pooled = session.run(None, {"pixel_values": x.numpy()})
        with torch.no_grad():
            want = encoder(x)
        assert hidden.shape == (batch, 1 + 16, 32)
        np.testing.assert_allclose(hidden, want.last_hidden_state.numpy(), rtol=0, atol=ATOL)
        np.testing.assert_allclose(pooled, want.pooler_output.numpy(), rtol=0, atol=ATOL)


def test_exported_encoder_never_masks(tmp_path, encoder):
    """A plain trace of the encoder would bake in a random mask; ours gives the unmasked, deterministic features."""
    run = onnx_session(export_onnx(encoder, tmp_path / "encoder.onnx"))
    x = pixels(2)
    first = run.run(None, {"pixel_values": x.numpy()})[0]
    assert first.shape[1] == 1 + encoder.config.num_patches  # every patch kept
    np.testing.assert_array_equal(first, run.run(None, {"pixel_values": x.numpy()})[0])


@pytest.mark.parametrize("head", ["linear_probe", "finetune"])
def test_classifier_exports_match_pytorch(tmp_path, head):
    torch.manual_seed(0)
    model = randomized(MAEForImageClassification(tiny_config(num_labels=3, classifier_head=head)))
    processor = MAEImageProcessor.for_config(model.config)
    info = export_model(model, tmp_path, ["onnx", "export", "torchscript"], processor=processor)
    assert info["kind"] == "classifier" and info["outputs"] == ["logits"]
    for fmt in ("onnx", "export", "torchscript"):
        check = info["files"][fmt]["check"]
        assert check["max_abs_diff"] <= ATOL, (fmt, check)
        assert {"max_abs_diff_random_batch1", "max_abs_diff_random_batch3", "max_abs_diff_real"} <= check.keys()
        assert "generated natural-looking pictures" in check["real_images"]
        assert check["argmax_agreement_real"] == 1.0
    saved_info = json.loads((tmp_path / "export_info.json").read_text())
    assert saved_info["files"]["onnx"]["size_bytes"] == (tmp_path / "model.onnx").stat().st_size
    assert (tmp_path / "preprocessor_config.json").exists()


def test_torch_export_and_torchscript_match_pytorch_at_any_batch(tmp_path, encoder, classifier):
    cases = [(encoder, lambda m, x: (m(x).last_hidden_state, m(x).pooler_output)),
             (classifier, lambda m, x: (m(x).logits,))]
    for index, (model, reference) in enumerate(cases):
        program = torch.export.load(str(export_program(model, tmp_path / f"m{index}.pt2"))).module()
        traced = torch.jit.load(str(export_torchscript(model, tmp_path / f"m{index}.pt")))
        for batch in (1, 3):
            x = pixels(batch, seed=10 + batch)
            with torch.no_grad():
                want = reference(model, x)
                for loaded in (program, traced):
                    got = loaded(x)
                    got = got if isinstance(got, tuple) else (got,)
                    assert len(got) == len(want)
                    for g, w in zip(got, want):
                        torch.testing.assert_close(g, w, rtol=0, atol=ATOL)


def two_class_pictures(count: int) -> tuple[list, np.ndarray]:
    """Class 0: dark left half; class 1: dark top half; plus noise."""
    images, labels = [], []
    for seed in range(count):
        label = seed % 2
        array = np.random.default_rng(seed).integers(150, 255, (20, 20, 3), dtype=np.uint8)
        if label == 0:
            array[:, :10] //= 4
        else:
            array[:10] //= 4
        images.append(Image.fromarray(array))
        labels.append(label)
    return images, np.array(labels)


@torch.no_grad()
def test_int8_is_smaller_and_keeps_the_predictions_of_a_separable_toy(tmp_path):
    torch.manual_seed(0)
    model = MAEForImageClassification(tiny_config(num_labels=2)).eval()
    processor = MAEImageProcessor.for_config(model.config)
    images, labels = two_class_pictures(64)
    x = processor(images=images, return_tensors="pt")["pixel_values"]
    # A probe fitted in closed form: BatchNorm statistics of the features, head along the class-mean difference.
    features = model.features(x)
    model.fc_norm.running_mean.copy_(features.mean(0))
    model.fc_norm.running_var.copy_(features.var(0))
    normed = (features - features.mean(0)) / features.var(0).add(1e-6).sqrt()
    direction = normed[labels == 1].mean(0) - normed[labels == 0].mean(0)
    model.head.weight.copy_(torch.stack([-direction, direction]) / direction.norm())
    model.head.bias.zero_()
    fp32_pred = model(x).logits.argmax(-1).numpy()
    assert (fp32_pred == labels).all()  # the toy is separable: the test below means something

    fp32 = export_onnx(model, tmp_path / "model.onnx")
    int8 = quantize_int8(fp32, tmp_path / "model_int8.onnx")
    assert int8.stat().st_size < fp32.stat().st_size  # 4x smaller weights; a tiny model's graph is not

    def weight_bytes(model):
        return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)

    quantized = onnx.load(str(int8))
    assert weight_bytes(quantized) < 0.4 * weight_bytes(onnx.load(str(fp32)))
    assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear")
               for node in quantized.graph.node)
    for batch in (1, 64):
        logits = onnx_session(int8).run(None, {"pixel_values": x[:batch].numpy()})[0]
        assert (logits.argmax(-1) == labels[:batch]).all()
        np.testing.assert_allclose(logits, model(x[:batch]).logits.numpy(), atol=0.1 * model(x).logits.abs().max())
    report = check_export(model, int8, processor, atol=None)  # int8 is reported, not held to 1e-4
    assert 0 < report["max_abs_diff"] and report["argmax_agreement_real"] >= 0.9

    def integer_matmuls(path):
        return sum(node.op_type == "MatMulInteger" for node in onnx.load(str(path)).graph.node)

    layers = model.config.num_hidden_layers
    assert integer_matmuls(int8) == 4 * layers + 1  # qkv, proj, fc1, fc2 per block + head; not q @ k, attn @ v
    partial = quantize_int8(fp32, tmp_path / "partial.onnx", keep_fp32=["mlp/fc2", "head"])
    assert integer_matmuls(partial) == 3 * layers


STANDALONE = textwrap.dedent("""
    import sys
    sys.modules["hf_mae"] = None  # any import of hf_mae now fails
    import numpy as np, onnxruntime, torch
    folder = sys.argv[1]
    x = np.load(folder + "/input.npy")
    want = np.load(folder + "/logits.npy")
    outputs = {
        "onnx": onnxruntime.InferenceSession(folder + "/model.onnx").run(["logits"], {"pixel_values": x})[0],
        "int8": onnxruntime.InferenceSession(folder + "/model_int8.onnx").run(None, {"pixel_values": x})[0],
        "export": torch.export.load(folder + "/model.pt2").module()(torch.from_numpy(x)).detach().numpy(),
        "torchscript": torch.jit.load(folder + "/model.pt")(torch.from_numpy(x)).detach().numpy(),
    }
    for name, logits in outputs.items():
        tol = 0.1 * np.abs(want).max() if name == "int8" else 1e-4
        assert logits.shape == want.shape and np.abs(logits - want).max() <= tol, (name, np.abs(logits - want).max())
    try:
        import hf_mae  # noqa: F401
    except ImportError:
        print("standalone ok")
""")


def test_exported_classifier_runs_without_hf_mae(tmp_path, saved):
    model, processor = load_model(str(saved / "classifier"))
    export_model(model, tmp_path, ["all"], processor=processor)
    images, _ = two_class_pictures(5)
    x = processor(images=images, return_tensors="pt")["pixel_values"]
    np.save(tmp_path / "input.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "logits.npy", model(x).logits.numpy())
    result = subprocess.run([sys.executable, "-c", STANDALONE, str(tmp_path)], capture_output=True, text=True,
                            timeout=subprocess_timeout(120))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "standalone ok" in result.stdout


def test_cli_exports_every_format_with_the_checks(tmp_path, saved, capsys):
    out = tmp_path / "out"
    info = main(parse_args(["--model", str(saved / "encoder"), "--format", "all", "--output", str(out)]))
    assert info["kind"] == "encoder" and info["outputs"] == ["last_hidden_state", "pooler_output"]
    for fmt, name in FILE_NAMES.items():
        assert (out / name).exists()
        assert "check" in info["files"][fmt]
    for fmt in ("onnx", "export", "torchscript"):
        assert info["files"][fmt]["check"]["max_abs_diff"] <= ATOL
    assert info["files"]["int8"]["size_bytes"] < info["files"]["onnx"]["size_bytes"]
    assert "max |diff| vs PyTorch" in capsys.readouterr().out


def test_every_cli_flag_is_documented():
    for action in build_parser()._actions:
        assert action.help, action.option_strings


def test_check_fails_when_the_export_does_not_match(tmp_path, encoder):
    path = export_onnx(encoder, tmp_path / "encoder.onnx")
    other = randomized(MAEModel(tiny_config()))
    with torch.no_grad():
        other.norm.bias.add_(1.0)
    with pytest.raises(ExportParityError, match="differ from PyTorch"):
        check_export(other, path)


def test_pretraining_model_is_refused_pointing_at_its_encoder(saved):
    folder = str(saved / "pretrain")
    with pytest.raises(PretrainingModelError, match=r"--model .*pretrain/encoder"):
        load_model(folder)
    with pytest.raises(PretrainingModelError, match="classifier"):
        wrap_for_export(MAEForPreTraining(tiny_config()))
    with pytest.raises(SystemExit, match="encoder"):
        main(parse_args(["--model", folder, "--output", str(saved / "never")]))
    assert not (saved / "never").exists()


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_optional_dependency_names_the_extra(tmp_path, monkeypatch, encoder, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    with pytest.raises(MissingExportDependency, match=r"pip install 'hf_mae\[export\]'") as error:
        export_model(encoder, tmp_path, ["int8"])
    assert repr(missing) in str(error.value)
    assert isinstance(error.value, ImportError)
    if missing == "onnx":
        with pytest.raises(MissingExportDependency, match=r"hf_mae\[export\]"):
            export_onnx(encoder, tmp_path / "m.onnx")
    else:
        with pytest.raises(MissingExportDependency, match=r"hf_mae\[export\]"):
            onnx_session(tmp_path / "m.onnx")


def test_dynamo_onnx_exporter_matches_pytorch(tmp_path, encoder):
    pytest.importorskip("onnxscript")
    path = export_onnx(encoder, tmp_path / "encoder.onnx", exporter="dynamo")
    assert check_export(encoder, path)["max_abs_diff"] <= ATOL


# --- the CLI owns its output folder; files are written whole; bad values are named ------------------------

def tree(root) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def export_cli(*argv) -> dict:
    return main(parse_args([str(a) for a in argv]))


def test_a_finished_export_is_never_overwritten_without_the_flag(tmp_path, saved):
    """`scripts/export.py --model M --output out` twice: the second refuses before loading anything; with
    --overwrite it replaces hf_mae's files and keeps the user's own."""
    out = tmp_path / "out"
    export_cli("--model", saved / "encoder", "--output", out, "--format", "torchscript", "--no_check")
    marker = json.loads((out / "hf_mae_run.json").read_text())
    assert (marker["program"], marker["status"]) == ("export", "finished")
    (out / "notes.txt").write_text("mine")
    before = tree(out)
    with pytest.raises(SystemExit, match=r"already holds a finished export.*--overwrite") as info:
        export_cli("--model", saved / "classifier", "--output", out, "--format", "onnx")
    assert str(out) in str(info.value.code)
    assert tree(out) == before
    info = export_cli("--model", saved / "classifier", "--output_dir", out, "--format", "onnx", "--overwrite")
    assert info["kind"] == "classifier" and (out / "model.onnx").is_file() and not (out / "model.pt").exists()
    assert (out / "notes.txt").read_text() == "mine"


def test_export_never_writes_into_its_input_or_another_programs_outputs(tmp_path, saved):
    """`--output` equal to `--model` (or a folder holding a pretraining run) is refused; nothing changes."""
    model_dir = tmp_path / "encoder"
    shutil.copytree(saved / "encoder", model_dir)
    before = tree(model_dir)
    for flags in ([], ["--overwrite"]):
        with pytest.raises(SystemExit, match="reads its input") as info:
            export_cli("--model", model_dir, "--output", model_dir, *flags)
        assert str(model_dir) in str(info.value.code)
        with pytest.raises(SystemExit, match="reads its input"):  # overwriting a parent would delete the input
            export_cli("--model", model_dir, "--output", tmp_path, "--overwrite", *flags)
    assert tree(model_dir) == before
    run = tmp_path / "pretrain_run"
    shutil.copytree(saved / "pretrain", run)
    (run / "hf_mae_run.json").write_text('{"program": "pretrain", "status": "finished"}')
    before = tree(run)
    with pytest.raises(SystemExit, match="already holds the outputs of pretrain"):
        export_cli("--model", saved / "encoder", "--output", run)
    assert tree(run) == before


def test_a_processor_that_does_not_fit_the_model_is_named_before_any_export(tmp_path, saved):
    """A 224-pixel processor beside a 16-pixel model is refused naming both sizes before anything is written
    (not left to fail inside onnxruntime with `INVALID_ARGUMENT ... Got: 224 Expected: 16`)."""
    model_dir = tmp_path / "encoder"
    shutil.copytree(saved / "encoder", model_dir)
    MAEImageProcessor().save_pretrained(model_dir)  # the default 224 x 224 crop
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=r"224x224.*16x16"):
        export_cli("--model", model_dir, "--output", out)
    assert not out.exists()


KILLED = textwrap.dedent("""
    import os, signal, sys, torch
    from hf_mae.cli.export import main, parse_args

    real_export = torch.onnx.export

    def export_then_die(*args, **kwargs):  # the file is being written when the process is killed
        real_export(*args, **kwargs)
        path = args[2]
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    torch.onnx.export = export_then_die
    main(parse_args(["--model", sys.argv[1], "--output", sys.argv[2], "--format", "onnx"]))
""")


def test_a_kill_never_leaves_a_half_written_model_file(tmp_path, saved):
    """SIGKILL while model.onnx is being written: no model.onnx at all, only a hidden temporary file and the
    folder marked as an interrupted export; running the export again finishes it and leaves no temporary file."""
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-c", KILLED, str(saved / "encoder"), str(out)], capture_output=True,
                            text=True, timeout=subprocess_timeout(300), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == -9, result.stderr[-2000:]  # killed, as the test meant
    (staging,) = [p for p in out.iterdir() if p.name != "hf_mae_run.json"]  # the export's hidden staging folder
    assert staging.name.startswith(".export-staging-") and [p.name for p in staging.iterdir()] == [".model.onnx.tmp"]
    assert json.loads((out / "hf_mae_run.json").read_text())["status"] == "running"
    export_cli("--model", saved / "encoder", "--output", out, "--format", "onnx")  # the interrupted export, again
    assert sorted(p.name for p in out.iterdir()) == ["card_mae.py", "export_info.json", "hf_mae_run.json",
                                                     "image_processing_mae.py", "model.onnx",
                                                     "preprocessor_config.json"]


def test_a_failed_export_leaves_no_partial_file(tmp_path, encoder, monkeypatch):
    def broken(*args, **kwargs):
        Path(args[2]).write_bytes(b"half an onnx file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(encoder, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag,value", [("--opset", "0"), ("--opset", "99"), ("--opset", "21"), ("--atol", "-1"),
                                        ("--atol", "nan"), ("--rtol", "-0.1"), ("--num_check_images", "0"),
                                        ("--num_check_images", "2.5")])
def test_bad_numeric_flags_are_named_at_parse_time(flag, value, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--model", "m", flag, value])
    assert info.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


@pytest.mark.slow
def test_module_cli_and_shim(tmp_path):
    """`python -m hf_mae.cli.export --help` from any folder; scripts/export.py only forwards to it."""
    result = subprocess.run([sys.executable, "-m", "hf_mae.cli.export", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=subprocess_timeout(120), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0 and "--overwrite" in result.stdout and "--output_dir" in result.stdout
    shim = (Path(__file__).resolve().parents[1] / "scripts" / "export.py").read_text()
    assert "from hf_mae.cli.export import cli" in shim and "sys.path" not in shim


def test_an_export_failing_its_check_leaves_nothing_behind(tmp_path, encoder, monkeypatch):
    """A parity failure after model.onnx was written and checked: no file of the export stays, not even the ones
    that passed, and the error names the file where the user looks for it (not a staging copy)."""
    import hf_mae.export.folder as folder_module

    real_check = folder_module.check_export
    calls = []

    def failing_second_check(module, path, *args, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 2:  # model.onnx passed; the torch.export program is found wrong
            raise ExportParityError(f"{path}: outputs differ from PyTorch by more than atol=0.0001")
        return real_check(module, path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "check_export", failing_second_check)
    out = tmp_path / "export"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportParityError) as info:
        export_model(encoder, out, ["onnx", "export"], processor=MAEImageProcessor.for_config(tiny_config()))
    assert calls == ["model.onnx", "model.pt2"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # hidden staging folder included
    assert str(info.value).startswith(str(out / "model.pt2"))


def test_tolerance_is_relative_to_each_outputs_scale():
    """fp32 rounding follows the output's magnitude: a 1.3e-4 error on a small logit beside logits of ~20 (a probe's
    BatchNorm on nearly constant features, measured 1.26e-4 on the quickstart's probe) passes at the defaults,
    which an elementwise rtol never allowed; the same error on an output of scale 1 fails."""
    from hf_mae.export.parity import max_tolerance_excess
    from hf_mae.export.spec import DEFAULT_ATOL, DEFAULT_RTOL

    reference = np.array([[20.0, 0.01, -3.0]])
    exported = reference + np.array([[0.0, 1.3e-4, 0.0]])
    assert max_tolerance_excess([exported], [reference], DEFAULT_ATOL, DEFAULT_RTOL) <= DEFAULT_ATOL
    elementwise = float((np.abs(exported - reference) - DEFAULT_RTOL * np.abs(reference)).max())
    assert elementwise > DEFAULT_ATOL  # what the check did before: the probe failed it
    small = reference / 20
    assert max_tolerance_excess([small + exported - reference], [small], DEFAULT_ATOL, DEFAULT_RTOL) > DEFAULT_ATOL


def test_a_probe_with_large_logits_exports_at_the_default_tolerance(tmp_path, capsys):
    """A linear probe whose BatchNorm divides by tiny running variances (logits in the tens): exported with the
    CLI's defaults, checked, nothing refused."""
    torch.manual_seed(0)
    probe = randomized(MAEForImageClassification(tiny_config(num_labels=3)))
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_var.fill_(1e-4)
    folder = tmp_path / "probe"
    probe.save_pretrained(folder)
    MAEImageProcessor.for_config(tiny_config()).save_pretrained(folder)
    scale = float(probe(pixels(3)).logits.detach().abs().max())
    assert scale > 10
    info = main(parse_args(["--model", str(folder), "--output", str(tmp_path / "out")]))
    assert info["files"]["onnx"]["check"]["rtol"] == 1e-5 and (tmp_path / "out" / "model.onnx").is_file()
