"""The audit of certified regions: a search for points inside a region that the smoothed
classifier gives another class.

A certificate with gap ``g`` for class ``c`` at ``x`` says that the smoothed classifier (with the
certificate's own theta and noise law) answers ``c`` everywhere in ``R = {x + d : ||d / theta||_p
<= g}``, p = 2 (an ellipsoid) or 1 (a generalized cross-polytope). Finding a point of ``R`` where
it answers something else, confirmed on fresh draws, shows the certificate wrong. Each honest
certificate may be wrong with probability up to ``alpha`` (the level of its bound); far more
flags than that point at a broken pipeline (float noise, a model reading its batch, a tampered
results file).

The search works in ``u = d / theta``, where ``R`` is the plain l_p ball of radius ``g``:

* towards each of the ``targets`` runner-up classes ``c'`` (by the soft smoothed classifier at
  ``x``), projected gradient ascent of ``log G(x')_c' - log G(x')_c``
  (:func:`~ancer_cli.core.attack.projected_ascent` with ``scale = theta``): steps in the region's
  own geometry (the steepest step of the l_p norm of ``u``) and the Euclidean projection in
  ``u``. That projection is not the Euclidean projection onto ``R`` in ``d`` -- it gives the
  nearest point of ``R`` in the metric ``||(p - q) / theta||_2`` instead -- but it maps onto
  ``R`` and keeps points of ``R`` fixed, which is all projected ascent needs;
* ``boundary_points`` random points on the boundary sphere of ``R``: uniform on the l2 or l1
  sphere in ``u``, scaled by ``theta``.

Every candidate is clipped to [0, 1] and, given the data's grid, rounded to it toward ``x``
(:func:`~ancer_cli.core.attack.fit_into_ball`), so it stays in ``R``; the search radius is ``g (1 -
max(MARGIN, rounding_slack(D)))``, so that a candidate measured inside in float64 is inside for the
exact numbers. Candidates come back with their distance ``||d / theta||_p`` and their soft
probabilities on common draws; confirming a flip (PREDICT or CERTIFY on fresh draws at large
N: :func:`~ancer_cli.core.smoothing.predict_many`,
:func:`~ancer_cli.core.smoothing.sample_counts_many`) is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ancer_cli.core.attack import (
    SearchRegion,
    ball_norms,
    common_noise_log_probabilities,
    fit_into_ball,
    plain,
    projected_ascent,
    scaled_perturbation,
    theta_batch,
    uniform_in_ball,
)
from ancer_cli.core.attack_settings import AuditConfig, Threat
from ancer_cli.core.choices import Norm
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.optimize.search import common_noise_seeds
from ancer_cli.core.regions import MARGIN, rounding_slack

BOUNDARY = -1
"""``AuditResult.target`` of a random point on the region's boundary."""


@dataclass(frozen=True)
class CertifiedRegion:
    """One certificate's region around its input: ``{x + d : ||d / theta||_p <= gap}`` for class
    ``prediction``, with the certificate's noise law (its theta, norm -- p = 2 or 1 -- and
    grid)."""

    law: NoiseLaw
    gap: float
    prediction: int


@dataclass(frozen=True)
class AuditResult:
    """Candidates of ``B`` certified regions, ``n`` each (targets x restarts, then boundary
    points).

    ``points`` ``(B, n, C, H, W)``; ``distance`` float64 ``(B, n)``: ``||(p - x) / theta||_p``,
    every one ``<= gap`` (on a grid, from the integer steps); ``probabilities`` float64
    ``(B, n, K)``: the soft smoothed classifier ``G(p)`` on ``evaluation_samples`` draws common to
    all candidates of a region; ``target`` int64 ``(B, n)``: the class searched towards, or
    :data:`BOUNDARY`; ``margin`` float64 ``(B, n)``: ``max_{c' != c} G_c' - G_c``, positive where
    the soft classifier prefers another class (the candidates to confirm first);
    ``probabilities_center`` ``(B, K)``: ``G(x)`` on the same draws; ``forward_equivalents``
    int64 ``(B,)``.
    """

    points: torch.Tensor
    distance: torch.Tensor
    probabilities: torch.Tensor
    target: torch.Tensor
    margin: torch.Tensor
    probabilities_center: torch.Tensor
    forward_equivalents: torch.Tensor


def region_distance(
    x: torch.Tensor, points: torch.Tensor, theta: torch.Tensor, norm: Norm | str, levels: int | None
) -> torch.Tensor:
    """``||(p - x) / theta||_p`` in float64, ``(B,)``: ``x``, ``points`` ``(B, C, H, W)``, ``theta``
    ``(B, 1, 1, 1)`` or ``(B, C, H, W)``; on a grid from the integer steps (as
    :func:`~ancer_cli.core.attack.fit_into_ball` measures)."""
    return ball_norms(scaled_perturbation(x, points, theta, levels), Threat(Norm(norm).value))


def audit_regions(
    model: nn.Module,
    centers: torch.Tensor,
    regions: Sequence[CertifiedRegion],
    generators: Sequence[torch.Generator],
    config: AuditConfig = AuditConfig(),
) -> AuditResult:
    """Search each certified region (one per centre) for points the smoothed classifier gives
    another class (see the module's docstring).

    Args:
        model: maps a batch ``(b, C, H, W)`` in [0, 1] to logits ``(b, K)``.
        centers: ``(B, C, H, W)``, the certified inputs, on the model's device (on the laws'
            grid where they have one).
        regions: per centre, its certified region (gap ``> 0``).
        generators: one per region, on the centres' device, a stream of its own (e.g.
            ``input_generator(seed, index, device, Stream.audit)``, never the certificate's):
            results do not depend on the batch.

    Returns:
        :class:`AuditResult`.
    """
    batch = centers.shape[0]
    if not (len(regions) == len(generators) == batch):
        raise ValueError(
            f"need one region and generator per centre: got {batch} centres, {len(regions)} "
            f"regions and {len(generators)} generators"
        )
    laws = [region.law for region in regions]
    norm, levels = laws[0].norm, laws[0].grid
    thetas = [law.theta for law in laws]
    gaps = [region.gap for region in regions]
    predictions = [region.prediction for region in regions]
    ball = Threat(Norm(norm).value)
    search = config.search
    device, shape = centers.device, centers.shape[1:]
    x = centers.detach()
    theta = theta_batch(thetas, x)
    c = torch.as_tensor(predictions, dtype=torch.int64, device=device).reshape(-1)
    safety = 1.0 - max(MARGIN, rounding_slack(x[0].numel()))
    radius = torch.as_tensor(gaps, dtype=torch.float64, device=device).reshape(-1) * safety

    seeds = common_noise_seeds(generators)

    def evaluate(points: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """``G`` ``(len(rows), K)`` at ``points`` on the common draws of regions ``rows``."""
        index = torch.as_tensor(rows, device=device)
        log_g = common_noise_log_probabilities(
            model,
            points,
            theta.index_select(0, index),
            norm,
            [seeds[r] for r in rows],
            search.evaluation_samples,
            search.samples,
        )
        return log_g.double().exp()

    center_p = evaluate(x, range(batch))
    classes = center_p.shape[1]
    targets = min(config.targets, classes - 1)
    runner_up = center_p.scatter(1, c[:, None], -1.0).topk(targets, dim=1).indices  # (B, t)

    # one search row per (region, target), its own generator seeded from the region's stream
    rows = [b for b in range(batch) for _ in range(targets)]
    row_generators = []
    for seed in common_noise_seeds([g for g in generators for _ in range(targets)]):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        row_generators.append(generator)
    index = torch.as_tensor(rows, dtype=torch.int64, device=device)
    row_c = plain(c.index_select(0, index)[:, None])
    row_target = plain(runner_up.reshape(-1, 1))

    def towards_target(log_g: torch.Tensor) -> torch.Tensor:
        return (log_g.gather(1, row_target) - log_g.gather(1, row_c)).squeeze(1)

    searched: list[torch.Tensor] = []
    if targets > 0:
        row_x, row_theta = x.index_select(0, index), theta.index_select(0, index)
        region = SearchRegion(row_theta, radius.index_select(0, index), ball)
        row_laws = [laws[b] for b in rows]
        finals = projected_ascent(
            model, row_x, region, towards_target, row_laws, search, row_generators
        )
        # (rows, C, H, W) per restart -> (B, targets x restarts, C, H, W), target-major
        stacked = torch.stack(finals, dim=1).view(batch, targets * search.restarts, *shape)
        searched.append(stacked)

    boundary: list[torch.Tensor] = []
    for _ in range(config.boundary_points):
        u = uniform_in_ball(shape, radius.tolist(), ball, generators, x.dtype, surface=True)
        boundary.append(fit_into_ball(x, x + theta * u, theta, radius, ball, levels))
    if boundary:
        searched.append(torch.stack(boundary, dim=1))
    count = config.candidates(classes)
    points = torch.cat(searched, dim=1) if searched else x.new_empty((batch, 0, *shape))

    flat = points.reshape(batch * count, *shape)
    owners = [b for b in range(batch) for _ in range(count)]
    owner_index = torch.as_tensor(owners, dtype=torch.int64, device=device)
    probabilities = evaluate(flat, owners).view(batch, count, classes)
    distance = region_distance(
        x.index_select(0, owner_index), flat, theta.index_select(0, owner_index), norm, levels
    ).view(batch, count)
    own = probabilities.gather(2, c.view(batch, 1, 1).expand(batch, count, 1)).squeeze(2)
    others = probabilities.scatter(2, c.view(batch, 1, 1).expand(batch, count, 1), -1.0)
    margin = others.amax(dim=2) - own
    target = torch.full((batch, count), BOUNDARY, dtype=torch.int64, device=device)
    if targets > 0:
        aimed = runner_up.repeat_interleave(search.restarts, dim=1)  # restarts of one target
        target[:, : targets * search.restarts] = aimed
    return AuditResult(
        points=points,
        distance=distance,
        probabilities=probabilities,
        target=target,
        margin=margin,
        probabilities_center=center_p,
        forward_equivalents=torch.full(
            (batch,), config.forward_equivalents(classes), dtype=torch.int64, device=device
        ),
    )
