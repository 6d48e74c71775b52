"""Weights are loaded completely or refused, wherever they enter; labels get one vocabulary per dataset.

Inputs the other tests do not use: a config.json edited after saving, tensors renamed or removed from the
safetensors file, NaN weights, and label layouts (strings seen only in evaluation, floats, None, negatives,
ids beyond the training classes).
"""

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file

from hf_mae import MAEForImageClassification, MAEForPreTraining, MAEImageProcessor, MAEModel
from hf_mae.convert import load_any
from hf_mae.convert.names import ConversionError
from hf_mae.evaluation.classifier import load_classifier
from hf_mae.export.wrappers import load_model
from hf_mae.models.loading import load_weights
from hf_mae.models.mae.backbone_mae import MAEBackbone


def save_encoder(folder: Path, model_class=MAEModel) -> Path:
    torch.manual_seed(0)
    model = MAEForPreTraining(tiny_config()) if model_class is MAEForPreTraining else MAEModel(tiny_config())
    model.save_pretrained(folder)
    MAEImageProcessor.for_config(model.config).save_pretrained(folder)
    return folder


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config = {key: value for key, value in config.items() if key not in ("out_features", "out_indices", "stage_names")}
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def edit_weights(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def rename(tensors, old, new):
    tensors[new] = tensors.pop(old)


BROKEN = {
    "wider config": lambda f: edit_config(f, intermediate_size=2 * tiny_config().intermediate_size),
    "deeper config": lambda f: edit_config(f, num_hidden_layers=tiny_config().num_hidden_layers + 1),
    "shallower config": lambda f: edit_config(f, num_hidden_layers=1),
    "renamed tensor": lambda f: edit_weights(f, lambda t: rename(t, "blocks.0.attn.qkv.weight", "blocks.0.qkv.w")),
    "missing tensor": lambda f: edit_weights(f, lambda t: t.pop("norm.weight")),
    "NaN weights": lambda f: edit_weights(f, lambda t: t["blocks.1.mlp.fc1.weight"].fill_(float("nan"))),
}
NAMED = {"wider config": "mlp.fc1", "deeper config": "blocks.2", "shallower config": "blocks.1",
         "renamed tensor": "attn.qkv.weight", "missing tensor": "norm.weight", "NaN weights": "NaN or inf"}


@pytest.fixture(params=sorted(BROKEN))
def broken(request, tmp_path):
    folder = save_encoder(tmp_path / "enc")
    BROKEN[request.param](folder)
    return folder, NAMED[request.param]


@pytest.mark.parametrize("entry", ["classifier", "export", "backbone", "weights"])
def test_every_entry_refuses_an_encoder_that_does_not_fit(broken, entry):
    folder, named = broken
    load = {"classifier": lambda: load_classifier(str(folder), classifier_head="linear_probe", num_labels=3),
            "export": lambda: load_model(str(folder)),
            "backbone": lambda: MAEBackbone.from_pretrained(str(folder)),
            "weights": lambda: load_weights(MAEModel, str(folder))}[entry]
    with pytest.raises(ValueError, match="do not fit") as info:
        load()
    assert named in str(info.value)


def test_the_new_head_alone_is_allowed_and_said(tmp_path):
    folder = save_encoder(tmp_path / "pre", MAEForPreTraining)
    model, _, note = load_classifier(str(folder), classifier_head="finetune", num_labels=4)
    assert "new head" in note and "decoder tensors dropped" in note
    reference = MAEForPreTraining.from_pretrained(folder).encoder
    torch.testing.assert_close(model.encoder.state_dict(), reference.state_dict())
    _, info = load_weights(MAEForImageClassification, str(folder), config=model.config, new_head=True)
    assert sorted(info["new_keys"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    with pytest.raises(ValueError, match="head.weight"):  # without new_head the head must be in the folder
        load_weights(MAEForImageClassification, str(folder), config=model.config)


def test_backbone_loads_a_complete_encoder(tmp_path):
    folder = save_encoder(tmp_path / "enc")
    backbone = MAEBackbone.from_pretrained(str(folder))
    torch.testing.assert_close(backbone.encoder.state_dict(), MAEModel.from_pretrained(folder).state_dict())


def test_conversion_refuses_nan_weights(tmp_path):
    state = MAEModel(tiny_config()).state_dict()
    state["patch_embed.proj.weight"] = torch.full_like(state["patch_embed.proj.weight"], float("inf"))
    with pytest.raises(ConversionError, match="NaN or inf.*patch_embed.proj.weight"):
        load_any(state, config=tiny_config())


def test_stock_vit_folder_refuses_a_broken_encoder(tmp_path):
    from hf_mae.hub.folders import build_encoder_folder

    checkpoint = tmp_path / "run"
    save_encoder(checkpoint, MAEForPreTraining)
    save_encoder(checkpoint / "encoder")
    edit_weights(checkpoint / "encoder", lambda t: t.pop("blocks.0.norm1.weight"))
    with pytest.raises(ValueError, match="blocks.0.norm1.weight"):
        build_encoder_folder(checkpoint, tmp_path / "out", format="vit")


# ----------------------------------------------------------------------------------------------------------
# labels: one vocabulary per dataset
# ----------------------------------------------------------------------------------------------------------
def write_parquet(folder: Path, split_labels: dict, feature=None) -> dict:
    """One parquet file per split of 1x1 PNGs with the given labels; returns the data_files dict."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    image = {"bytes": buffer.getvalue(), "path": None}
    files = {}
    for split, labels in split_labels.items():
        features = datasets.Features({"image": datasets.Image(), "label": feature or datasets.Value(
            "string" if any(isinstance(v, str) for v in labels) else
            "float64" if any(isinstance(v, float) for v in labels) else "int64")})
        path = folder / f"{split}.parquet"
        datasets.Dataset.from_dict({"image": [image] * len(labels), "label": labels}, features=features) \
            .to_parquet(path)
        files[split] = str(path)
    return files


def load(tmp_path, split_labels, feature=None):
    from hf_mae.data.sources import load_image_datasets

    return load_image_datasets(data_files=write_parquet(tmp_path, split_labels, feature),
                               cache_dir=str(tmp_path / "cache"))


def test_string_labels_share_the_training_vocabulary(tmp_path):
    train, evaluation, info = load(tmp_path, {"train": ["cat", "dog", "fox", "dog"],
                                              "validation": ["fox", "cat"]})
    assert info.label_names == ["cat", "dog", "fox"] and info.num_labels == 3
    assert evaluation["label"] == [2, 0]  # "fox" stays fox, not the validation split's own id 1
    assert train["label"] == [0, 1, 2, 1]


@pytest.mark.parametrize("layout, split, row", [
    ({"train": ["cat", "dog"], "validation": ["cat", "fox"]}, "validation", 1),  # a class seen only in evaluation
    ({"train": [0, 1, 2], "validation": [1, 3]}, "validation", 1),  # an id beyond the training classes
    ({"train": [0, -1, 2], "validation": [1]}, "train", 1),  # negative
    ({"train": [0, None, 1], "validation": [1]}, "train", 1),  # None
    ({"train": [0.0, 1.5], "validation": [1.0]}, "train", 0),  # floats are no class ids
    ({"train": ["a", None], "validation": ["a"]}, "train", 1),  # a missing name
])
def test_labels_outside_the_vocabulary_are_named_with_split_and_row(tmp_path, layout, split, row):
    from hf_mae.data.labels import LabelError

    with pytest.raises(LabelError, match=rf"The {split} split's label in row {row} is"):
        load(tmp_path, layout)


def test_class_label_features_are_checked_too(tmp_path):
    from hf_mae.data.labels import LabelError

    names = datasets.ClassLabel(names=["a", "b"])
    train, evaluation, info = load(tmp_path, {"train": [0, 1], "validation": [1]}, feature=names)
    assert info.label_names == ["a", "b"] and evaluation["label"] == [1]
    with pytest.raises(LabelError, match="row 2 is -1"):  # -1, datasets' "no label", is no class
        load(tmp_path / "unlabelled", {"train": [0, 1, -1], "validation": [1]}, feature=names)


def test_held_out_class_label_with_other_names_is_realigned(tmp_path):
    from hf_mae.data.labels import encode_labels

    image = datasets.Image()
    train = datasets.Dataset.from_dict({"image": [None] * 3, "label": [0, 1, 2]}, features=datasets.Features(
        {"image": image, "label": datasets.ClassLabel(names=["cat", "dog", "fox"])}))
    held_out = datasets.Dataset.from_dict({"image": [None] * 2, "label": [1, 0]}, features=datasets.Features(
        {"image": image, "label": datasets.ClassLabel(names=["cat", "fox"])}))
    _, held_out, names, count = encode_labels(train, held_out, train_split="train", eval_split="validation")
    assert names == ["cat", "dog", "fox"] and count == 3 and held_out["label"] == [2, 0]
