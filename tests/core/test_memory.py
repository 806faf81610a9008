"""The memory-based certification pass on constructed scenarios (no model needed).

Expected gaps come from closed forms: the sub-region gap ``g_j - ||(x - x_j) / theta_j||_p``
(reassignment) and, for regions displaced along an axis, the touching gap
``(|d_0| - theta_b0 g_b) / theta_a0`` (shrinking).
"""

import math
import time

import numpy as np
import pytest
import torch

from ancer_cli.core.memory import Claim, MemoryDecision, memory_pass
from ancer_cli.core.regions import (
    GAP_TOLERANCE,
    MARGIN,
    largest_disjoint_gap,
    regions_intersect,
    rounding_slack,
    weighted_distance,
)

CPU = torch.device("cpu")
F64 = torch.float64


def run(claims, centers, thetas, norm, progress=None) -> list[MemoryDecision]:
    def theta_of(idx):
        value = thetas[idx] if isinstance(thetas, dict) else thetas
        return value

    return memory_pass(claims, lambda idx: centers[idx], theta_of, norm, CPU, progress)


def point(*values, dtype=F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def distance(x, c, theta, norm) -> float:
    p = 2 if norm == "l2" else 1
    theta = torch.as_tensor(theta, dtype=F64)
    return float(torch.linalg.vector_norm((x.to(F64) - c.to(F64)) / theta, ord=p))


NORMS = ["l2", "l1"]
SHAPES = {"isotropic": (0.5, 0.4), "anisotropic": (point(0.5, 0.1), point(0.4, 2.0))}


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("own_class", [2, 1, -1])
def test_input_inside_an_earlier_region_is_reassigned(norm, shape, own_class):
    theta_0, theta_1 = SHAPES[shape]
    # region 0 (class 1) reaches 1.0 along axis 0; input 1 lies inside it at 0.9
    centers = {0: point(0.0, 0.0), 1: point(0.9, 0.0), 3: point(1.1, 0.0), 7: point(9.0, 9.0)}
    thetas = {0: theta_0, 1: theta_1, 3: 1.0, 7: theta_1}
    gap_1 = 0.0 if own_class == -1 else 1.0
    claims = [Claim(0, 1, 2.0), Claim(1, own_class, gap_1), Claim(3, 3, 0.05), Claim(7, 2, 1.0)]
    decisions = run(claims, centers, thetas, norm)
    expected_gap = 2.0 - distance(centers[1], centers[0], theta_0, norm)
    assert expected_gap == pytest.approx(0.2)
    first, second, third, fourth = decisions
    assert first == MemoryDecision(0, 1, 2.0, 0, False, False)
    assert second.predict == 1 and second.theta_idx == 0 and second.reassigned and not second.shrunk
    assert second.gap == pytest.approx(expected_gap, abs=1e-12) and second.gap <= expected_gap
    # input 1 stored nothing: input 3 lies in the region input 1 would have had (radius 0.3 or
    # more along axis 0), but outside region 0, so it keeps its own certificate
    assert third == MemoryDecision(3, 3, 0.05, 3, False, False)
    assert fourth == MemoryDecision(7, 2, 1.0, 7, False, False)


def test_several_containing_regions_give_the_largest_remaining_gap():
    # two overlapping regions of class 1 (allowed); input 2 lies in both
    centers = {0: point(0.0, 0.0), 1: point(1.5, 0.0), 2: point(0.8, 0.0)}
    claims = [Claim(0, 1, 1.0), Claim(1, 1, 1.0), Claim(2, 4, 3.0)]
    decisions = run(claims, centers, 1.0, "l2")
    assert decisions[1] == MemoryDecision(1, 1, 1.0, 1, False, False)
    assert decisions[2].theta_idx == 1 and decisions[2].predict == 1 and decisions[2].reassigned
    assert decisions[2].gap == pytest.approx(0.3, abs=1e-12)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_overlapping_input_is_shrunk_to_the_touching_gap(norm, shape):
    theta_0, theta_1 = SHAPES[shape]
    centers = {0: point(0.0, 0.0), 1: point(3.0, 0.0), 2: point(-1.5, 0.0)}
    thetas = {0: theta_0, 1: theta_1, 2: theta_1}
    claims = [Claim(0, 1, 2.0), Claim(1, 2, 10.0), Claim(2, 1, 2.0)]
    decisions = run(claims, centers, thetas, norm)
    # region 0 reaches 1.0 along axis 0; input 1's region reaches 3 - 0.4 g' along it: both
    # exact tests find the touching gap (the earlier sufficient l1 test stopped at 3.75)
    touching = (3.0 - 1.0) / 0.4
    shrunk = decisions[1]
    assert shrunk.shrunk and not shrunk.reassigned and shrunk.predict == 2 and shrunk.theta_idx == 1
    assert touching - GAP_TOLERANCE * 10.0 <= shrunk.gap <= touching
    # same class overlaps are allowed: input 2 (class 1) overlaps region 0 and keeps its gap
    assert decisions[2] == MemoryDecision(2, 1, 2.0, 2, False, False)
    assert regions_intersect(
        centers[2],
        theta_1,
        2.0,
        centers[0][None],
        torch.as_tensor(theta_0).reshape(1, -1),
        [2.0],
        norm,
    )[0]


def test_abstentions_are_never_stored():
    centers = {0: point(0.0, 0.0), 1: point(0.1, 0.0), 2: point(0.15, 0.0)}
    claims = [Claim(0, -1, 0.0), Claim(1, 2, 1.0), Claim(2, 3, 0.5)]
    decisions = run(claims, centers, 1.0, "l2")
    assert decisions[0] == MemoryDecision(0, -1, 0.0, 0, False, False)
    assert decisions[1] == MemoryDecision(1, 2, 1.0, 1, False, False)
    # input 1 was stored: input 2 lies in its region
    assert decisions[2].reassigned and decisions[2].predict == 2
    assert decisions[2].gap == pytest.approx(0.95, abs=1e-12)


@pytest.mark.parametrize("norm", NORMS)
def test_no_collisions_change_nothing(norm):
    rng = np.random.default_rng(0)
    claims, centers, thetas = [], {}, {}
    for k in range(60):
        idx = 3 * k + 1
        centers[idx] = torch.tensor([10.0 * (k % 8), 10.0 * (k // 8), 0.0], dtype=torch.float32)
        thetas[idx] = torch.tensor(rng.uniform(0.1, 1.0, 3), dtype=torch.float32)
        abstain = k % 7 == 0
        claims.append(Claim(idx, -1 if abstain else int(rng.integers(5)), 0.0 if abstain else 3.0))
    decisions = run(claims, centers, thetas, norm)
    assert decisions == [MemoryDecision(c.idx, c.predict, c.gap, c.idx, False, False) for c in claims]


def reference_pass(claims, centers, thetas, norm) -> list[MemoryDecision]:
    """Steps 1-3 of the memory pass literally: every stored region tested, no screening, no blocks."""
    stored: list[tuple[torch.Tensor, torch.Tensor, float, int, int]] = []
    decisions = []
    for claim in claims:
        x = centers[claim.idx].reshape(-1).to(F64)
        theta = torch.as_tensor(thetas[claim.idx], dtype=F64).reshape(-1)
        theta = theta.expand(x.numel()) if theta.numel() == 1 else theta
        if stored:
            c = torch.stack([s[0] for s in stored])
            t = torch.stack([s[1] for s in stored])
            g = torch.tensor([s[2] for s in stored], dtype=F64)
            dist = weighted_distance(x, c, t, norm)
            inside = dist <= g * (1 + MARGIN)
            if inside.any():
                remaining = g - dist * (1 + rounding_slack(x.numel()))
                remaining[~inside] = -math.inf
                j = int(remaining.argmax())
                gap = max(float(remaining[j]), 0.0)
                decisions.append(MemoryDecision(claim.idx, stored[j][3], gap, stored[j][4], True, False))
                continue
        if claim.predict == -1:
            decisions.append(MemoryDecision(claim.idx, -1, claim.gap, claim.idx, False, False))
            continue
        rivals = [k for k, s in enumerate(stored) if s[3] != claim.predict]
        gap = claim.gap
        if rivals:
            gap = largest_disjoint_gap(
                x,
                theta,
                claim.gap,
                torch.stack([stored[k][0] for k in rivals]),
                torch.stack([stored[k][1] for k in rivals]),
                [stored[k][2] for k in rivals],
                norm,
            )
        stored.append((x, theta, gap, claim.predict, claim.idx))
        decisions.append(MemoryDecision(claim.idx, claim.predict, gap, claim.idx, False, gap < claim.gap))
    return decisions


def random_scenario(norm, shape, n=600, seed=0):
    """Crowded 2-D inputs: many reassignments and shrinks, across several blocks."""
    rng = np.random.default_rng(seed)
    centers, thetas, claims = {}, {}, []
    for k in range(n):
        idx = 2 * k + int(rng.integers(2))
        centers[idx] = torch.tensor(rng.uniform(0, 6, 2), dtype=torch.float32)
        if shape == "isotropic":
            thetas[idx] = float(rng.uniform(0.05, 0.4))
        else:
            thetas[idx] = torch.tensor(rng.uniform(0.02, 0.5, 2), dtype=torch.float32)
        abstain = rng.uniform() < 0.1
        predict = -1 if abstain else int(rng.integers(3))
        claims.append(Claim(idx, predict, 0.0 if abstain else float(rng.uniform(0, 3))))
    return claims, centers, thetas


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_stored_regions_of_different_classes_are_disjoint(norm, shape):
    claims, centers, thetas = random_scenario(norm, shape)
    seen = []
    decisions = run(claims, centers, thetas, norm, progress=lambda done, total: seen.append(done))
    assert seen == list(range(1, len(claims) + 1))
    assert sum(d.reassigned for d in decisions) > 50 and sum(d.shrunk for d in decisions) > 20

    by_idx = {d.idx: d for d in decisions}
    stored = [d for d in decisions if not d.reassigned and d.predict != -1]
    c = torch.stack([centers[d.idx] for d in stored]).to(F64)
    t = torch.stack(
        [torch.as_tensor(thetas[d.idx], dtype=F64).reshape(-1).expand(2) for d in stored]
    )
    g = torch.tensor([d.gap for d in stored], dtype=F64)
    classes = torch.tensor([d.predict for d in stored])
    rng = np.random.default_rng(1)
    p = 2 if norm == "l2" else 1
    for k, d in enumerate(stored):
        rivals = classes != d.predict
        # exact test: no stored region of another class meets this one
        assert not regions_intersect(c[k], t[k], d.gap, c[rivals], t[rivals], g[rivals], norm).any()
        # brute force: points of this region lie in no rival region
        u = torch.tensor(rng.normal(size=(200, 2)))
        u = u / torch.linalg.vector_norm(u, ord=p, dim=1, keepdim=True)
        samples = c[k] + u * t[k] * d.gap * torch.rand(200, 1, dtype=F64)
        offsets = (samples[:, None, :] - c[rivals][None]) / t[rivals][None]
        assert (torch.linalg.vector_norm(offsets, ord=p, dim=2) > g[rivals]).all()

    for claim, d in zip(claims, decisions, strict=True):
        assert d.idx == claim.idx
        if d.reassigned:
            # the sub-region lies inside a stored region and carries its class and theta
            home = by_idx[d.theta_idx]
            assert not home.reassigned and home.predict != -1 and home.predict == d.predict
            theta = thetas[d.theta_idx]
            reach = distance(centers[d.idx], centers[d.theta_idx], theta, norm) + d.gap
            assert reach <= home.gap * (1 + 1e-9)
        elif claim.predict == -1:
            assert d == MemoryDecision(claim.idx, -1, claim.gap, claim.idx, False, False)
        else:
            assert d.theta_idx == d.idx and d.predict == claim.predict
            assert d.shrunk == (d.gap < claim.gap) and d.gap <= claim.gap

    # the screened, blocked pass makes exactly the decisions of the literal algorithm
    expected = reference_pass(claims, centers, thetas, norm)
    for got, want in zip(decisions, expected, strict=True):
        assert (got.idx, got.predict, got.theta_idx, got.reassigned, got.shrunk) == (
            want.idx,
            want.predict,
            want.theta_idx,
            want.reassigned,
            want.shrunk,
        )
        assert got.gap == pytest.approx(want.gap, abs=1e-12)


def test_float64_inputs_and_mixed_thetas():
    # float64 centres and Python-float thetas are stored without rounding to float32
    centers = {0: point(0.0, 0.0, dtype=F64), 1: point(0.1 + 2.0, 0.0, dtype=F64)}
    thetas = {0: 0.1, 1: torch.tensor([0.1, 0.3], dtype=F64)}
    decisions = run([Claim(0, 0, 10.0), Claim(1, 1, 20.0)], centers, thetas, "l2")
    touching = (2.1 - 1.0) / 0.1
    assert touching - 20 * GAP_TOLERANCE <= decisions[1].gap <= touching


def test_bad_input_is_refused():
    centers = {0: point(0.0, 0.0), 1: point(1.0, 0.0), 2: point(1.0, 0.0, 0.0)}
    with pytest.raises(ValueError, match="increasing idx"):
        run([Claim(1, 0, 1.0), Claim(0, 0, 1.0)], centers, 1.0, "l2")
    with pytest.raises(ValueError, match="expected 2 entries"):
        run([Claim(0, 0, 1.0), Claim(2, 0, 1.0)], centers, 1.0, "l2")
    with pytest.raises(ValueError, match="theta of input 0"):
        run([Claim(0, 0, 1.0)], centers, torch.ones(3), "l2")
    with pytest.raises(ValueError, match="gap"):
        run([Claim(0, 0, math.nan)], centers, 1.0, "l2")
    assert run([], centers, 1.0, "l2") == []


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_ten_thousand_regions_of_dimension_3072(norm):
    n, dim = 10_000, 3_072
    generator = torch.Generator().manual_seed(0)
    centers = torch.rand(n, dim, generator=generator)
    thetas = 0.2 + 0.4 * torch.rand(n, dim, generator=generator)
    gaps = (0.5 + 2.5 * torch.rand(n, generator=generator)).tolist()
    classes = torch.randint(0, 10, (n,), generator=generator).tolist()
    # deliberate collisions: every 50th input next to an earlier one -- inside its region (a
    # step of weighted norm 0.1) or overlapping it (a step of 1.2 along one axis)
    collisions = {}
    for i in range(100, n, 50):
        j = i - 37
        if i % 100 == 0:
            step = torch.randn(dim, generator=generator)
            p = 2 if norm == "l2" else 1
            step *= 0.1 / float(torch.linalg.vector_norm(step / thetas[j], ord=p))
        else:
            step = torch.zeros(dim)
            step[0] = 1.2
        centers[i] = centers[j] + step
        collisions[i] = j
    claims = [Claim(i, -1, 0.0) if i % 97 == 0 else Claim(i, classes[i], gaps[i]) for i in range(n)]
    began = time.perf_counter()
    decisions = memory_pass(claims, centers.__getitem__, thetas.__getitem__, norm, CPU)
    seconds = time.perf_counter() - began
    print(f"\nmemory pass, {n} x {dim}, {norm}: {seconds:.1f} s")
    reassigned = {d.idx for d in decisions if d.reassigned}
    inside = {
        i
        for i, j in collisions.items()
        if j % 97 != 0
        and weighted_distance(centers[i], centers[j][None], thetas[j][None], norm) <= gaps[j]
    }
    assert reassigned == inside
    assert {i for i in collisions if i % 100 == 0 and (i - 37) % 97 != 0} <= inside
    shrunk = {d.idx for d in decisions if d.shrunk}
    assert shrunk and shrunk <= set(collisions)
    for i, j in collisions.items():
        a, b = decisions[i], decisions[j]
        if not a.reassigned and a.predict not in (-1, b.predict) and b.predict != -1:
            meets = regions_intersect(
                centers[i], thetas[i], a.gap, centers[j][None], thetas[j][None], [b.gap], norm
            )
            assert not meets.any()
