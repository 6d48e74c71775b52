"""hf_mae.atomic: a write that fails or is killed midway leaves the old file or folder as it was."""

import json
import os
import signal
import subprocess
import sys

import pytest

from hf_mae import atomic
from hf_mae.models.mae.configuration_mae import MAEConfig
from hf_mae.models.mae.image_processing_mae import MAEImageProcessor
from hf_mae.models.mae.modeling_mae import MAEModel


def hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def tiny_model():
    return MAEModel(MAEConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32))


def test_file_text_and_json_writes_replace_the_target(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic.write_json(target, {"b": 1, "a": tmp_path}, sort_keys=True)  # a Path is written as its str
    assert json.loads(target.read_text()) == {"a": str(tmp_path), "b": 1}
    assert target.read_text().index('"a"') < target.read_text().index('"b"')
    atomic.write_text(target, "new")
    assert target.read_text() == "new"
    atomic.write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01" and hidden(target.parent) == []


def test_a_failing_file_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="midway"):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("midway")
    assert target.read_text() == "old" and hidden(tmp_path) == []


def test_a_failing_json_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_json(target, {"step": 1})
    circular = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="[Cc]ircular"):
        atomic.write_json(target, circular)
    assert json.loads(target.read_text()) == {"step": 1} and hidden(tmp_path) == []


KILLED_FILE = """
import os, signal, sys
from hf_mae import atomic
with atomic.atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half a file")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_file_write_keeps_the_old_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "results.json"
    atomic.write_json(target, {"old": True})
    result = subprocess.run([sys.executable, "-c", KILLED_FILE, str(target)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert json.loads(target.read_text()) == {"old": True}
    assert hidden(tmp_path) == [".results.json.tmp"]  # what a kill leaves: never the target half-written
    atomic.write_json(target, {"old": False})
    assert json.loads(target.read_text()) == {"old": False} and hidden(tmp_path) == []


def test_a_file_replaces_a_folder_and_a_folder_a_file(tmp_path):
    target = tmp_path / "out"
    with atomic.replace_folder(target) as staging:
        (staging / "x.txt").write_text("x")
    atomic.write_text(target, "now a file")
    assert target.read_text() == "now a file"
    with atomic.replace_folder(target) as staging:
        (staging / "y.txt").write_text("y")
    assert sorted(p.name for p in target.iterdir()) == ["y.txt"] and hidden(tmp_path) == []


def test_a_failing_folder_replace_keeps_the_old_folder_and_no_staging(tmp_path):
    target = tmp_path / "cache"
    with atomic.replace_folder(target) as staging:
        (staging / "data.arrow").write_text("old")
    with pytest.raises(OSError):
        with atomic.replace_folder(target) as staging:
            (staging / "data.arrow").write_text("half")
            raise OSError("disk full")
    assert (target / "data.arrow").read_text() == "old" and hidden(tmp_path) == []


def test_replace_folder_keep_if_keeps_a_complete_copy_another_process_made(tmp_path):
    target = tmp_path / "cache"

    def complete(folder):
        return (folder / "data").is_file()

    (target / "partial").mkdir(parents=True)  # an incomplete copy is replaced
    with atomic.replace_folder(target, keep_if=complete) as staging:
        (staging / "data").write_text("first")
        with atomic.replace_folder(target, keep_if=complete) as other:  # another process, finishing first
            (other / "data").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["data"]
    assert (target / "data").read_text() == "second" and hidden(tmp_path) == []


def test_a_new_folder_gets_the_permissions_of_the_umask(tmp_path):
    target = tmp_path / "model"
    with atomic.replace_folder(target) as staging:
        (staging / "config.json").write_text("{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask


class SavesHalfThenFails:
    def save_pretrained(self, folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")


def test_save_pretrained_replaces_the_folder_whole(tmp_path):
    model, processor = tiny_model(), MAEImageProcessor(size={"height": 16, "width": 16})
    folder = atomic.save_pretrained(tmp_path / "encoder", model, processor)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in folder.iterdir()}
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(OSError, match="disk full"):
        atomic.save_pretrained(folder, SavesHalfThenFails())
    assert (folder / "model.safetensors").read_bytes() == before and hidden(tmp_path) == []
    assert MAEModel.from_pretrained(folder).config.hidden_size == 16


def test_save_pretrained_into_keeps_other_files_and_fails_cleanly(tmp_path):
    (tmp_path / "log.jsonl").write_text("kept\n")
    atomic.save_pretrained_into(tmp_path, tiny_model())
    assert (tmp_path / "log.jsonl").read_text() == "kept\n" and (tmp_path / "config.json").is_file()
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(OSError, match="disk full"):
        atomic.save_pretrained_into(tmp_path, SavesHalfThenFails())
    assert (tmp_path / "model.safetensors").read_bytes() == before and hidden(tmp_path) == []
