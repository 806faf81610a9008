import math

import torch

from ancer_cli.core.choices import Norm, sigma_from_theta, theta_from_sigma
from ancer_cli.core.noise import InputStreams, Stream, input_generator, input_seed, perturb_


def test_sigma_convention():
    assert theta_from_sigma(0.25, Norm.l2) == 0.25
    assert theta_from_sigma(0.25, "l1") == 0.25 * math.sqrt(3)
    assert sigma_from_theta(theta_from_sigma(0.4, "l1"), "l1") == 0.4


def test_seeds_differ_by_index_and_stream_and_repeat():
    assert input_seed(0, 1) == input_seed(0, 1)
    assert input_seed(0, 1) != input_seed(0, 2)
    assert input_seed(0, 1) != input_seed(1, 1)
    assert input_seed(0, 1, Stream.certify) != input_seed(0, 1, Stream.ancer)
    assert 0 <= input_seed(123, 456) < 2**63


def test_noise_statistics_match_theta():
    # the empirical per-coordinate std equals sigma for both norms (l1: theta = sqrt(3) sigma)
    x = torch.full((1, 4, 4), 0.5)
    for norm in ("l2", "l1"):
        theta = theta_from_sigma(0.3, norm)
        buf = torch.empty((200_000, 1, 4, 4))
        samples = perturb_(buf, x, theta, norm, input_generator(0, 0, "cpu"))
        assert abs(float(samples.mean()) - 0.5) < 2e-3
        assert abs(float(samples.std()) - 0.3) < 2e-3
        if norm == "l1":
            assert float((samples - x).abs().max()) <= theta + 1e-6


def test_tensor_theta_broadcasts_per_coordinate():
    x = torch.zeros((1, 2, 2))
    theta = torch.tensor([[[0.1, 1.0], [2.0, 0.5]]])
    buf = torch.empty((100_000, 1, 2, 2))
    samples = perturb_(buf, x, theta, "l2", input_generator(0, 0, "cpu"))
    assert torch.allclose(samples.std(dim=0), theta, rtol=0.02)


def test_input_streams_give_each_input_its_own_generator_per_stream():
    streams = InputStreams(7, (3, 5))
    for stream in (Stream.isotropic, Stream.guard):
        drawn = [torch.rand(4, generator=g) for g in streams.generators(stream)]
        expected = [torch.rand(4, generator=input_generator(7, i, "cpu", stream)) for i in (3, 5)]
        assert all(torch.equal(a, b) for a, b in zip(drawn, expected, strict=True))
    # fresh generators every call: a stage that asks twice replays its stream
    again = [torch.rand(4, generator=g) for g in streams.generators(Stream.guard)]
    assert torch.equal(again[0], expected[0])
