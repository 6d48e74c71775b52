"""kNN on toy problems, the shipped top-k metric, and scripts/knn_eval.py end to end."""

import json
import math
from pathlib import Path

import pytest
import torch

from hf_mae.cli.knn_eval import main as knn_main
from hf_mae.cli.knn_eval import parse_args as parse_knn_args
from hf_mae.evaluation.classification import ACCURACY_TOPK_PATH, topk_accuracy
from hf_mae.evaluation.knn import knn_accuracy, knn_predict


def test_knn_on_clusters():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=generator) * 5
    labels = torch.arange(4).repeat_interleave(30)
    train = centres[labels] + torch.randn(120, 16, generator=generator)
    query_labels = torch.arange(4).repeat(5)
    queries = centres[query_labels] + torch.randn(20, 16, generator=generator)
    assert knn_accuracy(train, labels, queries, query_labels, num_classes=4) == 100.0
    # cosine: scaling a feature changes nothing
    assert knn_accuracy(train * 7, labels, queries * 0.1, query_labels, num_classes=4) == 100.0


def test_temperature_weighting_lets_a_close_neighbour_outvote_two_far_ones():
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]])  # cosine 1.0 to the query vs 0.6
    labels = torch.tensor([1, 0, 0])
    query = torch.tensor([[1.0, 0.0]])
    sharp = knn_predict(train, labels, query, num_classes=2, k=3, temperature=0.07)
    flat = knn_predict(train, labels, query, num_classes=2, k=3, temperature=100.0)
    assert sharp.argmax(1).item() == 1 and flat.argmax(1).item() == 0
    assert sharp[0, 1].item() == pytest.approx(math.exp(1 / 0.07), rel=1e-5)
    assert sharp[0, 0].item() == pytest.approx(2 * math.exp(0.6 / 0.07), rel=1e-5)
    # k larger than the training set uses every training feature
    assert knn_predict(train, labels, query, num_classes=2, k=50).shape == (1, 2)


def test_topk_metric_loads_by_path_offline():
    import evaluate

    metric = evaluate.load(ACCURACY_TOPK_PATH)
    scores = [[0.1, 0.2, 0.7, 0.0, 0.0, 0.0], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]]
    result = metric.compute(predictions=scores, references=[2, 1, 0])
    assert result == {"top1": pytest.approx(100 / 3), "top5": pytest.approx(200 / 3)}
    # fewer than 5 classes: top-5 counts everything; ties go to the lower class index (as argmax)
    assert topk_accuracy(torch.tensor([[1.0, 1.0], [0.0, 2.0]]), torch.tensor([0, 0])) == {"top1": 50.0, "top5": 100.0}
    with pytest.raises(ValueError, match="class indices"):
        metric.compute(predictions=[[0.1, 0.9]], references=[2])


@pytest.fixture
def root(two_class_root) -> Path:
    return two_class_root  # train 16 + val 8 per class and an `encoder`, shared read-only


@pytest.mark.parametrize("baseline", [None, "--raw_pixels", "--random_init"])
def test_knn_eval_writes_results(root, tmp_path, baseline):
    argv = ["--model", str(root / "encoder"), "--train_dir", str(root / "train"), "--eval_dir", str(root / "val"),
            "--output_dir", str(tmp_path / "knn"), "--num_workers", "0", "--k", "5", "--pooling", "mean"]
    results = knn_main(parse_knn_args(argv + ([baseline] if baseline else [])))
    saved = json.loads((tmp_path / "knn" / "results.json").read_text())
    assert saved["knn_top1"] == results["knn_top1"] and saved["k"] == 5 and saved["temperature"] == 0.07
    assert saved["num_train"] == 32 and saved["num_eval"] == 16 and saved["num_labels"] == 2
    if baseline == "--raw_pixels":
        assert saved["features"] == "raw_pixels" and saved["feature_dim"] == 768
        assert saved["knn_top1"] == 100.0  # the two classes are far apart in pixel space
    else:
        assert saved["feature_dim"] == 32 and saved["pooling"] == "mean"
        assert saved["features"] == ("random_init" if baseline else "pretrained")
