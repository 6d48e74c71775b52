"""transformers' Trainer with hf_mae models, datasets and the processor, as run_mae.py and
run_image_classification.py use them."""

import datasets
import numpy as np
import torch
from conftest import tiny_config, two_class_picture
from transformers import Trainer, TrainingArguments

from hf_mae import MAEForImageClassification, MAEForPreTraining, MAEImageProcessor


def training_args(tmp_path, **overrides) -> TrainingArguments:
    fields = dict(output_dir=str(tmp_path / "out"), use_cpu=True, report_to=[], per_device_train_batch_size=8,
                  per_device_eval_batch_size=8, learning_rate=3e-3, logging_steps=1, save_strategy="no",
                  disable_tqdm=True, seed=0)
    return TrainingArguments(**{**fields, **overrides})


def picture_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    labels = [i % 2 for i in range(count)]
    images = [two_class_picture(label, seed + i, size=20) for i, label in enumerate(labels)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["left", "top"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def with_processor(dataset: datasets.Dataset, processor) -> datasets.Dataset:
    """The scripts' on-the-fly transform: images -> pixel_values (and label -> labels)."""
    def transform(batch):
        out = {"pixel_values": list(processor(batch["image"], return_tensors="pt")["pixel_values"])}
        if "label" in batch:
            out["labels"] = batch["label"]
        return out
    return dataset.with_transform(transform)


def collate(examples):
    batch = {"pixel_values": torch.stack([e["pixel_values"] for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch


def test_evaluate_reports_the_same_eval_loss_on_every_call(tmp_path):
    model = MAEForPreTraining(tiny_config())
    eval_dataset = datasets.Dataset.from_dict({"pixel_values": torch.randn(12, 3, 16, 16).numpy()})
    trainer = Trainer(model=model, args=training_args(tmp_path), eval_dataset=eval_dataset.with_format("torch"))
    first, second = trainer.evaluate(), trainer.evaluate()
    assert np.isfinite(first["eval_loss"]) and first["eval_loss"] > 0
    assert first["eval_loss"] == second["eval_loss"]  # fixed eval masks (config.eval_mask_seed)
    model.config.eval_mask_seed = 7
    assert trainer.evaluate()["eval_loss"] != first["eval_loss"]  # the seed chooses the masks


def test_pretraining_with_trainer_datasets_and_the_processor(tmp_path):
    config = tiny_config()
    processor = MAEImageProcessor.for_config(config, crop_pct=1.0)
    train = with_processor(picture_dataset(32), processor)
    evaluation = with_processor(picture_dataset(16, seed=100).remove_columns("label"), processor)
    model = MAEForPreTraining(config)
    args = training_args(tmp_path, max_steps=12, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, data_collator=collate)
    before = trainer.evaluate()["eval_loss"]
    result = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert result.global_step == 12 and np.isfinite(result.training_loss)
    assert after < before, (before, after)  # the same masks before and after: a fair comparison


def test_image_classification_with_trainer_datasets_and_the_processor(tmp_path):
    config = tiny_config(classifier_head="finetune", num_labels=2, id2label={0: "left", 1: "top"},
                         label2id={"left": 0, "top": 1})
    processor = MAEImageProcessor.for_config(config, crop_pct=1.0)
    train = with_processor(picture_dataset(48), processor)
    evaluation = with_processor(picture_dataset(32, seed=500), processor)
    model = MAEForImageClassification(config)

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    args = training_args(tmp_path, max_steps=30, remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, data_collator=collate,
                      compute_metrics=accuracy)
    trainer.train()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_accuracy"] >= 0.8, metrics
