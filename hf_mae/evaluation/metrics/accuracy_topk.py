"""Top-1 and top-5 accuracy (percent) from per-class scores: an `evaluate` metric shipped with hf_mae.

Loaded by path, so it works offline (`evaluate.load("accuracy")` needs the Hub)::

    import evaluate
    from hf_mae.evaluation import ACCURACY_TOPK_PATH
    metric = evaluate.load(ACCURACY_TOPK_PATH)
    metric.add_batch(predictions=logits, references=labels)   # logits (B, num_classes), labels (B,)
    metric.compute()                                          # {"top1": 93.5, "top5": 99.8}

With fewer than k classes, top-k counts every example as correct (as timm's `accuracy`). Ties between
scores go to the lower class index, as `argmax` does.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Top-k classification accuracy in percent (top-1 and top-5 by default) computed from
per-class scores (logits, probabilities or kNN votes), the numbers ImageNet papers report."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of lists of float): per-class scores, one row of num_classes values per example.
    references (list of int): the true class index of each example.
    topk (tuple of int, optional): which k to report, default (1, 5); each gives a key "top{k}".
Returns:
    dict: "top{k}" (float, percent in [0, 100]) for each k.
Examples:
    >>> metric = evaluate.load("hf_mae/metrics/accuracy_topk.py")
    >>> metric.compute(predictions=[[0.1, 0.9], [0.8, 0.2]], references=[1, 1], topk=(1,))
    {'top1': 50.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyTopk(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float32")),
                "references": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, topk=(1, 5)):
        scores = np.asarray(predictions, dtype=np.float32)
        labels = np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or len(scores) != len(labels):
            raise ValueError(f"predictions must be (num_examples, num_classes) scores matching {len(labels)} "
                             f"references, got shape {scores.shape}")
        if len(labels) == 0:
            raise ValueError("no examples to compute top-k accuracy on")
        if labels.min() < 0 or labels.max() >= scores.shape[1]:
            raise ValueError(f"references must be class indices in [0, {scores.shape[1]}), got "
                             f"[{labels.min()}, {labels.max()}]")
        ranked = np.argsort(-scores, axis=1, kind="stable")  # best class first; ties: lower index first
        hits = ranked == labels[:, None]  # (N, C), one True per row
        return {f"top{k}": float(100.0 * hits[:, :min(k, scores.shape[1])].any(axis=1).mean()) for k in topk}
