"""The floating-point-sound sampler: its exact law, its integer assembly, the certificate it
keeps (by brute force on a small grid) and the attack it stops.

``cuda`` copies run the law, assembly and attack checks on a CUDA device.
"""

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from scipy.stats import norm as normal
from torch import nn

from ancer_cli.core.bounds import gap_from_p_lower
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import perturb_
from ancer_cli.core.regions import weighted_distance
from ancer_cli.core.smoothing import certify, sample_counts
from ancer_cli.core.sound import (
    CLIP_UNITS,
    GAUSSIAN_BITS,
    SoundStats,
    assemble_,
    draw_sound_,
    exact_gaussian_index,
    rounded_gaussian_index,
    sound_theta,
    to_grid,
    total_variation_budget,
    uniform_half_widths,
)

UNIT = 2.0**-GAUSSIAN_BITS
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# ---------------------------------------------------------------------------------------------
# the grid


def test_to_grid_reads_8_bit_and_digits_data_and_rejects_the_rest():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)
    x = pixels.float().div(255)  # what ToTensor does
    assert torch.equal(to_grid(x, 255), pixels.int())
    digits = torch.arange(17, dtype=torch.float32) / 16
    assert torch.equal(to_grid(digits, 16), torch.arange(17, dtype=torch.int32))
    with pytest.raises(ValueError, match="0.5 grid steps off"):
        to_grid(x + 0.5 / 255, 255)
    with pytest.raises(ValueError, match="grid"):
        to_grid(digits, 255)  # the digits are not on the 1/255 grid
    with pytest.raises(ValueError, match="span"):
        to_grid(torch.tensor([1.0 + 1 / 255]), 255)


def test_to_grid_reads_16_bit_data_and_8_bit_data_on_the_finer_grid():
    """16-bit images (k / 65535, as the image folders read them); 8-bit values are 257 k / 65535."""
    values = torch.arange(65536, dtype=torch.int32)
    x = values.float().div(65535)
    assert torch.equal(to_grid(x, 65535), values)
    eight = torch.arange(256, dtype=torch.int32)
    assert torch.equal(to_grid(eight.float().div(255), 65535), 257 * eight)
    with pytest.raises(ValueError, match="grid steps off"):
        to_grid(x[1:2] + 0.5 / 65535, 65535)
    with pytest.raises(ValueError, match="grid"):
        to_grid(x[1:2], 255)


def test_sound_theta_is_idempotent_and_never_above_the_grid_half_width():
    for levels in (16, 255):
        for value in (0.001, 0.1, 0.25, 0.433, 0.866, 1.7320508):
            once = sound_theta(value, "l1", levels)
            assert sound_theta(once, "l1", levels) == once
            half = uniform_half_widths(value, levels)
            assert once <= (half + 0.5) / levels and once * levels == pytest.approx(half + 0.5)
            assert sound_theta(value, "l2", levels) == value
        tensor = torch.tensor([0.001, 0.1, 0.433, 0.866, 1.7320508])
        once = sound_theta(tensor, "l1", levels)
        assert isinstance(once, torch.Tensor) and once.dtype == torch.float32
        assert torch.equal(sound_theta(once, "l1", levels), once)
        half = torch.as_tensor(uniform_half_widths(tensor, levels))
        assert ((once.double() * levels) <= half.double() + 0.5).all()
        assert sound_theta(tensor, "l2", levels) is tensor


# ---------------------------------------------------------------------------------------------
# (a) the exact law of the l2 sampler


def _thresholds(theta: float, levels: int, low: int, high: int) -> tuple[list[int], list[float]]:
    """``k = ceil(Phi((j + 1/2) / (s theta)) 2^53)`` and ``Phi`` itself for ``j = low .. high``."""
    ks, phis = [], []
    with mpmath.workprec(200):
        scale = levels * mpmath.mpf(theta)
        for j in range(low, high + 1):
            phi = mpmath.ncdf(mpmath.mpf(2 * j + 1) / (2 * scale))
            ks.append(int(mpmath.ceil(mpmath.ldexp(phi, GAUSSIAN_BITS))))
            phis.append(phi)
    return ks, phis


LAWS = [
    (16, [0.13]),
    (16, [0.5]),
    (255, [0.25]),
    (255, [0.1234567]),
    (255, [0.5, 0.301]),  # per-coordinate thetas, drawn side by side
    (65535, [0.0012]),  # 16-bit images (a small theta keeps the table of thresholds short)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("levels,thetas", LAWS)
def test_rounded_gaussian_law_is_exact_to_the_last_word(device, levels, thetas):
    theta_row = torch.tensor(thetas, dtype=torch.float64)
    for column, theta in enumerate(thetas):
        j_max = math.ceil(9 * levels * theta)
        # boundaries j + 1/2 for j = -j_max - 1 .. j_max
        ks, phis = _thresholds(theta, levels, -j_max - 1, j_max)
        # the words on either side of every threshold, then random ones and the extremes; the
        # exact answer is the j with k_{j-1/2} <= U < k_{j+1/2} (in the deep tails several
        # thresholds share one k: their atoms are empty)
        table = torch.tensor(ks, dtype=torch.int64)
        sides = torch.stack([table - 1, table], 1).flatten()
        generator = torch.Generator().manual_seed(column)
        randoms = torch.randint(1, 2**GAUSSIAN_BITS, (20_000,), generator=generator)
        words = torch.cat([sides, randoms, torch.tensor([1, 2, 2**GAUSSIAN_BITS - 1])])
        words = words[(words >= 1) & (words < 2**GAUSSIAN_BITS)]
        expected = torch.searchsorted(table, words, right=True) + (-j_max - 1)
        # laid out in the column of this theta, the other column gets the same words
        grid = words[:, None].expand(-1, len(thetas)).contiguous()
        stats = SoundStats()
        index = rounded_gaussian_index(grid.to(device), theta_row.to(device), levels, stats)
        got = index[:, column].cpu()
        assert torch.equal(got, expected)
        assert stats.fallbacks > 0  # the boundary words are decided exactly
        assert torch.equal(
            rounded_gaussian_index(torch.tensor([0]), theta, levels),
            torch.tensor([-(CLIP_UNITS + 1) * levels]),
        )
        # implemented masses: (k_{j+1/2} - k_{j-1/2}) 2^-53, within 2^-53 of the exact ones
        k = np.array(ks, dtype=object)
        implemented = (k[1:] - k[:-1]).astype(np.float64) * UNIT  # j = -j_max .. j_max
        with mpmath.workprec(200):
            exact = [float(phis[i + 1] - phis[i]) for i in range(len(phis) - 1)]
            lower_tail, upper_tail = float(phis[0]), float(1 - phis[-1])
        errors = np.abs(implemented - np.array(exact))
        assert errors.max() <= UNIT
        assert ks[0] == 1 and ks[-1] == 2**GAUSSIAN_BITS  # nothing beyond j_max but u = 0
        total = errors.sum() + lower_tail + upper_tail + UNIT  # + the u = 0 atom
        assert total <= total_variation_budget(theta, "l2", levels, (1,))
        # symmetric about 0 up to the rounding of the two thresholds
        assert np.abs(implemented - implemented[::-1]).max() <= 2 * UNIT


def test_exact_fallback_agrees_with_the_thresholds():
    ks, _ = _thresholds(0.3, 16, -2, 2)
    for j, k in zip(range(-2, 3), ks, strict=True):
        assert exact_gaussian_index(k - 1, 0.3, 16, guess=j + 5) == j
        assert exact_gaussian_index(k, 0.3, 16, guess=j - 5) == j + 1


# ---------------------------------------------------------------------------------------------
# (b) sampler statistics


def _chi_square(counts: np.ndarray, expected: np.ndarray) -> float:
    """p-value after pooling the bins with fewer than 5 expected draws into their neighbours."""
    pooled_counts, pooled_expected = [], []
    acc_c = acc_e = 0.0
    expected = expected * counts.sum() / expected.sum()
    for c, e in zip(counts, expected, strict=True):
        acc_c, acc_e = acc_c + c, acc_e + e
        if acc_e >= 5:
            pooled_counts.append(acc_c)
            pooled_expected.append(acc_e)
            acc_c = acc_e = 0.0
    pooled_counts[-1] += acc_c
    pooled_expected[-1] += acc_e
    observed = np.array(pooled_counts)
    wanted = np.array(pooled_expected) * observed.sum() / np.sum(pooled_expected)
    return float(chisquare(observed, wanted).pvalue)


def test_million_draws_follow_the_exact_pmfs():
    levels, draws = 255, 10**6
    generator = torch.Generator().manual_seed(2024)
    x_int = torch.zeros(1000, dtype=torch.int32)
    out = torch.empty(draws // 1000, 1000)
    # l2: theta 0.05, so s theta = 12.75 (not a multiple of the grid step)
    stats = SoundStats()
    draw_sound_(out, x_int, 0.05, "l2", levels, generator, stats)
    noise = torch.round(out * levels).to(torch.int64).flatten()
    reach = 70
    counts = torch.bincount(noise + reach, minlength=2 * reach + 1).numpy()
    assert counts.sum() == draws and stats.draws == draws
    j = np.arange(-reach, reach + 1)
    pmf = normal.cdf((j + 0.5) / 12.75) - normal.cdf((j - 0.5) / 12.75)
    assert _chi_square(counts, pmf) > 1e-4
    assert stats.fallbacks <= 5  # a fraction of order 2^-35 (1 + s theta) of the draws
    # l1: per-pixel half-widths M in {0, 3, 7}
    lam = torch.tensor([0.001, 3.4 / levels, 7.6 / levels]).repeat(334)[:1000]
    half = torch.as_tensor(uniform_half_widths(lam, levels))
    assert set(half.tolist()) == {0, 3, 7}
    draw_sound_(out, x_int, lam, "l1", levels, generator)
    noise = torch.round(out * levels).to(torch.int64)
    for m in (0, 3, 7):
        values = noise[:, half == m].flatten()
        assert values.abs().max() <= m
        counts = torch.bincount(values + m, minlength=2 * m + 1).numpy()
        if m:
            assert _chi_square(counts, np.full(2 * m + 1, 1.0)) > 1e-4
        else:
            assert counts.tolist() == [values.numel()]


# ---------------------------------------------------------------------------------------------
# (c) integer assembly


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("levels", [16, 255, 65535])
def test_assembly_depends_on_the_integer_sum_only(device, levels):
    generator = torch.Generator().manual_seed(levels)
    shape, batch = (3, 8, 8), 512
    bound = (CLIP_UNITS + 1) * levels
    x_a = torch.randint(0, levels + 1, shape, generator=generator, dtype=torch.int32)
    x_b = torch.randint(0, levels + 1, shape, generator=generator, dtype=torch.int32)
    noise_a = torch.randint(-bound, bound + 1, (batch, *shape), generator=generator)
    noise_a[: batch // 4] = torch.randint(-3 * levels, 3 * levels, (batch // 4, *shape))
    noise_b = noise_a + x_a - x_b  # the same sums S
    outs = []
    for x_int, noise in ((x_a, noise_a), (x_b, noise_b)):
        out = torch.empty((batch, *shape), device=device)
        outs.append(assemble_(out, x_int.to(device), noise.to(device), levels))
    first, second = outs
    assert torch.equal(first.view(torch.int32), second.view(torch.int32))  # bitwise
    for cast in (
        lambda t: t.to(torch.bfloat16),
        lambda t: t.contiguous(memory_format=torch.channels_last),
        lambda t: t.to(torch.bfloat16).contiguous(memory_format=torch.channels_last),
    ):
        assert torch.equal(cast(first), cast(second))
    # clipped in integers, to [-K, K + 1], and S read back from what the model sees
    assert float(first.min()) >= -CLIP_UNITS and float(first.max()) <= CLIP_UNITS + 1
    sums = (x_a.long() + noise_a).clamp(-CLIP_UNITS * levels, (CLIP_UNITS + 1) * levels)
    assert torch.equal(torch.round(first.cpu().double() * levels).long(), sums)
    if device == "cpu":  # zero noise reproduces the data exactly
        x = x_a.float() / levels
        zero = assemble_(torch.empty((1, *shape)), x_a, torch.zeros((1, *shape)), levels)
        assert torch.equal(zero[0], x)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_the_noise_states_the_range_its_sampler_clips_to(norm):
    """``Noise.clip`` (what the optimizer's float steps clip to) is the sampler's clip range: a
    huge theta reaches both ends, never beyond; float noise states none."""
    assert Noise(Norm(norm)).clip is None
    noise = Noise(Norm(norm), 16)
    law = noise.law(1000.0, (1, 4, 4))
    x = torch.full((1, 4, 4), 0.5)
    out = law.draw_(torch.empty((256, 1, 4, 4)), law.prepare(x), torch.Generator().manual_seed(0))
    assert (float(out.min()), float(out.max())) == noise.clip == (-CLIP_UNITS, CLIP_UNITS + 1)


@pytest.mark.parametrize("levels", [16, 255, 65535])
def test_every_clipped_sum_converts_once_and_exactly(levels):
    """Over the whole clip range ``[-K s, (K + 1) s]`` (``|S| < 2^24``, exact in float32) the
    model sees ``S / s`` rounded once, distinct for distinct ``S`` -- 16-bit data included."""
    sums = torch.arange(-CLIP_UNITS * levels, (CLIP_UNITS + 1) * levels + 1, dtype=torch.int32)
    assert int(sums.abs().max()) < 2**24
    out = assemble_(torch.empty(sums.shape), sums, torch.zeros_like(sums), levels)
    assert torch.equal(out, (sums.double() / levels).float())
    assert bool((out[1:] > out[:-1]).all())


# ---------------------------------------------------------------------------------------------
# (d) the certificate, by brute force on a small grid

S16 = 16
WINDOW = 6
"""The base classifier reads each coordinate clipped to [-WINDOW, 16 + WINDOW] grid steps."""
REACH = S16 + WINDOW
"""Atoms beyond +-REACH clip to the window's edge from every x on the grid: lumped there."""


def _rounded_gaussian_pmf(theta: float, levels: int = S16) -> np.ndarray:
    """Exact masses of ``j = -REACH .. REACH``, the tails lumped into the end atoms."""
    with mpmath.workprec(100):
        scale = levels * mpmath.mpf(theta)
        cdf = [mpmath.ncdf((j + mpmath.mpf(1) / 2) / scale) for j in range(-REACH - 1, REACH + 1)]
        masses = [cdf[i + 1] - cdf[i] for i in range(len(cdf) - 1)]
        masses[0] += cdf[0]
        masses[-1] += 1 - cdf[-1]
        return np.array([float(m) for m in masses])


def _uniform_pmf(half: int) -> np.ndarray:
    pmf = np.zeros(2 * REACH + 1)
    pmf[REACH - half : REACH + half + 1] = 1.0 / (2 * half + 1)
    return pmf


def _scaled_isotropic_pmf(base: np.ndarray, factor: float) -> np.ndarray:
    """The *wrong* law: isotropic integer noise ``J0`` scaled by ``factor``, rounded to the grid."""
    pmf = np.zeros_like(base)
    for j0, mass in zip(range(-REACH, REACH + 1), base, strict=True):
        j = int(np.clip(np.round(factor * j0), -REACH, REACH))
        pmf[j + REACH] += mass
    return pmf


def _smoothed(pmfs: list[np.ndarray], table: np.ndarray) -> np.ndarray:
    """Exact class probabilities ``(17, 17, 17, K)`` at every grid point, by convolution."""
    cells = S16 + 2 * WINDOW + 1
    mats = []
    for pmf in pmfs:
        mat = np.zeros((S16 + 1, cells))
        for x in range(S16 + 1):
            for j, mass in zip(range(-REACH, REACH + 1), pmf, strict=True):
                mat[x, int(np.clip(x + j, -WINDOW, S16 + WINDOW)) + WINDOW] += mass
        mats.append(mat)
    return np.einsum("ai,bj,ck,ijkm->abcm", *mats, table, optimize=True)


def _violations(
    pmfs: list[np.ndarray], table: np.ndarray, thetas, norm: str, centres: int | None = None
) -> tuple[int, int]:
    """Grid points inside some certified region whose smoothed class differs from the centre's:
    (violations, points checked). Certificates from the exact ``pA`` with the project's gap, at
    every grid point or at ``centres`` of them drawn at random (a fixed seed)."""
    probs = _smoothed(pmfs, table)
    classes = probs.argmax(axis=-1).reshape(-1)
    top = probs.max(axis=-1).reshape(-1)
    axes = np.meshgrid(*[np.arange(S16 + 1)] * 3, indexing="ij")
    points = torch.tensor(np.stack([a.reshape(-1) for a in axes], 1), dtype=torch.float64) / S16
    theta_rows = torch.tensor(thetas, dtype=torch.float64).expand(points.shape[0], 3)
    violations = checked = 0
    candidates = np.flatnonzero(top > 0.5 + 1e-9)
    if centres is not None and centres < candidates.size:
        candidates = np.random.default_rng(0).choice(candidates, centres, replace=False)
    for i in candidates:
        gap = gap_from_p_lower(float(top[i]) - 1e-12, norm)  # exact pA, less float error
        distance = weighted_distance(points[i], points, theta_rows, norm).numpy()
        inside = distance < gap * (1 - 1e-9)
        checked += int(inside.sum())
        violations += int((classes[inside] != classes[i]).sum())
    return violations, checked


def _random_table(seed: int, classes: int = 3) -> np.ndarray:
    """A random lookup table on the clipped grid: random linear scores, 5% random cells."""
    rng = np.random.default_rng(seed)
    cells = S16 + 2 * WINDOW + 1
    coords = np.stack(np.meshgrid(*[np.arange(cells)] * 3, indexing="ij"), -1) / cells
    scores = coords @ rng.normal(size=(3, classes)) * 4 + rng.normal(size=classes)
    labels = scores.argmax(-1)
    flip = rng.random(labels.shape) < 0.05
    labels[flip] = rng.integers(0, classes, flip.sum())
    return np.eye(classes)[labels]


L2_THETAS = [0.13, 0.21, 0.3]  # s theta = 2.08, 3.36, 4.8: none a multiple of the grid step
L1_WIDTHS = [0.2, 0.33, 0.5]  # M = 3, 5, 8


def _l1_law() -> tuple[list[np.ndarray], list[float]]:
    widths = [sound_theta(v, "l1", S16) for v in L1_WIDTHS]
    assert [uniform_half_widths(v, S16) for v in L1_WIDTHS] == [3, 5, 8]
    return [_uniform_pmf(uniform_half_widths(v, S16)) for v in L1_WIDTHS], widths


@pytest.mark.parametrize("norm_name", ["l2", pytest.param("l1", marks=pytest.mark.slow)])
def test_certified_regions_hold_by_brute_force(norm_name):
    if norm_name == "l2":
        pmfs, thetas = [_rounded_gaussian_pmf(t) for t in L2_THETAS], L2_THETAS
    else:
        pmfs, thetas = _l1_law()
    for pmf in pmfs:
        assert pmf.sum() == pytest.approx(1.0, abs=1e-14)
    total_checked = 0
    for seed in range(3):
        violations, checked = _violations(pmfs, _random_table(seed), thetas, norm_name, 800)
        assert violations == 0
        total_checked += checked
    assert total_checked > 20_000  # the regions are not empty


def _planted_table(pattern: np.ndarray, axis: int, centre: int) -> np.ndarray:
    """Class 1 iff coordinate ``axis`` sits at ``centre + j`` for ``j`` in the support of
    ``pattern`` (a pmf on ``-REACH .. REACH``); class 0 elsewhere, the window's edges included."""
    cells = S16 + 2 * WINDOW + 1
    labels = np.zeros([cells] * 3, dtype=np.int64)
    for j in np.flatnonzero(pattern > 0) - REACH:
        cell = centre + j
        if -WINDOW < cell < S16 + WINDOW:
            index = [slice(None)] * 3
            index[axis] = cell + WINDOW
            labels[tuple(index)] = 1
    return np.eye(2)[labels]


@pytest.mark.parametrize("norm_name", ["l2", pytest.param("l1", marks=pytest.mark.slow)])
def test_a_wrongly_discretised_law_is_caught(norm_name):
    """Isotropic integer noise scaled by theta_i / theta_0 and rounded is lumpy: a classifier
    planted on its support certifies a region that the class leaves one grid step away. The
    same classifier under the right law raises no violation."""
    if norm_name == "l2":
        right, thetas = [_rounded_gaussian_pmf(t) for t in L2_THETAS], L2_THETAS
        base = right[0]
    else:
        right, thetas = _l1_law()
        base = right[0]
    wrong = [_scaled_isotropic_pmf(base, t / thetas[0]) for t in thetas]
    table = _planted_table(wrong[2], axis=2, centre=S16 // 2)
    violations, _ = _violations(wrong, table, thetas, norm_name, 1500)
    assert violations > 0
    violations, checked = _violations(right, table, thetas, norm_name, 1500)
    assert violations == 0 and checked > 0


# ---------------------------------------------------------------------------------------------
# (e) the attack: float noise forges certificates, sound noise does not

PIXELS = (1, 28, 28)
SIGMA = 0.5
ALPHA = 0.001


class CancellationBits(nn.Module):
    """Class 1 iff some watched coordinate ``z`` has ``|z| < 1/510`` and a bit finer than
    ``2^-32``: near a clean pixel 0 the noise keeps its fine bits; near 1/255, ``1/255 + eps``
    cancels exactly (Sterbenz) onto the coarse grid of ``eps``."""

    def __init__(self, watched: torch.Tensor) -> None:
        super().__init__()
        self.watched = watched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, self.watched.to(x.device)].double()
        fine = (z * 2.0**32 != torch.round(z * 2.0**32)) & (z.abs() < 1 / 510)
        hit = fine.any(dim=1).double()
        return torch.stack([1.0 - hit, hit], dim=1)


class UniformGrid(nn.Module):
    """Class 1 iff some watched coordinate ``z`` has ``|z| < 2^-5`` and equals ``fl(u * theta)``
    for a ``u`` on torch's CPU grid of uniform draws (multiples of ``2^-23``): always true near a
    clean pixel 0, rare near 1/255."""

    def __init__(self, watched: torch.Tensor, theta: float) -> None:
        super().__init__()
        self.watched = watched
        self.theta = theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.flatten(1)[:, self.watched]
        k = torch.round(z.double() / self.theta * 2.0**23)
        match = torch.zeros_like(z, dtype=torch.bool)
        for step in (-1.0, 0.0, 1.0):
            u = ((k + step) * 2.0**-23).float()
            match |= (u * self.theta) == z
        hit = (match & (z.abs() < 2.0**-5)).any(dim=1).double()
        return torch.stack([1.0 - hit, hit], dim=1)


def _images(raised: int, zeros: int, ones: int = 0):
    """x0: background 128/255, ``zeros`` watched pixels at 0 (and ``ones`` at 1/255); x1 raises
    the first ``raised`` zero pixels by 1/255."""
    generator = torch.Generator().manual_seed(7)
    order = torch.randperm(math.prod(PIXELS), generator=generator)
    watched = order[: zeros + ones]
    x0 = torch.full((math.prod(PIXELS),), 128.0 / 255)
    x0[watched[:zeros]] = 0.0
    x0[watched[zeros:]] = 1.0 / 255
    x1 = x0.clone()
    x1[watched[:raised]] = 1.0 / 255
    return watched, x0.reshape(PIXELS), x1.reshape(PIXELS)


def _false_certificate(model, x0, x1, theta, norm, sound, device, n):
    """Certify x0; return (certificate, whether x1 lies in its region yet the smoothed class at
    x1 -- a 1,000-vote majority -- is another one)."""
    generator = torch.Generator(device=device).manual_seed(11)
    law = Noise(Norm(norm), sound).law(theta, x0.shape)
    certificate = certify(model, x0.to(device), law, Sampling(100, n, ALPHA, 1000), generator)
    stated = theta if sound is None else sound_theta(theta, norm, sound)
    if isinstance(stated, torch.Tensor):
        stated = stated.cpu()
    delta = (x1 - x0).double() / (stated.double() if isinstance(stated, torch.Tensor) else stated)
    distance = float(torch.linalg.vector_norm(delta, ord=2 if norm == "l2" else 1))
    if certificate.abstained or distance >= certificate.gap:
        return certificate, False
    votes = sample_counts(model, x1.to(device), law, 1000, 1000, generator)
    return certificate, int(votes.argmax()) != certificate.prediction


def _attack_case(case: str, device: str):
    """The issue's three attacks: isotropic l2, per-pixel l2 (thetas in [0.45, 0.55]), l1."""
    if case == "l1":
        watched, x0, x1 = _images(raised=60, zeros=60, ones=120)
        theta = math.sqrt(3.0) * SIGMA
        return "l1", UniformGrid(watched, theta), x0, x1, theta
    watched, x0, x1 = _images(raised=600, zeros=600)
    if case == "l2":
        return "l2", CancellationBits(watched), x0, x1, SIGMA
    per_pixel = 0.45 + 0.1 * torch.rand(PIXELS, generator=torch.Generator().manual_seed(3))
    return "l2", CancellationBits(watched), x0, x1, per_pixel.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["l2", "l2 per pixel", "l1"])
def test_float_noise_forges_certificates_and_sound_noise_does_not(case, device):
    if case == "l1" and device != "cpu":
        pytest.skip("the l1 detector knows the CPU generator's grid of uniform draws")
    norm, model, x0, x1, theta = _attack_case(case, device)
    certificate, forged = _false_certificate(model, x0, x1, theta, norm, None, device, 5_000)
    assert forged, certificate  # the hole of float noise, documented
    assert certificate.prediction == 1 and certificate.radius > 0
    certificate, forged = _false_certificate(model, x0, x1, theta, norm, 255, device, 2_000)
    assert not forged, certificate
    assert certificate.tau < 1e-6
    if norm == "l2":  # the detector sees grid values only, never a fine bit
        assert certificate.prediction == 0 and certificate.n_a == 2_000


# ---------------------------------------------------------------------------------------------
# the budget and the float path's legacy behaviour


def test_total_variation_budget_formula():
    assert total_variation_budget(0.5, "l1", 255, (3, 32, 32)) == 0.0
    per = (2 * math.ceil(9 * 255 * 0.5) + 4) * UNIT
    assert total_variation_budget(0.5, "l2", 255, (3, 32, 32)) == pytest.approx(3072 * per)
    theta = torch.full((3, 32, 32), 0.5)
    assert total_variation_budget(theta, "l2", 255, (3, 32, 32)) == pytest.approx(3072 * per)
    assert total_variation_budget(0.5, "l2", 255, (3, 32, 32)) < 1e-9


def test_sound_and_float_noise_have_the_same_scale():
    generator = torch.Generator().manual_seed(5)
    x = torch.full((64,), 0.5)
    x_int = to_grid(torch.round(x * 255) / 255, 255)
    for norm, theta, std in (("l2", 0.25, 0.25), ("l1", 0.433, 0.433 / math.sqrt(3))):
        sound = draw_sound_(torch.empty(2000, 64), x_int, theta, norm, 255, generator)
        floats = perturb_(torch.empty(2000, 64), x, theta, norm, generator)
        assert float((sound - 128 / 255).std()) == pytest.approx(std, rel=0.02)
        assert float((floats - 0.5).std()) == pytest.approx(std, rel=0.02)
