"""Training DataLoaders whose randomness is a function of (seed, epoch, sample), not of a running stream.

A map-style dataset is shuffled per epoch from (seed, epoch), and every sample is transformed with the torch
RNG seeded from (seed, epoch, index): the crops, flips and augmentations a sample gets do not depend on the
number of DataLoader workers or processes, nor on what ran before. A run resumed in the middle of an epoch
therefore sees exactly the batches the uninterrupted run saw. The epoch reaches the workers (persistent ones
included) inside each index: the sampler yields `epoch * len(dataset) + index`.

    transform = TrainTransform(224, output="uint8")
    loader = train_dataloader(train_data, make_transform_fn(transform), batch_size=64, num_workers=8, seed=0)
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # on a loader prepared by Accelerate: loader.set_epoch(epoch)
        for batch in loader: ...                # on the device: batch = transform.normalizer()(batch)

Streaming (iterable) datasets have no indices: they keep the workers' torch RNG streams.
"""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .decoding import TransformFn, apply_transform, collate, prepare_columns


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers by NumPy's SeedSequence: neighbouring inputs give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seeded_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by `mixed_seed(*parts)`: a random stream named by what it is for."""
    return torch.Generator().manual_seed(mixed_seed(*parts))


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation of range(size) each epoch, drawn from (seed, epoch), yielded as `epoch * size + i`
    so the epoch travels with each index to `EpochSeededDataset` (in whatever process loads it)."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=seeded_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.size)
        return iter((order + self.epoch * self.size).tolist())


class EpochSeededDataset(torch.utils.data.Dataset):
    """A map-style `datasets.Dataset` transformed by a `TransformFn`, each sample under the torch RNG seeded
    from (seed, epoch, index). Keys are `epoch * len(self) + index` (from `EpochShuffleSampler`); a plain
    index is epoch 0. Items are `{"pixel_values": tensor or None, "labels": ...}` for `collate`."""

    def __init__(self, dataset: datasets.Dataset, fn: TransformFn, seed: int = 0):
        self.dataset, self.fn, self.seed = prepare_columns(dataset), fn, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list[int]) -> list[dict]:
        epochs, indices = zip(*(divmod(int(key), len(self)) for key in keys))
        seeds = [mixed_seed(self.seed, epoch, index) for epoch, index in zip(epochs, indices)]
        batch = self.fn(self.dataset[list(indices)], list(indices), seeds=seeds)
        return [{name: values[i] for name, values in batch.items()} for i in range(len(keys))]

    def __getitem__(self, key: int) -> dict:
        return self.__getitems__([key])[0]


def train_dataloader(dataset, fn: TransformFn, batch_size: int, num_workers: int = 0, seed: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """Shuffled training batches (incomplete last batch dropped) of `fn`-transformed images, for `collate`.

    Map-style data: `EpochShuffleSampler` + `EpochSeededDataset` (see the module docstring); call
    `loader.sampler.set_epoch(epoch)` (Accelerate's prepared loader: `loader.set_epoch(epoch)`) before each
    epoch. Streaming data: in stream order, the workers' RNG streams.
    Workers persist across epochs. `pin_memory=True` (training on a GPU) puts each batch in page-locked memory,
    from which the copy to the device can run asynchronously (Accelerate's `non_blocking`)."""
    if isinstance(dataset, datasets.IterableDataset):
        return DataLoader(apply_transform(dataset, fn), batch_size=batch_size, drop_last=True,
                          num_workers=num_workers, collate_fn=collate, persistent_workers=num_workers > 0,
                          pin_memory=pin_memory)
    seeded = EpochSeededDataset(dataset, fn, seed)
    # A generator of its own for the workers' base seed: starting an epoch draws nothing from the global RNG,
    # whose stream (dropout, drop path) then continues alike in a resumed run and in the uninterrupted one.
    return DataLoader(seeded, batch_size=batch_size, sampler=EpochShuffleSampler(len(seeded), seed), drop_last=True,
                      num_workers=num_workers, collate_fn=collate, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory)
