"""scripts/prepare_dataset.py: a capped, sharded copy that trains with the same labels; resumable; source untouched."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image

from hf_mae.cli import prepare_dataset as prep
from hf_mae.data.sources import load_image_datasets


def write_folder(root: Path) -> Path:
    """Two classes of JPEGs, half larger than the cap (80x60), half smaller (40x30); one grey PNG."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                size = (80, 60) if i % 2 else (40, 30)
                Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(root / "train" / "dog" / "grey.png")
    return root


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        h.update(str(path.relative_to(folder)).encode() + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


@pytest.fixture
def source(tmp_path) -> Path:
    return write_folder(tmp_path / "src")


def prepare(source: Path, out: Path, *extra: str) -> dict:
    return prep.main(prep.parse_args(["--train_dir", str(source / "train"), "--eval_dir", str(source / "val"),
                                      "--output_dir", str(out), "--shorter_side", "48", "--shard_size", "5",
                                      "--num_proc", "1", *extra]))


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_copy_caps_the_shorter_side_and_keeps_labels(source, tmp_path, fmt):
    before = digest(source)
    record = prepare(source, tmp_path / "out", "--format", fmt, "--quality", "80")
    assert digest(source) == before  # the source is only read
    original_train, original_eval, original_info = load_image_datasets(train_dir=str(source / "train"),
                                                                       eval_dir=str(source / "val"))
    train, evaluation, info = load_image_datasets(dataset_name=str(tmp_path / "out"))
    assert info.label_names == original_info.label_names == ["cat", "dog"]
    assert train["label"] == original_train["label"] and evaluation["label"] == original_eval["label"]
    assert record["this_run"]["resized"] == 9 and record["this_run"]["kept"] == 10  # 80x60 and 50x70: resized
    for copy, original in zip(train["image"], original_train["image"]):
        assert min(copy.size) == min(48, min(original.size))
        assert copy.mode == original.mode and abs(copy.width / copy.height - original.width / original.height) < 0.05
    extension = "parquet" if fmt == "parquet" else "tar"
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == [
        f"train-0000{i}-of-00003.{extension}" for i in range(3)] + [
        f"validation-0000{i}-of-00002.{extension}" for i in range(2)]


def test_small_images_are_stored_byte_for_byte(source, tmp_path):
    prepare(source, tmp_path / "out")
    import datasets

    train, _, _ = load_image_datasets(dataset_name=str(tmp_path / "out"))
    stored = train.cast_column("image", datasets.Image(decode=False))["image"]
    originals = {(source / "train" / name / f"{i}.jpg").read_bytes() for name in ("cat", "dog") for i in (0, 2, 4)}
    assert originals <= {row["bytes"] for row in stored}  # the 40x30 JPEGs: no second JPEG generation


def test_a_killed_run_continues_without_redoing_finished_shards(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = prep.write_shard
    calls = []

    def dies_on_the_third(*job):
        calls.append(job)
        if len(calls) == 3:
            tmp = Path(job[3]).with_name("." + Path(job[3]).name + ".tmp")
            tmp.write_bytes(b"half a shard")  # what a kill in the middle of a write leaves
            raise KeyboardInterrupt
        return real(*job)

    monkeypatch.setattr(prep, "write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, out)
    finished = sorted((out / "data").glob("*.parquet"))
    assert len(finished) == 2 and len(list((out / "data").glob(".*.tmp"))) == 1  # no half shard under a final name
    stamps = {p.name: p.stat().st_mtime_ns for p in finished}
    calls.clear()
    monkeypatch.setattr(prep, "write_shard", lambda *job: calls.append(job) or real(*job))
    record = prepare(source, out)  # the same command again
    assert len(calls) == 3 and record["resumed_after_images"] == 10
    assert {p.name: p.stat().st_mtime_ns for p in finished} == stamps  # not rewritten
    assert not list((out / "data").glob(".*.tmp"))
    train, evaluation, _ = load_image_datasets(dataset_name=str(out))
    assert len(train) == 13 and len(evaluation) == 6


def test_other_settings_and_finished_copies_are_refused(source, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(prep, "write_shard", lambda *job: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare(source, out)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="other settings"):
        prepare(source, out, "--quality", "70")
    prepare(source, out)
    with pytest.raises(ValueError, match="already holds a finished prepared copy"):
        prepare(source, out)
    record = prepare(source, out, "--shorter_side", "32", "--overwrite_output_dir")
    assert record["settings"]["shorter_side"] == 32
    with pytest.raises(ValueError, match="inside the source"):
        prepare(source, source / "train" / "copy")


def test_pretraining_trains_on_the_prepared_copy(source, tmp_path):
    from hf_mae.cli.pretrain import main, parse_args

    prepare(source, tmp_path / "copy", "--format", "webdataset")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    results = main(parse_args(["--dataset_name", str(tmp_path / "copy"), "--model_config", str(tmp_path / "tiny.json"),
                               "--output_dir", str(tmp_path / "run"), "--per_device_batch_size", "4",
                               "--max_train_steps", "2", "--num_workers", "0", "--mixed_precision", "no",
                               "--warmup_steps", "0"]))
    assert results["optimizer_steps"] == 2 and results["final_loss"] is not None
    start = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][0]
    assert str(tmp_path / "copy") in start["dataset"] and start["num_train"] == 13 and start["num_eval"] == 6


def test_capped_image_keeps_an_undecodable_file_as_it_is():
    data, _, what = prep.capped_image({"bytes": b"\xff\xd8 not a jpeg", "path": None}, 32, 90)
    assert what == "undecodable" and data == b"\xff\xd8 not a jpeg"
    buffer = io.BytesIO()
    Image.new("RGB", (100, 50), (200, 10, 10)).save(buffer, "JPEG")
    resized, fmt, what = prep.capped_image(buffer.getvalue(), 32, 90)
    assert what == "resized" and fmt == "jpeg" and Image.open(io.BytesIO(resized)).size == (64, 32)


def test_shards_written_by_several_processes_hold_the_same_rows(source, tmp_path):
    prepare(source, tmp_path / "one")
    prepare(source, tmp_path / "two", "--num_proc", "2")
    one, _, _ = load_image_datasets(dataset_name=str(tmp_path / "one"))
    two, _, _ = load_image_datasets(dataset_name=str(tmp_path / "two"))
    assert one["label"] == two["label"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one["image"], two["image"]))
