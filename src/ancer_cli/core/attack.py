"""The SmoothAdv attack: projected gradient ascent on the soft smoothed classifier.

Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers"
(NeurIPS 2019), attack the smoothed classifier itself rather than its base classifier: the soft
smoothed classifier ``G(x) = E_delta[softmax(f(x + delta))]``, with ``delta`` the smoothing noise
(``theta * z``, ``z ~ N(0, I)`` for l2, ``theta * u``, ``u ~ U[-1, 1]^d`` for l1), is smooth in
``x``, and ``G`` and its gradient have unbiased Monte Carlo estimates from ``m`` noise draws.
The attack maximises ``-log G(x')_y`` over the ball ``||x' - x|| <= eps`` (and ``x'`` in [0, 1])
by projected gradient ascent along the plug-in estimate ``g = -grad_x' log((1/m) sum_i
softmax(f(x' + delta_i))_y)`` (consistent as ``m`` grows; the log of a mean is biased low):

* l2: ``x' += a g / ||g||_2``, then the Euclidean projection onto the ball (a rescaling);
* l-infinity: ``x' += a sign(g)``, then a clip to the box;
* l1: a sparse steepest-ascent step -- the sign of ``g`` on its ``k`` largest coordinates
  (``k = ceil((1 - q) d)``, ``q = l1_sparsity``), scaled to l1 length ``a``, coordinates that
  would leave [0, 1] excluded: the SLIDE step of Tramer and Boneh ("Adversarial training and
  robustness for multiple perturbations", NeurIPS 2019), since the exact l1 steepest step moves
  one coordinate only -- then the Euclidean projection onto the l1 ball (Duchi et al.,
  "Efficient projections onto the l1-ball for learning in high dimensions", ICML 2008).

Every iterate is clipped to [0, 1] *before* the projection: the three projections move each
coordinate towards ``x`` (l2 rescales ``d``, l1 soft-thresholds ``|d_i|``, l-infinity clips
``|d_i|``), and a point between ``x`` and a point of [0, 1]^d stays in [0, 1]^d, so the iterate
lies in the ball and in the box at once.

Everything works on a batch of inputs ``(B, C, H, W)``. Each input draws all its randomness (the
noise, random starts, the common noise of the final evaluation) from its own generator in an
order that does not depend on the batch, so its result does not depend on which inputs share its
forward passes -- up to the last bits of the arithmetic (vectorized ``exp`` and softmax kernels
treat a batch's tail apart; GPU libraries choose algorithms by batch size): float points agree
to rounding, points on a grid exactly but at a rounding tie. The search runs in coordinates
``u`` with ``x' = x + scale * u`` and a ball of radius ``radius`` in ``u``: ``scale = 1`` for the
attack, ``scale = theta`` for the audit of a certified region (:mod:`ancer_cli.core.audit`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ancer_cli.core.attack_settings import AttackConfig, Threat
from ancer_cli.core.choices import Norm
from ancer_cli.core.conditioning import tell_thetas
from ancer_cli.core.law import NoiseLaw
from ancer_cli.core.noise import Theta, draw_base_noise_
from ancer_cli.core.optimize.search import common_noise_seeds
from ancer_cli.core.regions import rounding_slack
from ancer_cli.core.smoothing import chunk_sizes
from ancer_cli.core.sound import to_grid

GRID_SNAP = 1e-4
"""A float iterate within this many grid steps of a grid level counts as on it before the
rounding toward the clean input: float32 represents ``k / s`` only to about ``1e-5`` steps, and
``eps = 8/255`` must allow 8 levels. Membership is then checked in integer grid units."""

_MAX_FIT_ROUNDS = 64
"""Rounds of :func:`fit_into_ball`'s check and shrink before it gives up (two are typical)."""


@dataclass(frozen=True)
class Ball:
    """The attacker's ball ``||x' - x||_threat <= eps``."""

    threat: Threat
    eps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "threat", Threat(self.threat))
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")


@dataclass(frozen=True)
class SearchRegion:
    """Where :func:`projected_ascent` searches: ``x' = x + scale * u`` with ``||u||_ball <=
    radius``; ``scale`` ``(B, 1, 1, 1)`` or ``(B, C, H, W)``, ``radius`` ``(B,)``."""

    scale: torch.Tensor
    radius: torch.Tensor
    ball: Threat


AscentObjective = Callable[[torch.Tensor], torch.Tensor]
"""Maps ``log G`` ``(B, K)`` (log soft smoothed probabilities) to ``(B,)`` values to maximise."""


@dataclass(frozen=True)
class AttackResult:
    """The attacked points of a batch and what they cost.

    ``points`` ``(B, C, H, W)`` lie in the ball, in [0, 1] and, given a grid, on it; ``norm_l2``,
    ``norm_l1``, ``norm_linf`` (float64 ``(B,)``) are ``||points - x||`` (on a grid, computed
    from the integer steps: :func:`perturbation_norms`); ``p_true`` and ``p_true_clean``
    (float64 ``(B,)``) the soft smoothed probability ``G(.)_y`` of the label at the point and at
    ``x``, on the same ``evaluation_samples`` draws; ``forward_equivalents`` int64 ``(B,)``.
    """

    points: torch.Tensor
    norm_l2: torch.Tensor
    norm_l1: torch.Tensor
    norm_linf: torch.Tensor
    p_true: torch.Tensor
    p_true_clean: torch.Tensor
    forward_equivalents: torch.Tensor


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's parameters with ``requires_grad`` off (gradients reach the input only),
    restored on exit."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """A detached copy that autograd may save, even of a tensor made in inference mode (an
    objective's class indices, when the caller holds ``torch.inference_mode``)."""
    with torch.inference_mode(False):
        return tensor.detach().clone()


# ---------------------------------------------------------------------------------------------
# projections onto balls, rows of a batch at once


def _radii(radius: torch.Tensor | float, delta: torch.Tensor) -> torch.Tensor:
    """The per-row radii ``(B, 1)`` in ``delta``'s dtype and device."""
    rows = torch.as_tensor(radius, dtype=delta.dtype, device=delta.device)
    return rows.reshape(-1, 1).expand(delta.shape[0], 1)


def project_l2(delta: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` ``(B, ...)`` onto ``{||d||_2 <= r_b}``: the
    row rescaled by ``min(1, r_b / ||d||_2)``. ``radius``: a number or ``(B,)``."""
    flat = delta.flatten(1)
    length = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    tiny = torch.finfo(flat.dtype).tiny
    factor = torch.clamp(_radii(radius, flat) / length.clamp_min(tiny), max=1.0)
    return (flat * factor).view_as(delta)


def project_linf(delta: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection onto ``{||d||_inf <= r_b}``: each coordinate clipped to
    ``[-r_b, r_b]``."""
    flat = delta.flatten(1)
    bound = _radii(radius, flat)
    return torch.minimum(torch.maximum(flat, -bound), bound).view_as(delta)


def project_l1(delta: torch.Tensor, radius: torch.Tensor | float) -> torch.Tensor:
    """Euclidean projection onto ``{||d||_1 <= r_b}`` (Duchi et al., ICML 2008, Figure 1).

    A row inside stays; otherwise ``w_i = sign(d_i) max(|d_i| - tau, 0)`` with the threshold
    ``tau = (sum_{j <= rho} mu_j - r) / rho``, ``mu`` the ``|d_i|`` sorted decreasingly and
    ``rho`` the largest ``j`` with ``mu_j > (sum_{i <= j} mu_i - r) / j``. ``O(D log D)`` a row.
    """
    flat = delta.flatten(1)
    size = torch.abs(flat)
    bound = _radii(radius, flat)
    inside = size.sum(dim=1, keepdim=True) <= bound
    mu = torch.sort(size, dim=1, descending=True).values
    cumulative = mu.cumsum(dim=1)
    index = torch.arange(1, flat.shape[1] + 1, dtype=flat.dtype, device=flat.device)
    active = mu * index > cumulative - bound
    rho = (active * index).amax(dim=1, keepdim=True).clamp_min(1)
    tau = (cumulative.gather(1, rho.long() - 1) - bound) / rho
    projected = torch.sign(flat) * torch.clamp(size - tau, min=0.0)
    return torch.where(inside, flat, projected).view_as(delta)


def project(delta: torch.Tensor, radius: torch.Tensor | float, ball: Threat | str) -> torch.Tensor:
    """Euclidean projection of each row onto its ball (:class:`Threat`: l2, l1 or linf)."""
    ball = Threat(ball)
    if ball is Threat.l2:
        return project_l2(delta, radius)
    if ball is Threat.l1:
        return project_l1(delta, radius)
    return project_linf(delta, radius)


def ball_norms(delta: torch.Tensor, ball: Threat | str) -> torch.Tensor:
    """``||row||`` in the ball's norm, ``(B,)``."""
    order = {Threat.l2: 2.0, Threat.l1: 1.0, Threat.linf: math.inf}[Threat(ball)]
    return torch.linalg.vector_norm(delta.flatten(1), ord=order, dim=1)


# ---------------------------------------------------------------------------------------------
# randomness, per input


def uniform_in_ball(
    shape: Sequence[int],
    radius: torch.Tensor | Sequence[float],
    ball: Threat | str,
    generators: Sequence[torch.Generator],
    dtype: torch.dtype = torch.float32,
    surface: bool = False,
) -> torch.Tensor:
    """One point per generator, uniform in the ball of radius ``radius[b]`` (or, ``surface``, on
    its boundary sphere), shape ``(B, *shape)`` on the generators' device.

    l2: a Gaussian direction, at radius ``r U^(1/D)`` (or ``r``). l1: ``D + 1`` standard
    exponentials ``E`` give ``(E_1..E_D) / sum_{i <= D+1} E_i`` uniform on the simplex
    ``{y >= 0, sum y <= 1}`` (``/ sum_{i <= D} E_i``: uniform on its face ``sum y = 1``, every
    facet of the l1 sphere being congruent), with independent random signs. l-infinity: uniform
    on ``[-r, r]^D`` (no ``surface``).
    """
    ball = Threat(ball)
    dim = math.prod(shape)
    rows = []
    for b, generator in enumerate(generators):
        device = generator.device
        r = float(radius[b])
        if ball is Threat.l2:
            v = torch.empty(dim, dtype=torch.float64, device=device).normal_(generator=generator)
            v = v / torch.linalg.vector_norm(v)
            if not surface:
                u = torch.empty(1, dtype=torch.float64, device=device).uniform_(generator=generator)
                v = v * u ** (1.0 / dim)
        elif ball is Threat.l1:
            e = torch.empty(dim + 1, dtype=torch.float64, device=device)
            e.exponential_(generator=generator)
            v = e[:dim] / (e[:dim].sum() if surface else e.sum())
            signs = torch.randint(0, 2, (dim,), generator=generator, device=device)
            v = v * (2 * signs - 1)
        else:
            if surface:
                raise ValueError("points on the l-infinity sphere are not drawn")
            v = torch.empty(dim, dtype=torch.float64, device=device)
            v.uniform_(-1.0, 1.0, generator=generator)
        rows.append((v * r).to(dtype).view(*shape))
    return torch.stack(rows)


def theta_batch(thetas: Sequence[Theta], like: torch.Tensor) -> torch.Tensor:
    """The noise parameters of a batch as one tensor: ``(B, 1, 1, 1)`` when every theta is a
    number (or a one-entry tensor), else ``(B, C, H, W)``, in ``like``'s dtype and device."""
    if all(not isinstance(t, torch.Tensor) or t.numel() == 1 for t in thetas):
        values = [float(t) for t in thetas]
        shape = (len(values),) + (1,) * (like.dim() - 1)
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(shape)
    rows = [
        torch.as_tensor(t, dtype=like.dtype, device=like.device).expand(like.shape[1:])
        for t in thetas
    ]
    return torch.stack(rows)


def draw_noise(
    shape: Sequence[int],
    norm: Norm | str,
    generators: Sequence[torch.Generator],
    like: torch.Tensor,
) -> torch.Tensor:
    """Unit smoothing noise ``(B, *shape)``, row ``b`` from ``generators[b]`` (standard normal
    for l2, uniform on [-1, 1] for l1), in ``like``'s dtype and device."""
    out = torch.empty((len(generators), *shape), dtype=like.dtype, device=like.device)
    for b, generator in enumerate(generators):
        draw_base_noise_(out[b], norm, generator)
    return out


# ---------------------------------------------------------------------------------------------
# the soft smoothed classifier


def soft_log_probabilities(
    model: nn.Module, points: torch.Tensor, thetas: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """``log G(points)``, ``(B, K)``: the log of ``(1/m) sum_i softmax(f(p + theta eps_i))``.

    ``log_softmax`` and ``logsumexp`` keep it finite and its gradient nonzero where ``G_y``
    rounds to 1 (a confident model: the plain softmax's gradient vanishes there). Differentiable
    in ``points``.

    Args:
        points: ``(B, C, H, W)``; thetas: ``(B, 1, 1, 1)`` or ``(B, C, H, W)``;
        noise: unit noise ``(B, m, C, H, W)``.
    """
    batch, samples = noise.shape[:2]
    noisy = (points.unsqueeze(1) + thetas.unsqueeze(1) * noise).flatten(0, 1)
    tell_thetas(model, thetas)  # a denoising base classifier hears each input's theta
    log_p = torch.log_softmax(model(noisy), dim=1).view(batch, samples, -1)
    return torch.logsumexp(log_p, dim=1) - math.log(samples)


@torch.no_grad()
def common_noise_log_probabilities(
    model: nn.Module,
    points: torch.Tensor,
    thetas: torch.Tensor,
    norm: Norm | str,
    seeds: Sequence[int],
    samples: int,
    samples_per_pass: int,
) -> torch.Tensor:
    """``log G(points)`` ``(B, K)`` on ``samples`` draws replayed from ``seeds[b]`` for row
    ``b``: two calls with the same seeds compare their points on the same noise (common random
    numbers). Forward passes of ``samples_per_pass`` draws per row."""
    generators = []
    for seed in seeds:
        generator = torch.Generator(device=points.device)
        generator.manual_seed(seed)
        generators.append(generator)
    total: torch.Tensor | None = None
    for size in chunk_sizes(samples, samples_per_pass):
        noise = draw_noise((size, *points.shape[1:]), norm, generators, points)
        part = soft_log_probabilities(model, points, thetas, noise) + math.log(size)
        total = part if total is None else torch.logaddexp(total, part)
    if total is None:
        raise ValueError(f"the soft smoothed classifier needs samples >= 1, got {samples}")
    return total - math.log(samples)


# ---------------------------------------------------------------------------------------------
# the final point: in the ball, in [0, 1], on the grid


def _cast_toward(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target`` (float64) in ``x``'s dtype, each coordinate rounded toward ``x``'s: so
    ``|cast - x| <= |target - x|`` coordinate-wise."""
    cast = target.to(x.dtype)
    overshoot = (cast.double() - x.double()).abs() > (target - x.double()).abs()
    return torch.where(overshoot, torch.nextafter(cast, x), cast)


def grid_steps(x: torch.Tensor, points: torch.Tensor, levels: int) -> torch.Tensor:
    """The integer perturbation ``J = s points - s x`` (int64, ``points``' shape) of points on the
    ``1/s`` grid (``s = levels``), each row of ``points`` against the row of ``x``."""
    rows = [
        to_grid(points[b], levels).long() - to_grid(x[b], levels).long()
        for b in range(points.shape[0])
    ]
    return torch.stack(rows)


def scaled_perturbation(
    x: torch.Tensor, points: torch.Tensor, scale: torch.Tensor, levels: int | None
) -> torch.Tensor:
    """``u = (points - x) / scale`` in float64 (``scale`` broadcast against the points): on a grid
    from the integer steps, ``u = (J / s) / scale`` (:func:`grid_steps`)."""
    if levels is None:
        difference = points.double() - x.double()
    else:
        difference = grid_steps(x, points, levels).double() / levels
    return difference / scale.double()


def perturbation_norms(
    x: torch.Tensor, points: torch.Tensor, levels: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(||d||_2, ||d||_1, ||d||_inf)`` of ``d = points - x``, float64 ``(B,)`` each. On a grid,
    ``d = J / s`` from the integer steps ``J`` (:func:`grid_steps`), not from the float32
    encodings of ``k / s``, which are off by up to ``1e-5`` steps."""
    ones = torch.ones((1,) * x.dim(), dtype=torch.float64, device=x.device)
    d = scaled_perturbation(x, points, ones, levels)
    return ball_norms(d, Threat.l2), ball_norms(d, Threat.l1), ball_norms(d, Threat.linf)


def fit_into_ball(
    x: torch.Tensor,
    points: torch.Tensor,
    scale: torch.Tensor,
    radius: torch.Tensor,
    ball: Threat | str,
    levels: int | None = None,
) -> torch.Tensor:
    """``points`` made to satisfy ``||(p - x) / scale|| <= radius`` (measured in float64 as
    :func:`perturbation_norms` measures), to lie in [0, 1] and, given ``levels = s``, on the
    ``1/s`` grid, never moving a coordinate away from ``x``.

    Float: rows found outside are rescaled toward ``x`` (l2, l1; l-infinity: clipped) to
    ``radius (1 - rounding_slack(D))``, and cast back rounding toward ``x``; repeated until inside.

    Grid (``x`` must lie on it): each coordinate is rounded to a grid level *toward* ``x``
    (``floor`` above ``x``, ``ceil`` below, after snapping to a level within :data:`GRID_SNAP`
    steps). Why that keeps the point in the ball: with ``x`` on the grid, the level toward ``x``
    lies between ``x_i`` and ``p_i``, so ``|d_i|`` only shrinks, and ``||d / scale||`` is
    nondecreasing in every ``|d_i|`` for all three norms; the clip to [0, 1] shrinks ``|d_i|``
    too, since ``x`` is in [0, 1]. Only the snap can add (at most ``GRID_SNAP`` steps per
    coordinate), so the result is checked in integer steps: an l-infinity row is clipped to its
    largest allowed level, an l2 or l1 row outside loses one level at its coordinate of largest
    ``|J_i| / scale_i`` until it is inside.

    Args:
        x: centres ``(B, C, H, W)``; points: ``(B, C, H, W)``; scale: ``(B, 1, 1, 1)`` or
            ``(B, C, H, W)``, positive; radius: ``(B,)``.

    Returns:
        points in ``x``'s dtype.
    """
    ball = Threat(ball)
    dim = x[0].numel()
    radius64 = radius.detach().double().to(x.device).reshape(-1)
    scale64 = scale.detach().double().expand_as(x)
    x64 = x.detach().double()
    points = _cast_toward(x, points.detach().double().clamp(0.0, 1.0))
    shrink = 1.0 - rounding_slack(dim)
    for _ in range(_MAX_FIT_ROUNDS):
        u = (points.double() - x64) / scale64
        outside = ball_norms(u, ball) > radius64
        if not bool(outside.any()):
            break
        if ball is Threat.linf:
            bound = (radius64 * shrink).view(-1, *(1,) * (x.dim() - 1))
            fitted = torch.minimum(torch.maximum(u, -bound), bound)
        else:
            factor = radius64 * shrink / ball_norms(u, ball)
            fitted = u * factor.view(-1, *(1,) * (x.dim() - 1))
        inner = _cast_toward(x, x64 + scale64 * fitted)
        points = torch.where(outside.view(-1, *(1,) * (x.dim() - 1)), inner, points)
    else:
        raise RuntimeError("fit_into_ball: points still outside the ball")
    if levels is None:
        return points
    return _onto_grid(x, points, scale64, radius64, ball, levels)


def _onto_grid(
    x: torch.Tensor,
    points: torch.Tensor,
    scale64: torch.Tensor,
    radius64: torch.Tensor,
    ball: Threat,
    levels: int,
) -> torch.Tensor:
    """The grid half of :func:`fit_into_ball`."""
    x_int = torch.stack([to_grid(x[b], levels).long() for b in range(x.shape[0])])
    offset = points.double() * levels - x_int.double()  # exact for float32 points, s < 2^20
    nearest = torch.round(offset)
    offset = torch.where((offset - nearest).abs() <= GRID_SNAP, nearest, offset)
    steps = torch.trunc(offset).long()  # toward x
    steps = torch.clamp(x_int + steps, 0, levels) - x_int
    shape = (-1, *(1,) * (x.dim() - 1))
    if ball is Threat.linf:
        # largest allowed level per coordinate: floor(r scale s), checked again below
        allowed = torch.floor(radius64.view(shape) * scale64 * levels).long()
        steps = torch.minimum(torch.maximum(steps, -allowed), allowed)
    for _ in range(steps[0].numel() * levels + 1):
        u = steps.double() / levels / scale64
        outside = ball_norms(u, ball) > radius64
        if not bool(outside.any()):
            break
        flat = u.abs().flatten(1)
        worst = flat.argmax(dim=1)
        change = torch.zeros_like(steps).flatten(1)
        sign = steps.flatten(1).gather(1, worst[:, None]).sign()
        change.scatter_(1, worst[:, None], sign * outside[:, None].long())
        steps = steps - change.view_as(steps)
    return ((x_int + steps).double() / levels).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# projected gradient ascent


def _ascent_direction(
    gradient: torch.Tensor, ball: Threat, sparsity: float, blocked: torch.Tensor
) -> torch.Tensor:
    """The unit steepest-ascent step of the ball's norm for ``gradient`` ``(B, ...)``.

    l2: ``g / ||g||_2`` (0 for a zero gradient); l-infinity: ``sign(g)``; l1: ``sign(g)`` on the
    ``k = max(1, ceil((1 - sparsity) D))`` coordinates of largest ``|g|`` not ``blocked`` (at a
    face of [0, 1] that the step would cross), divided by their number (l1 length 1).
    """
    flat = gradient.flatten(1)
    if ball is Threat.l2:
        length = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        return (flat / length.clamp_min(torch.finfo(flat.dtype).tiny)).view_as(gradient)
    if ball is Threat.linf:
        return torch.sign(gradient)
    free = flat.masked_fill(blocked.flatten(1), 0.0)
    k = max(1, math.ceil((1.0 - sparsity) * flat.shape[1]))
    top = free.abs().topk(k, dim=1).indices
    direction = torch.zeros_like(flat).scatter_(1, top, torch.sign(free.gather(1, top)))
    count = direction.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
    return (direction / count).view_as(gradient)


def projected_ascent(
    model: nn.Module,
    x: torch.Tensor,
    region: SearchRegion,
    objective: AscentObjective,
    laws: Sequence[NoiseLaw],
    config: AttackConfig,
    generators: Sequence[torch.Generator],
) -> list[torch.Tensor]:
    """Projected gradient ascent of ``objective(log G(x + scale u))`` over ``||u|| <= radius``
    (``region``), the soft smoothed classifier ``G`` of each row smoothed with its noise law.

    One run per restart (the first from ``u = 0``, the others from :func:`uniform_in_ball`);
    each takes ``config.steps`` steps of size ``config.step_factor * radius / config.steps``
    along :func:`_ascent_direction` of the gradient in ``u`` (``scale`` times the gradient in
    ``x``), each gradient the mean over ``config.eot`` batches of ``config.samples`` draws
    (fresh every step, or drawn once when ``config.fresh_noise`` is off), then clips the point to
    [0, 1] and projects ``u`` onto the ball. The final point of every restart goes through
    :func:`fit_into_ball` (onto the laws' pixel grid, where they have one).

    Args:
        x: centres ``(B, C, H, W)`` in [0, 1]; laws: one per row (the smoothing noise: norm,
            theta, grid); generators: one per row.

    Returns:
        ``config.restarts`` tensors ``(B, C, H, W)``: each restart's final point.
    """
    scale, radius, ball = region.scale, region.radius, Threat(region.ball)
    norm, levels = laws[0].norm, laws[0].grid
    thetas = theta_batch([law.theta for law in laws], x)
    finals = []
    with torch.inference_mode(False), torch.enable_grad(), frozen(model):
        # plain tensors, even for inputs made in inference mode
        x, scale, thetas = x.detach().clone(), scale.detach().clone(), thetas.detach().clone()
        exact_radius = radius.detach().to(device=x.device, dtype=torch.float64).reshape(-1)
        radius = exact_radius.to(x.dtype)
        step = (config.step_factor * radius / config.steps).view(-1, *(1,) * (x.dim() - 1))
        noise_shape = (config.samples, *x.shape[1:])
        fixed = None
        if not config.fresh_noise:
            fixed = [draw_noise(noise_shape, norm, generators, x) for _ in range(config.eot)]
        for restart in range(config.restarts):
            if restart == 0:
                u = torch.zeros_like(x)
            else:
                u = uniform_in_ball(x.shape[1:], radius.tolist(), ball, generators, x.dtype)
                u = ((x + scale * u).clamp(0.0, 1.0) - x) / scale
            for _ in range(config.steps):
                point = (x + scale * u).clamp(0.0, 1.0)
                gradient = torch.zeros_like(x)
                for batch in range(config.eot):
                    if fixed is not None:
                        noise = fixed[batch]
                    else:
                        noise = draw_noise(noise_shape, norm, generators, x)
                    leaf = point.detach().requires_grad_(True)
                    value = objective(soft_log_probabilities(model, leaf, thetas, noise))
                    if value.requires_grad:
                        (part,) = torch.autograd.grad(value.sum(), leaf)
                        gradient += part
                    # else a base classifier with no gradient path to its input (a step
                    # function, a hard quantizer): no direction, the iterate stays
                gradient = gradient * scale
                blocked = ((point <= 0) & (gradient < 0)) | ((point >= 1) & (gradient > 0))
                u = u + step * _ascent_direction(gradient, ball, config.l1_sparsity, blocked)
                u = ((x + scale * u).clamp(0.0, 1.0) - x) / scale
                u = project(u, radius, ball)
            finals.append(fit_into_ball(x, x + scale * u, scale, exact_radius, ball, levels))
    return finals


# ---------------------------------------------------------------------------------------------
# the attack


def smoothadv_attack(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    laws: Sequence[NoiseLaw],
    ball: Ball,
    generators: Sequence[torch.Generator],
    config: AttackConfig = AttackConfig(),
) -> AttackResult:
    """The SmoothAdv PGD attack (Salman et al., NeurIPS 2019) on the smoothed classifier.

    Maximises ``-log G(x')_y`` over ``||x' - x||_threat <= eps`` and ``x'`` in [0, 1] with
    :func:`projected_ascent`, smoothing each input with its own noise law (the certificate's:
    per-input thetas for ANCER); of the restarts, keeps the one with the smallest ``G(x')_y`` on
    ``config.evaluation_samples`` common draws. Where the laws have a pixel grid (sound noise,
    levels ``s``), the inputs must lie on the ``1/s`` grid and so do the results
    (:func:`fit_into_ball`). The model's weights are frozen during the attack.

    Args:
        model: maps a batch ``(b, C, H, W)`` in [0, 1] to logits ``(b, K)``.
        x: inputs ``(B, C, H, W)`` on the model's device; labels: ``(B,)`` true classes.
        laws: per input, its noise law (norm, theta, grid).
        ball: the attacker's ball.
        generators: one per input, on ``x``'s device (e.g. ``input_generator(seed, index,
            device, Stream.attack)``): results do not depend on the batch.

    Returns:
        :class:`AttackResult`. Judge ``points`` with
        :func:`~ancer_cli.core.smoothing.predict_many` on fresh streams (the attacker must not
        have seen the draws that judge it).
    """
    batch = x.shape[0]
    if not (len(laws) == len(generators) == len(labels) == batch):
        raise ValueError(
            f"need one label, law and generator per input: got {batch} inputs, "
            f"{len(labels)} labels, {len(laws)} laws and {len(generators)} generators"
        )
    norm, levels = laws[0].norm, laws[0].grid
    y = plain(torch.as_tensor(labels, dtype=torch.int64, device=x.device).reshape(-1, 1))
    noise_thetas = theta_batch([law.theta for law in laws], x)
    scale = torch.ones((batch, *(1,) * (x.dim() - 1)), dtype=x.dtype, device=x.device)
    radius = torch.full((batch,), float(ball.eps), dtype=torch.float64, device=x.device)
    seeds = common_noise_seeds(generators)

    def loss(log_g: torch.Tensor) -> torch.Tensor:
        return -log_g.gather(1, y).squeeze(1)

    region = SearchRegion(scale, radius, ball.threat)
    finals = projected_ascent(model, x, region, loss, laws, config, generators)

    def evaluate(points: torch.Tensor) -> torch.Tensor:
        log_g = common_noise_log_probabilities(
            model, points, noise_thetas, norm, seeds, config.evaluation_samples, config.samples
        )
        return log_g.gather(1, y).squeeze(1).double()

    best, best_log_p = finals[0], evaluate(finals[0])
    for points in finals[1:]:
        log_p = evaluate(points)
        better = log_p < best_log_p
        best = torch.where(better.view(-1, *(1,) * (x.dim() - 1)), points, best)
        best_log_p = torch.where(better, log_p, best_log_p)
    l2, l1, linf = perturbation_norms(x, best, levels)
    return AttackResult(
        points=best,
        norm_l2=l2,
        norm_l1=l1,
        norm_linf=linf,
        p_true=best_log_p.exp(),
        p_true_clean=evaluate(x).exp(),
        forward_equivalents=torch.full(
            (batch,), config.forward_equivalents, dtype=torch.int64, device=x.device
        ),
    )


def random_perturbation(
    x: torch.Tensor,
    ball: Ball,
    generators: Sequence[torch.Generator],
    levels: int | None = None,
) -> torch.Tensor:
    """A random point on the boundary of the ball around each input: uniform on the l2 or l1
    sphere of radius ``eps`` (:func:`uniform_in_ball`), or a uniformly random corner of the
    l-infinity cube; then in [0, 1] and, given ``levels``, on the grid (:func:`fit_into_ball`,
    which only moves coordinates toward ``x``). The baseline an attack must beat: a perturbation
    of the same size in no chosen direction.

    Args:
        x: inputs ``(B, C, H, W)`` (on the ``1/levels`` grid, given one); generators: one per
            input, on ``x``'s device.

    Returns:
        points ``(B, C, H, W)`` in ``x``'s dtype.
    """
    batch, shape = x.shape[0], x.shape[1:]
    radius = [float(ball.eps)] * batch
    if ball.threat is Threat.linf:
        signs = [
            torch.randint(0, 2, shape, generator=g, device=g.device).to(x.dtype) * 2 - 1
            for g in generators
        ]
        u = torch.stack(signs) * float(ball.eps)
    else:
        u = uniform_in_ball(shape, radius, ball.threat, generators, x.dtype, surface=True)
    scale = torch.ones((batch, *(1,) * (x.dim() - 1)), dtype=x.dtype, device=x.device)
    bound = torch.full((batch,), float(ball.eps), dtype=torch.float64, device=x.device)
    return fit_into_ball(x, x + u.to(x.device), scale, bound, ball.threat, levels)
