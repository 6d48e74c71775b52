"""Labelled splits for evaluation."""

from __future__ import annotations


def labelled_splits(train_data, eval_data, info, *, eval_split: str, label_column: str | None = None):
    """Check that both splits carry labels; returns (num_labels, id2label, label2id). Clear errors else
    (`eval_split` and `label_column` as the user named them, for the messages)."""
    if eval_data is None:
        raise ValueError(f"{info.source} has no held-out split {eval_split!r}: evaluation needs one. "
                         f"Pass --eval_split NAME (or --eval_dir for an imagefolder).")
    for name, split in (("training", train_data), ("held-out", eval_data)):
        if "label" not in list(split.column_names or []):
            hint = (f"the label column {label_column!r} is missing" if label_column
                    else "no label column was found (looked for label, labels, cls, class, target)")
            raise ValueError(f"The {name} split of {info.source} has no labels: {hint}. Classification needs "
                             f"labelled data: pass --label_column NAME, or a labelled dataset.")
    if not info.num_labels:
        raise ValueError(f"Could not tell the number of classes of {info.source} (no ClassLabel feature and no "
                         f"readable integer labels).")
    names = info.label_names or [str(i) for i in range(info.num_labels)]
    id2label = {i: str(name) for i, name in enumerate(names)}
    return info.num_labels, id2label, {name: i for i, name in id2label.items()}


def limit_samples(dataset, max_samples: int | None, seed: int):
    """A random subset of `max_samples` examples (all when None): random, so sorted folders keep every class."""
    if not max_samples:
        return dataset
    if hasattr(dataset, "select"):
        return dataset if len(dataset) <= max_samples else dataset.shuffle(seed=seed).select(range(max_samples))
    return dataset.shuffle(seed=seed, buffer_size=10_000).take(max_samples)
