"""Tiny problems shared by the optimizer tests: a linear classifier whose smoothed classifier is
known for every theta, and per-input generators."""

import torch

from ancer_cli.core.noise import Stream, input_generator
from tests.toys import SteepLinear2

SHAPE = (1, 8, 8)


def linear_problem(count: int, seed: int = 0):
    """``(model, w, xs, margins)``: a :class:`~tests.toys.SteepLinear2` on ``count`` random
    inputs of ``SHAPE``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPE, generator=g) / 8
    w[0, :4] *= 0.05  # half the pixels barely matter: ANCER should grow their theta
    xs = torch.rand((count, *SHAPE), generator=g)
    b = -float((w * 0.5).sum())
    return SteepLinear2(w, b), w, xs, xs.flatten(1) @ w.flatten() + b


def gens(indices: range | list[int], stream: Stream | int) -> list[torch.Generator]:
    """One CPU generator per input, seeded from (0, index, stream)."""
    return [input_generator(0, i, "cpu", stream) for i in indices]
