"""The audit search against a linear oracle whose smoothed classifier flips at a known place.

For ``class 1 iff s(x) = w.x + b > 0`` and symmetric noise (Gaussian or uniform, any theta), the
smoothed classifier says 1 exactly where ``s > 0``. Over the region ``{x + theta u : ||u||_p <=
g}`` the smallest score is ``s(x) - g ||theta w||_q`` (q = 2 for p = 2, q = inf for p = 1), so
the region is honest iff ``g <= g* = s(x) / ||theta w||_q``. An honest region must yield no
candidate of class 0, and a region three times too large must yield one, inside it.
"""

from fractions import Fraction

import pytest
import torch
from torch import nn

from ancer_cli.core.attack import AttackConfig
from ancer_cli.core.audit import BOUNDARY, AuditConfig, CertifiedRegion, audit_regions
from ancer_cli.core.choices import Norm
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.sound import to_grid
from tests.toys import SteepLinear2

SHAPE = (1, 4, 4)
LEVELS = 255
FAST = AuditConfig(AttackConfig(steps=20, samples=16, evaluation_samples=64), boundary_points=8)


def generators(count: int, seed: int = 0, first: int = 0) -> list[torch.Generator]:
    return [input_generator(seed, first + i, "cpu", Stream.audit) for i in range(count)]


def audit(
    model, centers, thetas, gaps, predictions, norm, streams, config=AuditConfig(), levels=None
):
    """:func:`audit_regions` of the regions ``(theta, gap, prediction)`` around ``centers``
    (``levels``: the pixel grid the candidates are rounded to)."""
    regions = [
        CertifiedRegion(NoiseLaw(Norm(norm), theta, levels), gap, prediction)
        for theta, gap, prediction in zip(thetas, gaps, predictions, strict=True)
    ]
    return audit_regions(model, centers, regions, streams, config)


def linear_region(norm: str, anisotropic: bool):
    """The model, the centre (on the grid), theta and the flip gap ``g*`` of one region."""
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    x = torch.full(SHAPE, 128 / LEVELS)
    theta = (
        0.05 + 0.1 * torch.rand(SHAPE, generator=torch.Generator().manual_seed(4))
        if anisotropic
        else torch.tensor(0.08)
    )
    margin = 0.3
    model = SteepLinear2(w, margin - float((w * x).sum()))
    weighted = (theta * w).flatten()
    flip = margin / float(weighted.norm() if norm == "l2" else weighted.abs().max())
    return model, w, x, theta, flip


def scores(model: SteepLinear2, w: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    return points.flatten(-3).double() @ w.flatten().double() + model.b


def exact_distance(x: torch.Tensor, point: torch.Tensor, theta: torch.Tensor, norm: str):
    """``||(p - x) / theta||_2^2`` (l2) or ``||(p - x) / theta||_1`` (l1) in rationals, from the
    integer grid steps."""
    steps = (to_grid(point, LEVELS) - to_grid(x, LEVELS)).flatten().tolist()
    thetas = theta.expand(SHAPE).flatten().tolist()
    ratios = [Fraction(j, LEVELS) / Fraction(t) for j, t in zip(steps, thetas, strict=True)]
    if norm == "l2":
        return sum((r * r for r in ratios), Fraction(0))
    return sum((abs(r) for r in ratios), Fraction(0))


@pytest.mark.parametrize("norm", ["l2", "l1"])
@pytest.mark.parametrize("anisotropic", [False, True])
def test_honest_regions_yield_no_flip_and_oversized_ones_do(norm, anisotropic):
    model, w, x, theta, flip = linear_region(norm, anisotropic)
    gaps = [0.8 * flip, 3.0 * flip]
    result = audit(
        model,
        x.expand(2, *SHAPE),
        [theta, theta],
        gaps,
        [1, 1],
        norm,
        generators(2),
        FAST,
        levels=LEVELS,
    )
    count = FAST.candidates(2)
    assert result.points.shape == (2, count, *SHAPE)
    assert result.distance.shape == result.margin.shape == result.target.shape == (2, count)
    assert result.probabilities.shape == (2, count, 2)
    s = scores(model, w, result.points)
    # honest: every candidate keeps class 1 (its soft margin, an estimate on 64 draws, may
    # stray near the boundary: the caller confirms on fresh draws) and the search gets close to
    # the region's worst score s - 0.8 g* ||theta w||_q = 0.06
    assert (s[0] > 0).all()
    assert float(s[0].min()) < 0.1
    # three times too large: the gradient search crosses the boundary, inside the region
    searched = result.target[1] == 0
    assert searched.sum() == 1
    assert float(s[1][searched]) < 0
    assert float(result.margin[1][searched]) > 0
    # the search gets close to the region's worst score s - g ||theta w||_q = -2 margin
    assert float(s[1][searched]) < -0.5
    for b, gap in enumerate(gaps):
        assert (result.distance[b] <= gap).all()
        bound = Fraction(gap) ** 2 if norm == "l2" else Fraction(gap)
        for point in result.points[b]:
            assert exact_distance(x, point, theta, norm) <= bound  # to_grid: on the grid
    total = result.probabilities.sum(dim=2)
    torch.testing.assert_close(total, torch.ones(2, count).double(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_boundary_points_lie_on_the_regions_sphere_without_a_grid(norm):
    model, _, x, theta, flip = linear_region(norm, anisotropic=True)
    config = AuditConfig(AttackConfig(steps=2, samples=4, evaluation_samples=8), targets=0)
    result = audit(model, x[None], [theta], [flip], [1], norm, generators(1), config)
    assert (result.target == BOUNDARY).all()
    assert result.points.shape[1] == config.boundary_points
    # grey centre, small region: no clipping, so every point is on the sphere (inside it)
    assert (result.distance <= flip).all()
    assert (result.distance >= flip * (1 - 1e-4)).all()  # float32 points


class ThreeWay(nn.Module):
    """Logits ``10 (x_0, x_1, x_2)``: the runner-ups of a point are its smaller coordinates."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * x.flatten(1)[:, :3]


def test_targets_are_the_runner_ups_and_results_do_not_depend_on_the_batch():
    x = torch.zeros((2, *SHAPE))
    x[0].view(-1)[:3] = torch.tensor([153, 51, 128]) / LEVELS
    x[1].view(-1)[:3] = torch.tensor([77, 179, 26]) / LEVELS
    config = AuditConfig(AttackConfig(steps=3, samples=4, restarts=2, evaluation_samples=16))
    thetas = [0.1, torch.full(SHAPE, 0.2)]
    together = audit(ThreeWay(), x, thetas, [0.5, 0.4], [0, 1], "l2", generators(2), config, LEVELS)
    # class 0's runner-ups: 2 then 1; class 1's: 0 then 2; two restarts each
    assert together.target[0, :4].tolist() == [2, 2, 1, 1]
    assert together.target[1, :4].tolist() == [0, 0, 2, 2]
    assert (together.target[:, 4:] == BOUNDARY).all()
    assert together.forward_equivalents.tolist() == [config.forward_equivalents(3)] * 2
    for i in range(2):
        alone = audit(
            ThreeWay(),
            x[i : i + 1],
            thetas[i : i + 1],
            [[0.5, 0.4][i]],
            [[0, 1][i]],
            "l2",
            generators(1, first=i),
            config,
            LEVELS,
        )
        # on the grid, exactly; the soft probabilities to the last bits of vectorized kernels
        assert torch.equal(alone.points[0], together.points[i])
        torch.testing.assert_close(
            alone.probabilities[0], together.probabilities[i], rtol=0, atol=1e-6
        )


def test_arguments_are_checked():
    region = CertifiedRegion(NoiseLaw(Norm.l2, 0.1), 1.0, 0)
    with pytest.raises(ValueError, match="one region and generator per centre"):
        audit_regions(ThreeWay(), torch.zeros((1, *SHAPE)), [region, region], [])
    assert AuditConfig().forward_equivalents(10) == 3 * 2 * 50 * 32 + (1 + 18) * 256


@pytest.mark.cuda
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_audit_on_cuda_finds_the_flip_of_an_oversized_region(norm):
    model, w, x, theta, flip = linear_region(norm, anisotropic=True)
    cuda = torch.device("cuda")
    model = SteepLinear2(w.to(cuda), model.b)
    streams = [input_generator(0, i, cuda, Stream.audit) for i in range(2)]
    result = audit(
        model,
        x.to(cuda).expand(2, *SHAPE),
        [theta.to(cuda)] * 2,
        [0.8 * flip, 3.0 * flip],
        [1, 1],
        norm,
        streams,
        FAST,
        levels=LEVELS,
    )
    s = scores(model, w.to(cuda), result.points).cpu()
    assert (s[0] > 0).all() and float(s[1].min()) < 0
    assert (result.distance[0] <= 0.8 * flip).all() and (result.distance[1] <= 3 * flip).all()
