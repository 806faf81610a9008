"""The training settings (``ancer_cli.train``): per-method defaults, the epoch schedules of MACER
and SmoothAdv, which methods refuse which noise, and what the checkpoint records."""

from __future__ import annotations

import re

import pytest

from ancer_cli.core.choices import Norm
from ancer_cli.errors import AncerError
from ancer_cli.settings import (
    DEFAULT_LR,
    TrainConfig,
    Training,
    method_settings,
    setting_method,
)
from ancer_cli.train import config_record


def test_each_method_gets_its_papers_copies_and_learning_rate() -> None:
    expected = {
        Training.noise: (1, DEFAULT_LR),
        Training.stability: (1, DEFAULT_LR),
        Training.consistency: (2, DEFAULT_LR),
        Training.macer: (16, 0.01),
        Training.smoothadv: (4, DEFAULT_LR),
    }
    for training, (copies, lr) in expected.items():
        config = TrainConfig(arch="cnn", training=training)
        assert (config.noisy_samples, config.lr) == (copies, lr), training
    given = TrainConfig(arch="cnn", training=Training.macer, noisy_samples=3, lr=0.2)
    assert (given.noisy_samples, given.lr) == (3, 0.2)


def test_macer_warmup_trains_without_the_robustness_term() -> None:
    config = TrainConfig(arch="cnn", training=Training.macer, macer_warmup=2, macer_weight=7.0)
    assert [config.macer_weight_at(epoch) for epoch in range(4)] == [0.0, 0.0, 7.0, 7.0]
    assert TrainConfig(arch="cnn", training=Training.macer).macer_weight_at(0) == 12.0


def test_smoothadv_eps_grows_linearly_over_the_warmup() -> None:
    config = TrainConfig(arch="cnn", training=Training.smoothadv, smoothadv_eps=0.5)
    eps = [config.smoothadv_eps_at(epoch) for epoch in range(12)]
    assert eps[:10] == pytest.approx([0.5 * (epoch + 1) / 10 for epoch in range(10)])
    assert eps[9:] == [0.5, 0.5, 0.5]
    none = TrainConfig(arch="cnn", training=Training.smoothadv, smoothadv_warmup=0)
    assert none.smoothadv_eps_at(0) == 1.0


@pytest.mark.parametrize("training", [Training.macer, Training.smoothadv])
def test_macer_and_smoothadv_refuse_l1(training: Training) -> None:
    with pytest.raises(AncerError, match=f"--training {training.value} is for l2 noise only"):
        TrainConfig(arch="cnn", training=training, norm=Norm.l1)


def test_consistency_trains_under_uniform_noise() -> None:
    assert TrainConfig(arch="cnn", training=Training.consistency, norm=Norm.l1).norm is Norm.l1


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"training": Training.macer, "sigma": 0.0}, "give --sigma > 0"),
        ({"training": Training.consistency, "noisy_samples": 1}, "--noisy-samples must be >= 2"),
        ({"training": Training.macer, "macer_beta": 0.0}, "--macer-beta must be a finite"),
        ({"training": Training.consistency, "entropy_weight": -1.0}, "--entropy-weight must be"),
        ({"training": Training.smoothadv, "smoothadv_eps": float("nan")}, "--smoothadv-eps must"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict, fragment: str) -> None:
    with pytest.raises(AncerError, match=re.escape(fragment)):
        TrainConfig(arch="cnn", **settings)


def test_each_method_setting_names_its_method() -> None:
    assert method_settings(Training.noise) == []
    assert method_settings(Training.stability) == ["stability_weight"]
    assert method_settings(Training.consistency) == ["consistency_weight", "entropy_weight"]
    assert method_settings(Training.macer) == [
        "macer_weight",
        "macer_beta",
        "macer_margin",
        "macer_warmup",
    ]
    assert method_settings(Training.smoothadv) == [
        "smoothadv_eps",
        "smoothadv_steps",
        "smoothadv_warmup",
    ]
    assert all(name.startswith(setting_method(name).value) or name == "entropy_weight"
               for name in method_settings())  # fmt: skip


def test_the_record_holds_the_settings_of_the_method_that_trained() -> None:
    record = config_record(TrainConfig(arch="cnn", training=Training.macer, macer_beta=4.0))
    assert record["training"] == "macer" and record["noisy_samples"] == 16
    assert record["macer_beta"] == 4.0 and record["macer_warmup"] == 0 and record["lr"] == 0.01
    assert not {"stability_weight", "consistency_weight", "smoothadv_eps"} & set(record)
    noise = config_record(TrainConfig(arch="cnn"))
    assert not set(method_settings()) & set(noise)
    assert noise["norm"] == "l2" and noise["noisy_samples"] == 1 and noise["lr"] == DEFAULT_LR
