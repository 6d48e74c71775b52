"""transformers' example programs on an hf_mae folder, unchanged: the flow of `run_image_classification.py` and
`run_mae.py` (Auto classes, transforms sized from `image_processor.size`, Trainer). torchvision is not a
dependency, so the examples' torchvision transforms are written here with PIL, step for step."""

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, two_class_picture
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    Trainer,
    TrainingArguments,
)

from hf_mae import MAEConfig, MAEForImageClassification, MAEForPreTraining, MAEImageProcessor


@pytest.fixture
def pretrained_folder(tmp_path):
    """A tiny folder as the pretraining program saves it (model + `MAEImageProcessor.for_config`)."""
    config = MAEConfig(**TINY)
    MAEForPreTraining(config).save_pretrained(tmp_path / "pretrained")
    MAEImageProcessor.for_config(config).save_pretrained(tmp_path / "pretrained")
    return tmp_path / "pretrained"


def _example_size(image_processor):
    """What both example programs read as the training resolution."""
    if "shortest_edge" in image_processor.size:
        return image_processor.size["shortest_edge"], image_processor.size["shortest_edge"]
    return image_processor.size["height"], image_processor.size["width"]


def _to_normalized_tensor(image, image_processor):
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor(image_processor.image_mean).view(-1, 1, 1)
    return (array - mean) / torch.tensor(image_processor.image_std).view(-1, 1, 1)


def _random_resized_crop(image, size, rng):
    width, height = image.size
    side = rng.randint(max(1, min(width, height) // 2), min(width, height))
    left, top = rng.randint(0, width - side), rng.randint(0, height - side)
    return image.crop((left, top, left + side, top + side)).resize((size[1], size[0]), Image.BICUBIC)


def _resize_center_crop(image, size):
    width, height = image.size
    scale = min(size) / min(width, height)
    image = image.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
    left, top = (image.size[0] - size[1]) // 2, (image.size[1] - size[0]) // 2
    return image.crop((left, top, left + size[1], top + size[0]))


class _Pictures(torch.utils.data.Dataset):
    def __init__(self, transform, count=16):
        self.items = [(two_class_picture(i % 2, seed=i, size=24), i % 2) for i in range(count)]
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        image, label = self.items[index]
        return {"pixel_values": self.transform(image), "labels": label}


def _collate(examples, with_labels=True):
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if with_labels:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch


def _args(tmp_path, **overrides):
    return TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_train_epochs=1,
                             report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False,
                             dataloader_num_workers=0, **overrides)


def test_processor_size_is_the_model_input_and_the_resize_keeps_crop_pct(pretrained_folder):
    image_processor = AutoImageProcessor.from_pretrained(pretrained_folder)
    assert _example_size(image_processor) == (16, 16)
    assert image_processor(Image.new("RGB", (40, 30)), return_tensors="pt").pixel_values.shape == (1, 3, 16, 16)
    assert image_processor.crop_pct == 0.875  # resize 16 / 0.875 -> 18, crop 16: "resize 256, crop 224" at 16 px


def test_old_saved_processor_keeps_its_preprocessing(tmp_path):
    """A processor saved with the resize edge as `size` (no crop_pct) loads to the same pixels."""
    saved = MAEImageProcessor().to_dict()
    saved.update(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}, do_convert_rgb=False)
    saved.pop("crop_pct")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(saved))
    old = AutoImageProcessor.from_pretrained(tmp_path)
    assert old.size == {"shortest_edge": 16} and old.crop_pct == pytest.approx(0.8) and old.do_convert_rgb is None
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 4), dtype=np.uint8), "RGBA")
    resize_20_crop_16 = MAEImageProcessor(size={"shortest_edge": 20}, crop_pct=None,
                                          crop_size={"height": 16, "width": 16})
    expected = resize_20_crop_16(picture, return_tensors="np").pixel_values
    got = old(picture, return_tensors="np").pixel_values
    assert got.shape == (1, 3, 16, 16) and np.array_equal(got, expected)  # RGBA still composited to RGB


def test_run_image_classification_flow(pretrained_folder, tmp_path):
    labels = ["a_left", "b_top"]
    config = AutoConfig.from_pretrained(pretrained_folder, num_labels=len(labels),
                                        finetuning_task="image-classification",
                                        label2id={n: i for i, n in enumerate(labels)},
                                        id2label={i: n for i, n in enumerate(labels)})
    model = AutoModelForImageClassification.from_pretrained(pretrained_folder, config=config,
                                                            ignore_mismatched_sizes=True)
    assert isinstance(model, MAEForImageClassification)
    image_processor = AutoImageProcessor.from_pretrained(pretrained_folder)
    size, rng = _example_size(image_processor), random.Random(0)
    train = _Pictures(lambda image: _to_normalized_tensor(_random_resized_crop(image, size, rng), image_processor))
    val = _Pictures(lambda image: _to_normalized_tensor(_resize_center_crop(image, size), image_processor), 8)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape),
                                    with_kwargs=True)
    trainer = Trainer(model=model, args=_args(tmp_path, learning_rate=1e-2), train_dataset=train, eval_dataset=val,
                      processing_class=image_processor, data_collator=_collate)
    trainer.train()
    metrics = trainer.evaluate()
    assert np.isfinite(metrics["eval_loss"])
    assert seen and all(tuple(shape[-2:]) == (16, 16) for shape in seen)  # the model's resolution


def test_run_mae_flow(pretrained_folder, tmp_path):
    config = AutoConfig.from_pretrained(pretrained_folder)
    config.update({"mask_ratio": 0.75, "norm_pix_loss": True})
    model = AutoModelForPreTraining.from_pretrained(pretrained_folder, config=config)
    image_processor = AutoImageProcessor.from_pretrained(pretrained_folder)
    size, rng = _example_size(image_processor), random.Random(0)
    train = _Pictures(lambda image: _to_normalized_tensor(_random_resized_crop(image, size, rng), image_processor))
    before = model.decoder_pred.weight.detach().clone()
    trainer = Trainer(model=model, args=_args(tmp_path, learning_rate=1e-3), train_dataset=train,
                      processing_class=image_processor, data_collator=lambda e: _collate(e, with_labels=False))
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    assert not torch.equal(before, model.decoder_pred.weight.detach())


def test_problem_types_and_mixup_targets():
    torch.manual_seed(0)
    model = MAEForImageClassification(MAEConfig(**TINY, num_labels=3, classifier_head="finetune")).train()
    pixels = torch.randn(4, 3, 16, 16)
    soft = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float() * 0.8 + 0.2 / 3  # mixup / label smoothing targets
    out = model(pixels, labels=soft, output_hidden_states=True, output_attentions=True)
    assert torch.allclose(out.loss, -(soft * out.logits.float().log_softmax(-1)).sum(-1).mean())
    assert len(out.hidden_states) == TINY["num_hidden_layers"] + 1 and len(out.attentions) == TINY["num_hidden_layers"]
    model.config.problem_type = "multi_label_classification"
    multi_hot = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    out = model(pixels, labels=multi_hot)
    assert torch.allclose(out.loss, F.binary_cross_entropy_with_logits(out.logits.float(), multi_hot))
    regression = MAEForImageClassification(MAEConfig(**TINY, num_labels=1, classifier_head="finetune"))
    targets = torch.tensor([0.5, -1.0, 2.0, 0.0])
    out = regression(pixels, labels=targets)
    assert torch.allclose(out.loss, F.mse_loss(out.logits.squeeze(-1), targets))
    out.loss.backward()
    unused = [n for n, p in regression.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # no trainable parameter goes without a gradient (DDP without find_unused_parameters)
