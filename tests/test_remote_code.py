"""A saved folder carries its code: it loads with every Auto class where hf_mae cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import subprocess_timeout, tiny_config

from hf_mae import MAEForPreTraining, MAEImageProcessor
from hf_mae.models.mae.modeling_mae import AUTO_MAP

CHILD = textwrap.dedent("""
    import sys
    sys.modules["hf_mae"] = None  # any `import hf_mae` now fails
    import torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              AutoModelForPreTraining)
    folder = sys.argv[1]
    pixels = torch.load(sys.argv[2])
    out = {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    out["config"] = type(config).__name__
    full = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    out["pretraining"] = type(full).__name__
    out["logits"] = full(pixels, noise=torch.linspace(0, 1, 16).expand(2, 16)).logits.sum().item()
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    out["encoder"] = type(encoder).__name__
    out["features"] = encoder(pixels).last_hidden_state.sum().item()
    clf = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True, num_labels=4)
    out["classifier"] = type(clf).__name__
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    out["processor"] = type(processor).__name__
    # AutoBackbone.from_pretrained asks the Hub about any name first (transformers 5.24), so a local folder
    # cannot go through it; the class comes from the folder's code as AutoBackbone would take it for a repo
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    backbone_class = get_class_from_dynamic_module(config.auto_map["AutoBackbone"], folder)
    backbone = backbone_class.from_pretrained(folder, out_indices=[1, 2]).eval()
    out["backbone"] = [type(backbone).__name__, list(backbone(pixels).feature_maps[-1].shape)]
    out["hf_mae_modules"] = sorted(m for m in sys.modules if m.startswith("hf_mae."))
    print("RESULT", __import__("json").dumps(out))
""")


@pytest.mark.slow
def test_saved_folder_loads_without_hf_mae(tmp_path):
    model = MAEForPreTraining(tiny_config()).eval()
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    MAEImageProcessor.for_config(model.config).save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["auto_map"] == AUTO_MAP
    for name in ("modeling_mae.py", "configuration_mae.py", "image_processing_mae.py", "card_mae.py",
                 "layers_mae.py", "classification_mae.py", "backbone_mae.py"):
        assert (folder / name).exists(), name

    pixels = torch.randn(2, 3, 16, 16)
    torch.save(pixels, tmp_path / "pixels.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(tmp_path / "pixels.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=subprocess_timeout(300))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result["config"] == "MAEConfig" and result["pretraining"] == "MAEForPreTraining"
    assert result["encoder"] == "MAEModel" and result["classifier"] == "MAEForImageClassification"
    assert result["processor"] == "MAEImageProcessor" and result["hf_mae_modules"] == []
    assert result["backbone"] == ["MAEBackbone", [2, 32, 4, 4]]
    expected = model(pixels, noise=torch.linspace(0, 1, 16).expand(2, 16)).logits.sum().item()
    assert abs(result["logits"] - expected) < 1e-3
    assert abs(result["features"] - model.encoder(pixels).last_hidden_state.sum().item()) < 1e-3


PROMPT_CHILD = textwrap.dedent("""
    import sys, time
    import hf_mae  # installed: its own classes, never a remote-code question
    from transformers import (AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel,
                              AutoModelForImageClassification, AutoModelForPreTraining, AutoProcessor, pipeline)
    from transformers.models.auto.video_processing_auto import AutoVideoProcessor
    folder = sys.argv[1]
    start = time.time()
    loaded = [type(AutoConfig.from_pretrained(folder)), type(AutoModel.from_pretrained(folder)),
              type(AutoModelForPreTraining.from_pretrained(folder)),
              type(AutoModelForImageClassification.from_pretrained(folder, num_labels=2)),
              type(AutoBackbone.from_pretrained(folder, out_indices=[1, 2])),
              type(AutoImageProcessor.from_pretrained(folder)),
              type(AutoImageProcessor.from_pretrained(folder, backend="torchvision")),
              type(AutoProcessor.from_pretrained(folder))]
    try:
        AutoVideoProcessor.from_pretrained(folder)
    except (ValueError, ImportError):
        pass  # no video processor for an image model: an error, at once
    features = pipeline("image-feature-extraction", folder)
    classifier = pipeline("image-classification", folder)
    print("LOADED", [c.__name__ for c in loaded], type(features.model).__name__, type(classifier.model).__name__)
    print("SECONDS", time.time() - start)
""")


@pytest.mark.slow
def test_installed_hf_mae_loads_its_folders_without_a_prompt_in_a_terminal(tmp_path):
    """transformers asks "Do you wish to run the custom code? [y/N]" (and waits 15 s) only where stdin is a
    terminal: run the loads under a pseudo-terminal, as a user at a shell would."""
    import pty
    import select
    import time

    folder = tmp_path / "checkpoint"
    MAEForPreTraining(tiny_config()).save_pretrained(folder)
    MAEImageProcessor.for_config(tiny_config()).save_pretrained(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    started = time.time()
    pid, fd = pty.fork()
    if pid == 0:  # the child: python with its stdin, stdout and stderr on the terminal
        os.execvpe(sys.executable, [sys.executable, "-c", PROMPT_CHILD, str(folder)], env)
    output = b""
    while time.time() - started < 120:
        if not select.select([fd], [], [], 1)[0]:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-3000:]
    assert "Do you wish to run the custom code" not in text and "[y/N]" not in text
    assert "LOADED ['MAEConfig', 'MAEModel', 'MAEForPreTraining', 'MAEForImageClassification', 'MAEBackbone', " \
           "'MAEImageProcessor', 'MAEImageProcessorFast', 'MAEImageProcessor'] MAEModel MAEForImageClassification" \
           in text, text[-3000:]
    seconds = float(text.split("SECONDS", 1)[1].split()[0])
    assert seconds < 10, seconds  # the prompt alone waited 15 s
