"""The browser demo (hf_mae/demo.py, scripts/demo.py) and its Space (hf_mae/hub/space.py).

(1) The contract `python scripts/demo.py --model RUN --port N` serves on 127.0.0.1:N: its named endpoints are
    called with gradio_client, and Debian's Chromium, driven by Playwright, uploads a digit, moves the mask-ratio
    slider and clicks; both check the returned pictures (sizes; the masked picture has exactly the share of
    patches the model masks at that ratio blanked). The browser test writes a screenshot to
    $HF_MAE_DEMO_SCREENSHOT (else a temporary folder); $HF_MAE_DEMO_MODEL serves a trained run instead of
    the tiny random one, which is how docs/demo.png is made.
(2) Bad folders and values: errors that name the problem.
(3) `--push_space` against the loopback Hub stand-in (tests/hub_server.py): the files uploaded, and the
    uploaded app.py run where it lands, importing the hf_mae copy beside it.
"""

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import FAKE_HUB_TOKEN
from PIL import Image

from hf_mae import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEImageProcessor, MAEModel

gradio = pytest.importorskip("gradio", reason='the demo extra is not installed (pip install -e ".[demo]")')

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = FAKE_HUB_TOKEN  # the `hub` fixture's (conftest)
DIGIT_CONFIG = dict(image_size=28, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                    decoder_num_attention_heads=2, mask_ratio=0.75)
NUM_PATCHES = 49
SHOWN_SIDE = 224  # 28 px shown 8x: each 4-px patch is a 32-px block
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def masked_count(ratio: float) -> int:
    """Patches the model masks at `ratio` (it keeps int(N * (1 - ratio)))."""
    return NUM_PATCHES - int(NUM_PATCHES * (1 - ratio))


def blanked_blocks(original: Image.Image, masked: Image.Image) -> int:
    """Patch blocks where the masked picture differs from the original; each must be one flat grey."""
    a, b = np.asarray(original.convert("L"), dtype=np.int16), np.asarray(masked.convert("L"), dtype=np.int16)
    assert a.shape == b.shape == (SHOWN_SIDE, SHOWN_SIDE)
    block, count, greys = SHOWN_SIDE // 7, 0, set()
    for row in range(7):
        for column in range(7):
            cell = np.s_[row * block:(row + 1) * block, column * block:(column + 1) * block]
            if (a[cell] != b[cell]).any():
                assert b[cell].min() == b[cell].max(), f"blanked patch ({row}, {column}) is not one flat grey"
                count += 1
                greys.add(int(b[cell][0, 0]))
    assert len(greys) <= 1, f"blanked patches have different greys: {greys}"
    return count


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny 28-px, 1-channel pretraining run and a 10-digit probe on it, random init (fast to load)."""
    root = tmp_path_factory.mktemp("demo_models")
    torch.manual_seed(0)
    config = MAEConfig(**DIGIT_CONFIG)
    processor = MAEImageProcessor.for_config(config)
    MAEForPreTraining(config).save_pretrained(root / "run")
    processor.save_pretrained(root / "run")
    MAEModel(config).save_pretrained(root / "encoder")
    labels = {i: str(i) for i in range(10)}
    probe_config = MAEConfig(**DIGIT_CONFIG, num_labels=10, id2label=labels, classifier_head="linear_probe",
                             label2id={v: k for k, v in labels.items()})
    MAEForImageClassification(probe_config).save_pretrained(root / "probe")
    processor.save_pretrained(root / "probe")
    return root


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
    """Held-out digit 3 of the embedded data as a PNG, and its label."""
    from hf_mae.data.sources import load_embedded_default

    validation = load_embedded_default()["validation"]
    path = tmp_path_factory.mktemp("digit") / "digit.png"
    validation[3]["image"].save(path)
    return path, validation.features["label"].int2str(validation[3]["label"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(folders, tmp_path_factory):
    """`python scripts/demo.py --model RUN --classifier PROBE --port N`, while it serves: its URL, the model's mask
    ratio, whether a classifier is shown."""
    port, log = _free_port(), tmp_path_factory.mktemp("demo_server") / "server.log"
    model = os.environ.get("HF_MAE_DEMO_MODEL") or str(folders / "run")
    classifier = ["--classifier", str(folders / "probe")] if not os.environ.get("HF_MAE_DEMO_MODEL") else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(log.parent / "gradio"), "NO_PROXY": "127.0.0.1,localhost"}
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "scripts/demo.py", "--model", model, *classifier, "--port",
                                   str(port)], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the demo exited ({server.returncode}):\n{log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"no answer on {url} in 120 s:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
        yield SimpleNamespace(url=url, mask_ratio=MAEConfig.from_pretrained(model).mask_ratio,
                              classifier=bool(classifier))
    finally:
        server.terminate()
        server.wait(timeout=30)


# ----------------------------------------------------------------------------------------------------------
# (1) the served app: gradio_client and a real browser
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a served app or a fresh interpreter importing gradio
def test_named_endpoints_through_gradio_client(served, digit):
    from gradio_client import Client, handle_file

    client = Client(served.url, verbose=False)
    expected = {"/heldout_digit", "/reconstruct"} | ({"/classify"} if served.classifier else set())
    assert expected <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    picked, label = client.predict(3, api_name="/heldout_digit")
    assert label == digit[1] and Image.open(picked).size == (28, 28)

    first = client.predict(handle_file(str(digit[0])), 0.5, 2, "visible", api_name="/reconstruct")
    pictures = [Image.open(path) for path in first[:4]]
    assert [p.size for p in pictures] == [(SHOWN_SIDE, SHOWN_SIDE)] * 4
    assert blanked_blocks(pictures[0], pictures[1]) == masked_count(0.5) == 25
    assert first[4].startswith("25 of 49 patches masked")
    again = client.predict(handle_file(str(digit[0])), 0.5, 2, "visible", api_name="/reconstruct")
    other_seed = client.predict(handle_file(str(digit[0])), 0.5, 3, "visible", api_name="/reconstruct")
    assert np.array_equal(np.asarray(Image.open(again[1])), np.asarray(pictures[1]))  # the seed fixes the mask
    assert not np.array_equal(np.asarray(Image.open(other_seed[1])), np.asarray(pictures[1]))
    high = client.predict(handle_file(str(digit[0])), 0.9, 2, "visible", api_name="/reconstruct")
    assert blanked_blocks(Image.open(high[0]), Image.open(high[1])) == masked_count(0.9) == 45

    if not served.classifier:
        return
    top = client.predict(handle_file(str(digit[0])), api_name="/classify")
    confidences = [c["confidence"] for c in top["confidences"]]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True) and sum(confidences) <= 1
    assert {c["label"] for c in top["confidences"]} <= {str(i) for i in range(10)}


def _browser():
    """Playwright's Chromium (Debian's build), or a skip that says what is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser at {CHROMIUM} (apt-get install -y chromium)")
    return sync_playwright


def _fetch_picture(page, element_id: str) -> Image.Image:
    image = page.locator(f"#{element_id} img")
    image.evaluate("e => e.complete && e.naturalWidth ? null : new Promise(done => e.onload = done)")
    natural = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    picture = Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body()))
    assert list(picture.size) == natural  # what the browser shows is what was served
    return picture


@pytest.mark.slow  # a served app or a fresh interpreter importing gradio
def test_browser_upload_slider_click(served, digit, tmp_path):
    sync_playwright = _browser()
    screenshot = Path(os.environ.get("HF_MAE_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(served.url)
            page.locator("#input_image input[type=file]").set_input_files(str(digit[0]))
            slider = page.locator("#mask_ratio input[type=range]")
            assert float(slider.input_value()) == served.mask_ratio  # the model's own ratio to start with
            slider.focus()
            for _ in range(round((served.mask_ratio - 0.5) / 0.05)):  # down to 0.5, as a keyboard user moves it
                page.keyboard.press("ArrowLeft")
            assert slider.input_value() == "0.5"
            page.locator("#run").click()
            page.wait_for_function("document.querySelector('#caption')?.innerText.includes('patches masked')",
                                   timeout=60_000)
            assert page.locator("#caption").inner_text().startswith("25 of 49 patches masked")
            pictures = {name: _fetch_picture(page, f"out_{name}") for name in
                        ("original", "masked", "reconstruction", "reconstruction_visible")}
            assert {p.size for p in pictures.values()} == {(SHOWN_SIDE, SHOWN_SIDE)}
            assert blanked_blocks(pictures["original"], pictures["masked"]) == masked_count(0.5)
            if served.classifier:
                page.wait_for_function("document.querySelector('#top_classes')?.innerText.includes('%')")
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert Image.open(screenshot).size[0] == 1280


# ----------------------------------------------------------------------------------------------------------
# (2) bad input
# ----------------------------------------------------------------------------------------------------------
def test_errors_name_the_problem(folders, digit):
    from hf_mae.demo import load_demo_models, reconstruct

    with pytest.raises(ValueError, match="needs the decoder|reconstructions need the decoder"):
        load_demo_models(str(folders / "encoder"))
    with pytest.raises(ValueError, match="is a classifier already"):
        load_demo_models(str(folders / "probe"), classifier=str(folders / "probe"))
    with pytest.raises(ValueError, match="no config.json"):
        load_demo_models(str(folders))
    models = load_demo_models(str(folders / "run"))
    image = Image.open(digit[0])
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        reconstruct(models, image, 0.0, 0)
    with pytest.raises(ValueError, match="statistics must be"):
        reconstruct(models, image, 0.5, 0, statistics="original")


# ----------------------------------------------------------------------------------------------------------
# (3) the Space
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a served app or a fresh interpreter importing gradio
def test_push_space_uploads_a_runnable_app(hub, folders, tmp_path):
    from huggingface_hub import metadata_load

    from hf_mae.cli.demo import main, parse_args

    url = main(parse_args(["--model", "me/mae-mnist", "--classifier", "me/mae-mnist-probe",
                           "--push_space", "me/mae-mnist-demo"]))
    space = hub.repo("me/mae-mnist-demo", "space")
    assert space.created_with.get("sdk") == "gradio" and len(space.commits) == 1 and "me/mae-mnist-demo" in url
    files = space.commits[0]["files"]
    assert {"app.py", "requirements.txt", "README.md", "hf_mae/__init__.py", "hf_mae/demo.py",
            "hf_mae/models/mae/modeling_mae.py"} <= set(files)
    assert not any("__pycache__" in name or name.startswith("hf_mae/model_cards") for name in files)
    app = files["app.py"].decode()
    assert "'me/mae-mnist'" in app and "'me/mae-mnist-probe'" in app
    requirements = files["requirements.txt"].decode().splitlines()
    assert any(r.startswith("torch") for r in requirements) and any(r.startswith("mlxtend") for r in requirements)
    assert not any(r.startswith(("pytest", "onnx")) for r in requirements)  # extras stay out
    for name, content in files.items():
        (tmp_path / "space" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "space" / name).write_bytes(content)
    metadata = metadata_load(tmp_path / "space" / "README.md")
    assert metadata["sdk"] == "gradio" and metadata["sdk_version"] == gradio.__version__
    assert metadata["app_file"] == "app.py" and metadata["models"] == ["me/mae-mnist", "me/mae-mnist-probe"]

    # The Space's app.py, run where it lands: it imports the hf_mae copy beside it and builds the demo
    # (the model repo pointed at the local folders through the Space variables, as the stand-in serves no files).
    probe = ("import json, app; import hf_mae; print(type(app.demo).__name__); print(hf_mae.__file__); "
             "print(json.dumps(sorted(str(f.api_name) for f in app.demo.fns.values())))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_MAE_DEMO_MODEL": str(folders / "run"), "HF_MAE_DEMO_CLASSIFIER": str(folders / "probe")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path / "space", env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    kind, package, endpoints = result.stdout.strip().splitlines()[-3:]
    assert kind == "Blocks" and Path(package).resolve() == (tmp_path / "space" / "hf_mae" / "__init__.py").resolve()
    assert {"classify", "heldout_digit", "reconstruct"} <= set(json.loads(endpoints))


def test_push_space_refuses_a_local_model(hub, folders):
    from hf_mae.cli.demo import main, parse_args

    with pytest.raises(ValueError, match="push it .*scripts/push_to_hub.py.*--space_model"):
        main(parse_args(["--model", str(folders / "run"), "--push_space", "me/demo"]))
    with pytest.raises(ValueError, match="not a Hub repo id"):
        main(parse_args(["--model", "me/mae-mnist", "--push_space", "not-a-repo-id"]))
    assert hub.repos == {} and hub.requests == []  # refused before anything reached the Hub


def test_space_folder_refuses_a_non_empty_folder(tmp_path):
    from hf_mae.hub.space import build_space_folder

    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        build_space_folder(tmp_path, model_repo="me/mae-mnist")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
