"""In-memory datasets: scikit-learn's digits (shapes, split, normalization, pixel grid)."""

from __future__ import annotations

import numpy as np
import torch

from ancer_cli.data import DIGITS_MEAN, DIGITS_STD, dataset_info, load_dataset, normalization


def test_digits_shapes_range_and_split_sizes() -> None:
    test = load_dataset("digits", "test")
    train = load_dataset("digits", "train")
    assert (len(test.dataset), len(train.dataset)) == (500, 1297)
    assert test.split == "test" and train.split == "train"
    x, label = test.dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    everything = torch.stack([train.dataset[i][0] for i in range(len(train.dataset))])
    assert float(everything.min()) == 0.0 and float(everything.max()) == 1.0
    assert test.info == dataset_info("digits")
    assert test.info.input_shape == (1, 8, 8) and test.info.num_classes == 10
    assert test.info.default_arch == "cnn"


def test_digits_split_follows_the_seeded_permutation() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    test = load_dataset("digits", "test").dataset
    train = load_dataset("digits", "train").dataset
    for position in (0, 1, 499):
        x, label = test[position]
        expected = torch.from_numpy(bunch.images[order[position]] / 16.0).float()
        assert torch.equal(x[0], expected) and label == int(bunch.target[order[position]])
    x, label = train[0]
    assert torch.equal(x[0], torch.from_numpy(bunch.images[order[500]] / 16.0).float())
    # Deterministic: a second load gives the same items.
    again = load_dataset("digits", "test").dataset
    assert all(torch.equal(test[i][0], again[i][0]) for i in range(0, 500, 50))


def test_digits_mean_std_match_the_data() -> None:
    from sklearn.datasets import load_digits

    pixels = load_digits().data / 16.0
    assert DIGITS_MEAN == (round(float(pixels.mean()), 4),)
    assert DIGITS_STD == (round(float(pixels.std()), 4),)
    assert normalization("digits") == (DIGITS_MEAN, DIGITS_STD)


def test_digits_needs_no_root_and_ignores_one() -> None:
    assert len(load_dataset("digits", "test", data_root=None).dataset) == 500


def test_digits_lie_on_a_16_level_grid() -> None:
    loaded = load_dataset("digits", "test")
    assert loaded.grid_levels == 16
    levels = torch.stack([loaded.dataset[i][0] for i in range(50)]) * loaded.grid_levels
    assert torch.equal(levels, levels.round())
