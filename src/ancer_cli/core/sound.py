"""Floating-point-sound smoothing noise on the data's own pixel grid.

Why. Float noise ``fl(x + theta * eps)`` is not the translate of the noise at another point: the
rounding of the sum depends on the bits of ``x``, so a base classifier that reads low-order bits
tells two neighbouring inputs apart far better than two Gaussians allow, and certificates become
false (Voracek & Hein, ICLR 2023). This module draws the noise *exactly* on the grid
``h = 1 / s`` of the data (``s = 255`` for 8-bit images, 16 for the digits) and assembles the noisy
input in integers, so the model sees a function of the integer sum ``S = x_int + J`` alone.

The laws (per coordinate ``i``, in grid steps; ``x`` is on the grid, ``x = x_int / s``):

* ``l2``: the *rounded* Gaussian ``P(J_i = j) = Phi((j + 1/2) / (s theta_i)) - Phi((j - 1/2) /
  (s theta_i))``, i.e. ``x + J / s = round_h(x + eta)`` with ``eta ~ N(0, diag theta^2)``. The
  smoothed classifier is therefore *exactly* the continuous anisotropic Gaussian smoothing of the
  fixed function ``f o clip o round_h``, and the ellipsoid certificate ``||d / theta||_2 < gap``
  holds unchanged for perturbations ``d`` on the grid. The rounding is done after scaling, per
  coordinate (isotropic integer noise scaled by ``theta`` is a different, lumpy law).
* ``l1``: ``J_i`` uniform on ``{-M_i, ..., M_i}``, ``M_i = max(0, round(s lambda_i - 1/2))``,
  which is ``round_h`` of ``U[-lambda'_i, lambda'_i]`` with ``lambda'_i = (M_i + 1/2) / s``: the
  cross-polytope certificate ``sum |d_i| / lambda'_i < 2 pA - 1`` holds on the grid with the
  half-width ``lambda'`` actually used (:func:`sound_theta`).

Exactness. Random words come from ``torch.randint`` over a power-of-two range of at least
``2^28``: torch then reduces one 64-bit generator word modulo the range (mt19937 ``random64`` on
the CPU, two Philox words on CUDA), which for a power of two keeps the low bits -- uniform, with
no modulo bias (``ATen/core/DistributionsHelper.h``, ``ATen/native/cuda/DistributionTemplates.h``).

* ``l2`` by inversion: ``U`` uniform on ``[0, 2^53)``, ``u = U 2^-53`` (exact in float64) and
  ``J = j`` iff ``Phi((j - 1/2) / (s theta)) <= u < Phi((j + 1/2) / (s theta))``, i.e.
  ``J = floor(s theta Phi^-1(u) + 1/2)``. It is evaluated as ``v = (s theta) * ndtri(u)`` in
  float64 (cephes' ``ndtri``, relative error below ``1e-15``); where ``v`` lies within
  ``DECISION_MARGIN * (1 + |v|)`` of a half-integer the decision is taken again exactly, with
  ``mpmath`` at a precision raised until the comparison of ``u`` with ``Phi`` is decisive. The
  margin is some ``10^4`` times the float64 error, so such fallbacks are rare (about
  ``2^-35 (1 + s theta)`` of the draws) and every decision is the exact inversion rule.
  ``u = 0`` (``Phi^-1 = -inf``) is lumped into the lower clip value.
* ``l1`` by rejection: ``U`` uniform on ``[0, 2^50)``, accepted iff ``U < n floor(2^50 / n)``
  with ``n = 2 M + 1``, ``J = U mod n - M``; rejected entries are redrawn. The law is exact.

Total-variation budget ``tau`` (:func:`total_variation_budget`). The inversion realises each
threshold ``Phi(t)`` as ``ceil(Phi(t) 2^53) 2^-53``, so each atom's mass is off by less than
``2^-53``. Over the atoms ``|j| <= j_max = ceil(9 s theta_i)``, the two tails beyond (ideal mass
``< Phi(-9) < 2^-53`` each, implemented mass 0 apart from the ``u = 0`` atom) and the ``u = 0``
atom, the L1 distance of coordinate ``i``'s implemented law from the ideal one is below
``(2 j_max + 4) 2^-53``; the total variation of the product law is at most the sum over
coordinates. A certificate then uses ``pA_lower - tau`` (and ``pB_upper + tau``): the votes are
i.i.d. under the implemented law, whose ``pA`` is within ``tau`` of the ideal smoothed
classifier's. For ``l1`` rejection makes ``tau = 0``.

Assembly (:func:`assemble_`): ``S = x_int + J`` in int32, clipped in integers to
``[-K s, (K + 1) s]`` with ``K = CLIP_UNITS``, converted once: ``out = S / s``. Clipping is part
of the base classifier (a fixed function of ``S``); for ``theta <= 7`` it bites only on the
``u = 0`` atom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import mpmath
import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.noise import Theta

CLIP_UNITS = 64
"""``K``: noisy inputs are clipped to ``[-K, K + 1]`` (in data units) before the model sees them."""
DECISION_MARGIN = 2.0**-36
"""Relative distance of ``v`` to a half-integer below which the float64 decision is re-taken
exactly; the float64 error of ``v`` is below ``2^-49 (1 + |v|)``."""
GAUSSIAN_BITS = 53
"""``l2``: the uniform word has this many bits (``u = U 2^-53`` is exact in float64)."""
UNIFORM_BITS = 50
"""``l1``: the rejection sampler's word has this many bits."""
TAIL_SIGMAS = 9
"""``j_max = ceil(9 s theta)``: the ideal mass beyond is below ``Phi(-9) < 2^-53``."""
_MAX_LEVELS = 2**20
"""Above this, ``fl(fl64(k / s))`` might differ from ``fl(k / s)`` in the grid check."""


@dataclass
class SoundStats:
    """Counters a caller may pass to the samplers: draws made and decisions re-taken exactly."""

    draws: int = 0
    fallbacks: int = 0


def to_grid(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The integer pixel values ``x_int`` (int32, ``x``'s shape and device) with ``x == x_int / s``.

    ``x`` must lie on the grid in its own dtype: every entry equal to the correctly rounded
    ``k / levels`` for an integer ``0 <= k <= levels`` (as ``ToTensor`` and the digits loader
    produce). Raises ``ValueError`` naming the worst pixel's distance from the grid otherwise.
    """
    if not 1 <= levels <= _MAX_LEVELS:
        raise ValueError(f"grid levels must lie in [1, {_MAX_LEVELS}], got {levels}")
    host = x.detach().to(device="cpu", dtype=torch.float64)
    scaled = host * levels
    ints = torch.round(scaled)
    # fl(fl64(k / s)) == fl(k / s) for s < 2^20, so this is the correctly rounded k / s in x's dtype
    expected = (ints / levels).to(x.dtype)
    inside = bool(((ints >= 0) & (ints <= levels)).all()) if ints.numel() else True
    if not inside or not torch.equal(expected, x.detach().cpu()):
        worst = float((scaled - ints).abs().max()) if ints.numel() else 0.0
        low, high = float(host.min()), float(host.max())
        raise ValueError(
            f"input is not on the 1/{levels} grid of [0, 1]: the worst pixel is {worst:.3g} grid "
            f"steps off, values span [{low:.6g}, {high:.6g}]; sound sampling needs the data's "
            f"own pixel grid"
        )
    return ints.to(device=x.device, dtype=torch.int32)


def _as_float64(theta: Theta, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(theta, torch.Tensor):
        return theta.detach().to(device=like.device, dtype=torch.float64)
    return float(theta)


def uniform_half_widths(theta: Theta, levels: int) -> torch.Tensor | int:
    """``M = max(0, round(s lambda - 1/2))`` (``l1``): the discrete uniform's half-width in steps.

    The integer nearest to ``s lambda - 1/2``, so ``lambda' = (M + 1/2) / s`` is the grid
    half-width nearest to ``lambda``. An int64 tensor for a tensor ``theta``.
    """
    if isinstance(theta, torch.Tensor):
        scaled = theta.detach().to(torch.float64) * levels - 0.5
        return torch.round(scaled).clamp_min(0).to(torch.int64)
    return max(0, round(float(theta) * levels - 0.5))


def _round_down_to(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``exact`` (float64) in ``dtype``, rounded toward zero (never above ``exact``)."""
    rounded = exact.to(dtype)
    above = rounded.to(torch.float64) > exact
    if bool(above.any()):
        lower = torch.nextafter(rounded, torch.zeros_like(rounded))
        rounded = torch.where(above, lower, rounded)
    return rounded


def sound_theta(theta: Theta, norm: Norm | str, levels: int) -> Theta:
    """The noise parameter the sound sampler actually certifies. Idempotent.

    ``l2``: ``theta`` itself (the rounded Gaussian keeps the continuous certificate). ``l1``: the
    grid half-width ``lambda' = (M + 1/2) / s`` (:func:`uniform_half_widths`), in ``theta``'s
    dtype rounded down, so the cross-polytope certified with it lies inside the exact one.
    """
    if Norm(norm) is Norm.l2:
        return theta
    half = uniform_half_widths(theta, levels)
    if isinstance(theta, torch.Tensor):
        assert isinstance(half, torch.Tensor)
        exact = (half.to(torch.float64) + 0.5) / levels
        return _round_down_to(exact.to(theta.device), theta.dtype)
    assert isinstance(half, int)
    value = (half + 0.5) / levels  # correctly rounded; step below if it rounded up
    if Fraction(value) > Fraction(2 * half + 1, 2 * levels):
        value = math.nextafter(value, 0.0)
    return value


def total_variation_budget(
    theta: Theta, norm: Norm | str, levels: int, shape: tuple[int, ...] | torch.Size
) -> float:
    """``tau``: a bound on the total variation between the implemented product law of the noise
    on an input of ``shape`` and the ideal one (module docstring).

    ``l2``: ``sum_i (2 ceil(9 s theta_i) + 4) 2^-53``; ``l1``: 0 (rejection is exact).
    """
    if Norm(norm) is Norm.l1:
        return 0.0
    count = math.prod(shape)
    if isinstance(theta, torch.Tensor):
        values = theta.detach().to(device="cpu", dtype=torch.float64).expand(shape)
        atoms = float((2.0 * torch.ceil(TAIL_SIGMAS * levels * values) + 4.0).sum())
    else:
        atoms = count * (2.0 * math.ceil(TAIL_SIGMAS * levels * float(theta)) + 4.0)
    # atoms is an integer below 2^53 in practice; the factor covers the float64 sum's rounding
    return atoms * 2.0**-GAUSSIAN_BITS * (1.0 + 1e-9)


# ---------------------------------------------------------------------------------------------
# l2: the rounded Gaussian by inversion


def _u_below_phi(word: int, j2: int, theta: float, levels: int) -> bool:
    """Exactly: ``word 2^-53 < Phi((j2 / 2) / (levels theta))`` (``j2`` odd, so never equal)."""
    prec = 96
    while True:
        with mpmath.workprec(prec):
            t = mpmath.mpf(j2) / (2 * levels * mpmath.mpf(theta))
            diff = mpmath.ldexp(mpmath.mpf(word), -GAUSSIAN_BITS) - mpmath.ncdf(t)
            if abs(diff) > mpmath.ldexp(1, 24 - prec):
                return bool(diff < 0)
        prec *= 2


def exact_gaussian_index(word: int, theta: float, levels: int, guess: int) -> int:
    """The exact inversion rule for one word: the ``j`` with
    ``Phi((j - 1/2) / (s theta)) <= u < Phi((j + 1/2) / (s theta))``, searched from ``guess``."""
    j = guess
    while _u_below_phi(word, 2 * j - 1, theta, levels):
        j -= 1
    while not _u_below_phi(word, 2 * j + 1, theta, levels):
        j += 1
    return j


def _gaussian_index(
    words: torch.Tensor, theta: Theta, levels: int, stats: SoundStats | None
) -> torch.Tensor:
    """The rounded-Gaussian index of float64 ``words`` (integers in ``[0, 2^53)``), as float64
    integers clipped to ``+-(K + 1) s``. ``words`` is overwritten."""
    theta64 = _as_float64(theta, words)
    u = words.mul_(2.0**-GAUSSIAN_BITS)  # exact
    v = torch.special.ndtri(u).mul_(theta64 * levels)
    index = torch.floor(v)
    frac = v.sub_(index)  # off by at most an ulp of v, far inside the margin
    close = (frac - 0.5).abs_() <= DECISION_MARGIN * (2.0 + index.abs())  # false for u = 0 (nan)
    index.add_(frac >= 0.5)
    bound = float((CLIP_UNITS + 1) * levels)
    index.clamp_(-bound, bound)  # u = 0 gives -inf, clipped to the lowest value
    positions = close.nonzero()
    if positions.numel():
        flat = tuple(positions.t())
        picked = (u[flat] * 2.0**GAUSSIAN_BITS).tolist()
        guesses = index[flat].tolist()
        if isinstance(theta64, torch.Tensor):
            thetas = theta64.expand_as(u)[flat].tolist()
        else:
            thetas = [theta64] * len(picked)
        exact = [
            exact_gaussian_index(int(w), t, levels, int(g))
            for w, t, g in zip(picked, thetas, guesses, strict=True)
        ]
        index[flat] = torch.tensor(exact, dtype=torch.float64, device=index.device).clamp_(
            -bound, bound
        )
    if stats is not None:
        stats.draws += u.numel()
        stats.fallbacks += int(positions.shape[0])
    return index


def rounded_gaussian_index(
    words: torch.Tensor, theta: Theta, levels: int, stats: SoundStats | None = None
) -> torch.Tensor:
    """The sampler's decision function: int64 ``J`` for int64 words ``U`` in ``[0, 2^53)``.

    ``J = j`` iff ``Phi((j - 1/2) / (s theta)) <= U 2^-53 < Phi((j + 1/2) / (s theta))``
    (``theta`` a number or a tensor broadcast to ``words``); ``U = 0`` and any ``|J|`` beyond
    ``(K + 1) s`` give ``+-(K + 1) s``.
    """
    return _gaussian_index(words.to(torch.float64), theta, levels, stats).to(torch.int64)


# ---------------------------------------------------------------------------------------------
# l1: the discrete uniform by rejection


def _uniform_index(
    shape: torch.Size, half: torch.Tensor | int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """int64 ``J`` of ``shape``, uniform on ``{-M..M}`` per coordinate (``half`` broadcast)."""
    n = 2 * half + 1
    if isinstance(n, torch.Tensor):
        n = n.to(device).expand(shape)
    top = 2**UNIFORM_BITS
    limit = n * (top // n)
    words = torch.randint(0, top, shape, dtype=torch.int64, device=device, generator=generator)
    rejected = words >= limit
    while bool(rejected.any()):  # probability below n / 2^50 per entry
        fresh = torch.randint(
            0, top, (int(rejected.sum()),), dtype=torch.int64, device=device, generator=generator
        )
        words[rejected] = fresh
        rejected = words >= limit
    return words.remainder_(n).sub_(half if isinstance(half, int) else half.to(device))


# ---------------------------------------------------------------------------------------------
# assembly


def assemble_(
    out: torch.Tensor, x_int: torch.Tensor, noise_int: torch.Tensor, levels: int
) -> torch.Tensor:
    """``out = clip(x_int + J, -K s, (K + 1) s) / s``, the sum formed and clipped in int32 and
    converted once: ``out`` depends on ``S = x_int + J`` only (``J``: integer-valued, ``|J|`` at
    most ``(K + 1) s``, broadcast against ``x_int``)."""
    total = noise_int.to(torch.int32).add_(x_int)
    total.clamp_(-CLIP_UNITS * levels, (CLIP_UNITS + 1) * levels)
    out.copy_(total)  # exact: |S| < 2^24
    return out.div_(levels)


def draw_sound_(
    out: torch.Tensor,
    x_int: torch.Tensor,
    theta: Theta,
    norm: Norm | str,
    levels: int,
    generator: torch.Generator,
    stats: SoundStats | None = None,
) -> torch.Tensor:
    """Fill ``out`` (shape ``(b, *x_int.shape)``, a float dtype) with noisy copies of the grid
    input ``x_int / levels`` drawn exactly (module docstring) and return it.

    ``theta``: a positive number or a positive tensor of the input's shape (``l1``: the
    half-widths are :func:`uniform_half_widths`, so ``theta`` and :func:`sound_theta` of it draw
    the same law). ``stats``, if given, counts the draws and the exactly re-taken decisions.
    """
    shape, device = out.shape, out.device
    if Norm(norm) is Norm.l2:
        words = torch.empty(shape, dtype=torch.float64, device=device)
        words.random_(0, 2**GAUSSIAN_BITS, generator=generator)  # as randint: one 64-bit word
        noise = _gaussian_index(words, theta, levels, stats)
    else:
        half = uniform_half_widths(theta, levels)
        noise = _uniform_index(shape, half, generator, device)
        if stats is not None:
            stats.draws += noise.numel()
    return assemble_(out, x_int, noise, levels)
