"""Training loaders whose randomness is a function of (seed, epoch, sample)."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_mae.data.decoding import make_transform_fn
from hf_mae.data.train_loader import EpochSeededDataset, EpochShuffleSampler, mixed_seed, train_dataloader
from hf_mae.data.transforms import TrainTransform


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(24)]
    return datasets.Dataset.from_dict({"image": pictures, "label": list(range(24))},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.Value("int64")}))


def transform_fn():
    return make_transform_fn(TrainTransform(16, scale=(0.1, 1.0), output="float"))


def epoch_batches(loader, epoch):
    loader.sampler.set_epoch(epoch)
    return [(batch["pixel_values"], batch["labels"]) for batch in loader]


def test_batches_do_not_depend_on_the_number_of_workers(images):
    serial = epoch_batches(train_dataloader(images, transform_fn(), 4, num_workers=0, seed=1), 3)
    parallel = epoch_batches(train_dataloader(images, transform_fn(), 4, num_workers=2, seed=1), 3)
    assert len(serial) == len(parallel) == 6
    for (pixels_a, labels_a), (pixels_b, labels_b) in zip(serial, parallel):
        assert torch.equal(labels_a, labels_b) and torch.equal(pixels_a, pixels_b)


def test_epochs_and_seeds_give_new_orders_and_crops(images):
    loader = train_dataloader(images, transform_fn(), 24, seed=1)
    (pixels_0, labels_0), = epoch_batches(loader, 0)
    (pixels_1, labels_1), = epoch_batches(loader, 1)
    assert sorted(labels_0.tolist()) == sorted(labels_1.tolist()) == list(range(24))  # every image once
    assert not torch.equal(labels_0, labels_1)
    by_label_0 = pixels_0[labels_0.argsort()]
    by_label_1 = pixels_1[labels_1.argsort()]
    assert not torch.equal(by_label_0, by_label_1)  # the same images, cropped anew
    (again, labels_again), = epoch_batches(loader, 0)
    assert torch.equal(labels_again, labels_0) and torch.equal(again, pixels_0)  # epoch 0 again: the same
    (other_seed, _), = epoch_batches(train_dataloader(images, transform_fn(), 24, seed=2), 0)
    assert not torch.equal(other_seed, pixels_0)


def test_a_sample_is_the_same_wherever_it_falls(images):
    """A sample's crop depends on (seed, epoch, index) only: not on its batch, its neighbours or the caller's RNG."""
    dataset = EpochSeededDataset(images, transform_fn(), seed=5)
    key = 2 * len(dataset) + 7  # epoch 2, image 7
    alone = dataset[key]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    among_others = dataset.__getitems__([key - 3, key, key + 4])[1]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG stream is untouched
    assert torch.equal(alone["pixel_values"], among_others["pixel_values"]) and alone["labels"] == 7
    assert not torch.equal(dataset[7]["pixel_values"], alone["pixel_values"])  # epoch 0, same image


def test_sampler_keys_carry_the_epoch():
    sampler = EpochShuffleSampler(5, seed=0)
    sampler.set_epoch(3)
    keys = list(sampler)
    assert len(sampler) == 5 and sorted(keys) == [15, 16, 17, 18, 19]
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_mixed_seeds_separate_neighbouring_inputs():
    seeds = {mixed_seed(0, epoch, index) for epoch in range(3) for index in range(100)}
    assert len(seeds) == 300 and all(0 <= seed < 2**63 for seed in seeds)
    assert mixed_seed(1, 2) == mixed_seed(1, 2) != mixed_seed(2, 1)


def test_streaming_data_keeps_a_plain_loader(images):
    stream = images.to_iterable_dataset()
    batches = list(train_dataloader(stream, transform_fn(), 8))
    assert [len(batch["pixel_values"]) for batch in batches] == [8, 8, 8]
