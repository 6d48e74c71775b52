"""Evaluation: checkpoint -> classifier (`classifier`), labelled splits, frozen features, the linear probe,
kNN and top-k accuracy (`classification`, with a metric module for `evaluate` in `metrics/`)."""
