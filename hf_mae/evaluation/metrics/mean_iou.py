"""Mean IoU, per-class IoU and pixel accuracy (percent) of semantic segmentation maps: an `evaluate` metric
shipped with hf_mae, loaded by path so it works offline::

    import evaluate
    from hf_mae.evaluation.segmentation import MEAN_IOU_PATH
    metric = evaluate.load(MEAN_IOU_PATH)
    metric.add_batch(predictions=predicted_maps, references=label_maps)   # (B, H, W) class ids each
    metric.compute(num_labels=11, ignore_index=255)   # {"mean_iou": ..., "pixel_accuracy": ..., "per_class_iou": [...]}

mmsegmentation's definitions: one confusion matrix over all pixels of the split (pixels labelled
`ignore_index` left out); IoU of class c = TP / (TP + FP + FN); classes absent from both the labels and the
predictions have no IoU (None) and are left out of the mean; pixel accuracy = correct / labelled pixels.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Mean intersection-over-union, per-class IoU and pixel accuracy in percent over a whole split
(one confusion matrix over every labelled pixel), the numbers ADE20K papers report."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of 2-D int arrays): predicted class id per pixel.
    references (list of 2-D int arrays): true class id per pixel, same shapes; `ignore_index` pixels are skipped.
    num_labels (int): number of classes.
    ignore_index (int, optional): label of pixels that count nowhere, default 255.
Returns:
    dict: "mean_iou", "pixel_accuracy" (float, percent), "per_class_iou" (list of float or None, percent).
Examples:
    >>> metric = evaluate.load("hf_mae/evaluation/metrics/mean_iou.py")
    >>> metric.compute(predictions=[[[0, 1], [1, 1]]], references=[[[0, 1], [0, 255]]], num_labels=2)
    {'mean_iou': 50.0, 'pixel_accuracy': 66.66666666666667, 'per_class_iou': [50.0, 50.0]}
"""


def confusion_matrix(predictions: np.ndarray, references: np.ndarray, num_labels: int,
                     ignore_index: int = 255) -> np.ndarray:
    """(num_labels, num_labels) counts, rows the true class, columns the predicted one."""
    predictions, references = np.asarray(predictions).ravel(), np.asarray(references).ravel()
    if predictions.shape != references.shape:
        raise ValueError(f"predictions ({predictions.size} pixels) and references ({references.size}) differ")
    keep = references != ignore_index
    predictions, references = predictions[keep].astype(np.int64), references[keep].astype(np.int64)
    for name, values in (("references", references), ("predictions", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_labels):
            raise ValueError(f"{name} hold class ids outside [0, {num_labels}): [{values.min()}, {values.max()}]")
    counts = np.bincount(references * num_labels + predictions, minlength=num_labels * num_labels)
    return counts.reshape(num_labels, num_labels)


def scores_from_confusion(confusion: np.ndarray) -> dict:
    """mean_iou / pixel_accuracy / per_class_iou (percent; None for a class in neither labels nor predictions)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.sum() == 0:
        raise ValueError("no labelled pixel to score (every reference pixel is the ignore index)")
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    per_class = [float(100.0 * h / u) if u > 0 else None for h, u in zip(hits, union)]
    present = [v for v in per_class if v is not None]
    return {"mean_iou": float(np.mean(present)), "pixel_accuracy": float(100.0 * hits.sum() / confusion.sum()),
            "per_class_iou": per_class}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
            }),
        )

    def _compute(self, predictions, references, num_labels, ignore_index=255):
        if len(predictions) == 0:
            raise ValueError("no segmentation maps to score")
        confusion = sum(confusion_matrix(p, r, num_labels, ignore_index) for p, r in zip(predictions, references))
        return scores_from_confusion(confusion)
