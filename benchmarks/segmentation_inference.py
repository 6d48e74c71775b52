"""Does a saved segmenter give its users the predictions its results.json scored? mIoU on the held-out digit scenes
three ways: the model's own forward on the program's eval transform (what scripts/segment.py scored), UperNet's
whole-image forward (no window), and `pipeline("image-segmentation")` on the raw images (what a user runs).

    python benchmarks/segmentation_inference.py --model outputs/segment
"""

import argparse

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSemanticSegmentation, UperNetForSemanticSegmentation, pipeline

import hf_mae  # noqa: F401  (registers the segmenter with the Auto classes)
from hf_mae import MAEImageProcessor
from hf_mae.data.segmentation import PairedEvalTransform, SegmentationTransformFn, load_segmentation_datasets
from hf_mae.evaluation.metrics.mean_iou import confusion_matrix, scores_from_confusion


def mask_map(masks: list[dict], label2id: dict, shape: tuple[int, int]) -> np.ndarray:
    """The pipeline's per-class masks back to one map of class ids."""
    predicted = np.zeros(shape, dtype=np.int64)
    for mask in masks:
        predicted[np.asarray(mask["mask"]) > 0] = label2id[mask["label"]]
    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a scripts/segment.py output folder")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="score only the first N held-out scenes")
    args = parser.parse_args()

    model = AutoModelForSemanticSegmentation.from_pretrained(args.model).eval()
    processor = MAEImageProcessor.from_pretrained(args.model)
    segmenter = pipeline("image-segmentation", model=args.model)
    evaluation = load_segmentation_datasets().evaluation
    if args.max_eval_samples:
        evaluation = evaluation.select(range(min(args.max_eval_samples, len(evaluation))))
    num_labels = model.config.num_labels
    fn = SegmentationTransformFn(PairedEvalTransform(processor.image_mean, processor.image_std),
                                 len(processor.image_mean), num_labels)
    confusion = {name: np.zeros((num_labels, num_labels), dtype=np.int64) for name in ("model", "whole", "pipeline")}
    with torch.no_grad():
        for index in tqdm(range(len(evaluation)), desc="held-out scenes"):
            item = {k: v[0] for k, v in fn(evaluation[[index]], [index]).items()}
            pixels, labels = item["pixel_values"][None], item["labels"].numpy()
            predictions = {
                "model": model(pixel_values=pixels).logits.argmax(1)[0].numpy(),
                "whole": UperNetForSemanticSegmentation.forward(model, pixel_values=pixels).logits.argmax(1)[0].numpy(),
                "pipeline": mask_map(segmenter(evaluation[index]["image"]), model.config.label2id, labels.shape),
            }
            for name, predicted in predictions.items():
                confusion[name] += confusion_matrix(predicted, labels, num_labels)
    print(f"{args.model}: inference_mode {model.config.inference_mode}, window {model.config.inference_window}")
    print("| inference | mIoU | pixel accuracy |\n|---|---|---|")
    for name, counts in confusion.items():
        scores = scores_from_confusion(counts)
        print(f"| {name} | {scores['mean_iou']:.2f} | {scores['pixel_accuracy']:.2f} |")


if __name__ == "__main__":
    main()
