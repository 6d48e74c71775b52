"""One label vocabulary per dataset: the training split's class names (or its ClassLabel), every split checked
against it and encoded with it, before anything trains."""

from __future__ import annotations

import datasets

STRING_TYPES = ("string", "large_string")


class LabelError(ValueError):
    """A label that is not a class id or name of the dataset's vocabulary; the message names split and row."""


def _values(dataset) -> list:
    return dataset.data.column("label").to_pylist() if dataset._indices is None else dataset["label"]


def _kind(feature) -> str | None:
    """'names' (ClassLabel), 'strings', 'ints', 'other' (floats, bools...) or None (not a class label: a map)."""
    if isinstance(feature, datasets.ClassLabel):
        return "names"
    if isinstance(feature, datasets.Value):
        if feature.dtype in STRING_TYPES:
            return "strings"
        return "ints" if feature.dtype.startswith(("int", "uint")) else "other"
    return None


def _bad_row(values: list, is_known, split: str, what: str) -> None:
    for row, value in enumerate(values):
        if not is_known(value):
            raise LabelError(f"The {split} split's label in row {row} is {value!r}: {what}. Fix the data or pass "
                             f"--label_column NAME for the column that holds the classes.")


def _vocabulary(train, train_split: str) -> tuple[list[str] | None, int]:
    feature = train.features["label"]
    kind = _kind(feature)
    values = _values(train)
    if kind == "names":
        return list(feature.names), feature.num_classes
    if kind == "strings":
        _bad_row(values, lambda v: isinstance(v, str), train_split, "not a class name")
        names = sorted(set(values))
        return names, len(names)
    _bad_row(values, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, train_split,
             f"not a class id (labels must be integers >= 0 or class names; the column is {feature.dtype})")
    return None, (max(values) + 1 if values else 0)


def _encode_split(dataset, split: str, names: list[str] | None, num_labels: int):
    """`dataset` with ids of the vocabulary; a LabelError names the first row that has none."""
    feature = dataset.features["label"]
    kind = _kind(feature)
    known = f"the training split's classes are {', '.join(names[:20])}" if names else \
        f"the training split has class ids 0..{num_labels - 1}"
    if kind == "names" and names is not None and list(feature.names) != names:
        _bad_row([feature.names[i] if i is not None and 0 <= i < len(feature.names) else i
                  for i in _values(dataset)], lambda v: v in names, split, f"not a known class ({known})")
        return dataset.align_labels_with_mapping({name: i for i, name in enumerate(names)}, "label")
    if kind == "strings":
        if names is None:
            raise LabelError(f"The {split} split has class names as labels, the training split class ids: "
                             f"give both splits the same kind of label")
        _bad_row(_values(dataset), lambda v: v in names, split, f"not a known class ({known})")
        return dataset.cast_column("label", datasets.ClassLabel(names=names))
    _bad_row(_values(dataset), lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_labels,
             split, f"not a class id of this dataset ({known}; a class seen only outside training has no id)")
    if names is not None and kind != "names":
        return dataset.cast_column("label", datasets.ClassLabel(names=names))
    return dataset


def encode_labels(train, evaluation, *, train_split: str, eval_split: str):
    """`(train, evaluation, label_names, num_labels)` with one vocabulary: the training split's ClassLabel, else its
    class names (sorted) or integer ids; the held-out split is checked and encoded with it. Labels that are not
    class ids or known names (floats, None, negatives, ids beyond the training classes, classes seen only in
    evaluation) raise LabelError naming split and row. Streams and splits without a class column (segmentation
    maps) are returned as they are, with the ClassLabel names when the features have them."""
    feature = train.features.get("label") if train.features else None
    if not isinstance(train, datasets.Dataset) or _kind(feature) is None:
        if isinstance(feature, datasets.ClassLabel):
            return train, evaluation, list(feature.names), feature.num_classes
        return train, evaluation, None, None
    names, num_labels = _vocabulary(train, train_split)
    train = _encode_split(train, train_split, names, num_labels)
    if isinstance(evaluation, datasets.Dataset) and "label" in (evaluation.column_names or []):
        evaluation = _encode_split(evaluation, eval_split, names, num_labels)
    return train, evaluation, names, num_labels
