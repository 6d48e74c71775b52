"""README.md runs as written: every ```python block and every ```bash command, in order, in a fresh folder.

The working directory is a temporary folder holding only a link to the repository's `scripts/` (so
`scripts/pretrain.py` and `scripts/configs/` resolve as in a clone) and what the README's own commands write
(`outputs/...`). Python blocks share one namespace, so a block may use what an earlier block defined, exactly as
a reader pasting them into one session would.

The long-run switch: unless HF_MAE_README_FULL=1, the training programs get the flags in `SHORT_RUN_FLAGS`
appended (a few steps, a subset of the data), so the whole README takes a few minutes. Commands that cannot run
here are listed in `SKIPPED` with the reason; each entry must match a README command (a stale entry fails).
A command identical to one already run (the pretraining section repeats the quickstart) is not run twice.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from huggingface_hub.repocard import metadata_load

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT_SCALE = float(os.environ.get("HF_MAE_TEST_TIMEOUT_SCALE", "1"))

# program -> flags appended to its command for a short run (HF_MAE_README_FULL=1: none)
SHORT_RUN_FLAGS = {
    "scripts/pretrain.py": "--max_train_steps 4 --monitor_every -1",
    "scripts/linear_probe.py": "--epochs 2 --max_train_samples 512 --max_eval_samples 256",
    "scripts/knn_eval.py": "--max_train_samples 512 --max_eval_samples 256",
    "scripts/finetune.py": "--epochs 1 --max_train_samples 256 --max_eval_samples 256",
    "scripts/segment.py": "--max_train_steps 2 --max_train_samples 64 --max_eval_samples 16",
    "scripts/export.py": "--num_check_images 8",
}

# a substring of the command (or of the Python block) -> why it does not run here
SKIPPED = {
    "pip install": "installs into the environment; the test runs in the installed development environment",
    "python -m pytest": "runs the test suite this test belongs to",
    "--config_file scripts/configs/": "a multi-GPU, FSDP or multi-node Accelerate config (no GPU or second node)",
    "--multi_gpu --num_processes 2": "two CPU processes over gloo: tests/test_distributed.py runs them",
    "ILSVRC/imagenet-1k": "ImageNet (gated Hub dataset, no Hub access)",
    "data/train": "needs an imagefolder of your own images in data/train",
    "data/in1k-256": "needs the prepared copy of the command before it",
    "scene_parse_150": "a Hub model and dataset (no Hub access)",
    "hf auth login": "logs in to the Hub",
    "push_to_hub.py --checkpoint": "pushes to the real Hub (tests/test_hub.py pushes to a loopback stand-in)",
    "--push_space": "pushes a Space to the real Hub (tests/test_demo.py pushes to a loopback stand-in)",
    "scripts/demo.py --model outputs/pretrain": "serves until stopped (tests/test_demo.py drives it in a browser)",
    "from_transformers(\"path/or/hub-id": "needs a transformers ViTMAE checkpoint (tests/test_parity.py converts one)",
    "mae_pretrain_vit_base.pth": "needs the official checkpoint files (download; tests/test_convert.py)",
    "mae_visualize_vit_large.pth": "needs the official checkpoint files (download; tests/test_convert.py)",
    "vit_l_timm.safetensors": "needs the converted checkpoint of the command before it",
    "facebook-vit-mae-base/": "needs a downloaded facebook/vit-mae-base folder",
}


@dataclass
class Snippet:
    language: str  # "python" or "bash"
    code: str
    line: int  # where its block starts in README.md

    def skip_reason(self) -> str | None:
        return next((why for key, why in SKIPPED.items() if key in self.code), None)


def readme_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, first line) of every fenced ```python / ```bash block."""
    pattern = re.compile(r"^```(python|bash)\n(.*?)^```", re.S | re.M)
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in pattern.finditer(text)]


def bash_commands(code: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        command = re.split(r"\s+#", line, maxsplit=1)[0].strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def readme_snippets(text: str) -> list[Snippet]:
    snippets = []
    for language, code, line in readme_blocks(text):
        if language == "python":
            snippets.append(Snippet("python", code, line))
        else:
            snippets.extend(Snippet("bash", command, line) for command in bash_commands(code))
    return snippets


def shortened(command: str) -> str:
    if os.environ.get("HF_MAE_README_FULL") == "1":
        return command
    extra = next((flags for program, flags in SHORT_RUN_FLAGS.items() if program in command), "")
    return f"{command} {extra}".strip()


def run_bash(command: str, cwd: Path) -> str | None:
    """Run one README command; None when it worked, else what went wrong."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}", "HF_MAE_CACHE": os.environ.get("HF_MAE_CACHE", str(Path.home() /
                                                                                             ".cache/hf_mae"))}
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600 * TIMEOUT_SCALE)
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"
    return None


def run_python(code: str, namespace: dict, cwd: Path) -> str | None:
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    except Exception as e:  # noqa: BLE001 - every failure is reported with its block
        return f"{type(e).__name__}: {e}"
    finally:
        os.chdir(previous)
    return None


def test_extraction_finds_the_blocks_and_every_skip_names_a_command():
    snippets = readme_snippets(README.read_text())
    assert sum(s.language == "python" for s in snippets) >= 5
    assert any("scripts/pretrain.py" in s.code for s in snippets if s.language == "bash")
    assert bash_commands("a \\\n  --b 1   # note\n# only a comment\n\nc") == ["a  --b 1", "c"]
    codes = [s.code for s in snippets]
    stale = [key for key in SKIPPED if not any(key in code for code in codes)]
    assert not stale, f"SKIPPED entries that match no README command: {stale}"
    steps = readme_steps(README.read_text())
    quickstart = next(s for s in steps if "scripts/pretrain.py" in s.code)
    assert quickstart.code == "accelerate launch scripts/pretrain.py" and quickstart.skip_reason() is None
    assert "--max_train_steps 4" in shortened(quickstart.code) or os.environ.get("HF_MAE_README_FULL") == "1"


def split_chain(command: str) -> list[str]:
    """`pip install ... && accelerate launch ...`: the parts of an && chain, so the install can be skipped alone."""
    return [part.strip() for part in command.split("&&")]


def readme_steps(text: str) -> list[Snippet]:
    steps = []
    for snippet in readme_snippets(text):
        if snippet.language == "bash" and "&&" in snippet.code:
            steps.extend(Snippet("bash", part, snippet.line) for part in split_chain(snippet.code))
        else:
            steps.append(snippet)
    return steps


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    namespace: dict = {"__name__": "__readme__"}
    ran, skipped, failed, done = [], [], [], set()
    for step in readme_steps(README.read_text()):
        reason = step.skip_reason()
        if reason:
            skipped.append((step.line, step.code.splitlines()[0][:60], reason))
            continue
        if step.language == "bash":
            command = shortened(step.code)
            if command in done:
                continue
            done.add(command)
            error = run_bash(command, tmp_path)
        else:
            error = run_python(step.code, namespace, tmp_path)
        (failed if error else ran).append((step.line, step.code.splitlines()[0][:70], error))
    print(f"README: {len(ran)} ran, {len(failed)} failed, {len(skipped)} skipped")
    for line, what, reason in skipped:
        print(f"  skipped line {line}: {what}: {reason}")
    assert ran and not failed, "\n\n".join(f"README.md line {line}: {what}\n{error}" for line, what, error in failed)
    assert (tmp_path / "outputs/pretrain/encoder/config.json").is_file()
    assert (tmp_path / "outputs/export/probe/model.onnx").is_file()
    for kind in ("pretraining", "encoder", "probe"):  # the dry run's cards: what the Hub would index
        meta = metadata_load(tmp_path / "outputs/push_plan" / kind / "README.md")
        assert meta["license"] == "apache-2.0" and meta["datasets"] == ["ylecun/mnist"] and meta["model-index"]
        assert meta.get("base_model") == ("me/mae-mnist-encoder" if kind == "probe" else None)


if __name__ == "__main__":  # `python tests/test_readme.py`: list what the test would run and skip
    for step in readme_steps(README.read_text()):
        print(f"{step.line:4} {step.language:6} {'SKIP ' + step.skip_reason() if step.skip_reason() else 'RUN'}: "
              f"{shlex.quote(step.code.splitlines()[0])[:90]}")
