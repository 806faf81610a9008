"""Smoothing noise in pixel space and per-input random streams.

theta is always the *natural* parameter of the noise:

* ``l2``: ``eps = theta * z`` with ``z ~ N(0, I)`` -- theta is the per-coordinate standard deviation;
* ``l1``: ``eps = theta * u`` with ``u ~ U[-1, 1]^d`` -- theta is the per-coordinate half-width.

The command line speaks of ``sigma``, the noise standard deviation, for both norms:
``theta = sigma`` (l2) and ``theta = sqrt(3) * sigma`` (l1).
"""

from __future__ import annotations

import enum
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ancer_cli.core.choices import Norm


class Stream(enum.IntEnum):
    """Independent random streams per input, so no samples are ever shared between stages."""

    certify = 0
    isotropic = 1
    ancer = 2
    train = 3
    evaluate = 4
    predict = 5
    guard = 6
    """fresh votes that decide between an input's ANCER and isotropic thetas (never certify's)"""
    attack = 7
    """the SmoothAdv attack's noise and restarts (the attacked point is judged on predict's)"""
    audit = 8
    """the search for flips inside certified regions (confirmed on fresh draws, not these)"""


Theta = float | torch.Tensor


def input_seed(seed: int, index: int, stream: Stream = Stream.certify) -> int:
    """A well-mixed 63-bit seed for one input, from the run seed and the dataset index.

    Seeding per input (never per batch or per rank) makes results independent of the order,
    the batch composition and the number of processes. Seeds below 2^32 keep the streams they
    always had; larger seeds (:func:`fresh_seed`) mix in their high bits too.
    """
    words = [int(seed) & 0xFFFFFFFF, int(index), int(stream)]
    if int(seed) >> 32:  # seeds drawn from OS entropy are 63 bits: every bit counts
        words.append(int(seed) >> 32)
    state = np.random.SeedSequence(words)
    return int(state.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


def fresh_seed() -> int:
    """A 63-bit seed from OS entropy: noise that no one, the model's author included, can
    predict before the run (a known seed lets a planted model fit the exact draws)."""
    return secrets.randbits(63)


def input_generator(
    seed: int, index: int, device: torch.device | str, stream: Stream = Stream.certify
) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for one input (see :func:`input_seed`)."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(input_seed(seed, index, stream))
    return generator


def part_generator(
    seed: int, index: int, part: int, device: torch.device | str, stream: Stream
) -> torch.Generator:
    """A ``torch.Generator`` for one part of an input's work on ``stream`` -- one eps of its
    attack, one candidate its audit confirms: seeded from the input's seed (:func:`input_seed`)
    and ``part`` (an integer >= 0), so that parts draw independent streams and none depends on
    which other parts ran, or in which order."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(input_seed(input_seed(seed, index, stream), part, stream))
    return generator


def float_part(value: float) -> int:
    """The :func:`part_generator` part of a number >= 0: its float64 bit pattern (distinct
    numbers, distinct parts)."""
    return int(struct.unpack("<q", struct.pack("<d", abs(float(value)) + 0.0))[0])


@dataclass(frozen=True)
class InputStreams:
    """The random streams of a batch of inputs: :meth:`generators` gives one fresh generator per
    input of ``indices`` for a stream, seeded from ``(seed, index, stream)``
    (:func:`input_generator`), so a stage asks for its own stream by name."""

    seed: int
    indices: Sequence[int]
    device: torch.device | str = "cpu"

    def generators(self, stream: Stream) -> list[torch.Generator]:
        """One generator per input, on ``device``, for ``stream``."""
        return [input_generator(self.seed, i, self.device, stream) for i in self.indices]


def draw_base_noise_(
    out: torch.Tensor, norm: Norm | str, generator: torch.Generator
) -> torch.Tensor:
    """Fill ``out`` in place with unit noise: standard normal (l2) or uniform on [-1, 1] (l1)."""
    if Norm(norm) is Norm.l2:
        return out.normal_(generator=generator)
    return out.uniform_(-1.0, 1.0, generator=generator)


def perturb_(
    out: torch.Tensor,
    x: torch.Tensor,
    theta: Theta,
    norm: Norm | str,
    generator: torch.Generator,
) -> torch.Tensor:
    """Fill ``out`` (shape ``(b, *x.shape)``) with ``x + theta * eps`` in place and return it.

    ``x`` and a tensor ``theta`` have the input's shape and are broadcast, never repeated.
    """
    draw_base_noise_(out, norm, generator)
    out.mul_(theta)
    return out.add_(x)
