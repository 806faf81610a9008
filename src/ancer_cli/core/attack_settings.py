"""The settings of the SmoothAdv attack and of the audit search, with their defaults in one place:
the attacker's ball (:class:`Threat`), :class:`AttackConfig` and :class:`AuditConfig`.

Nothing here imports PyTorch: the command line builds ``ancer attack`` and ``ancer audit``'s
options from these (:mod:`ancer_cli.core.attack` and :mod:`ancer_cli.core.audit` use them and
re-export them).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ancer_cli.core.optimize.config import STEP_COST


class Threat(str, enum.Enum):
    """The norm of the attacker's ball ``||x' - x|| <= eps``."""

    l2 = "l2"
    l1 = "l1"
    linf = "linf"


@dataclass(frozen=True)
class AttackConfig:
    """Settings of the SmoothAdv attack; the defaults follow Salman et al. (2019).

    Their evaluation attack (``predict.py --attack PGD`` in Hadisalman/smoothing-adversarial)
    takes ``T = 20`` steps of size ``2 eps / T`` from the clean input with ``m_test = 32`` noise
    draws, drawn once and kept for every step (their training attack used 1 to 8 draws). Here
    the draws are fresh at every step by default (``fresh_noise``: a new estimate every step, the
    expectation over transformation of Athalye et al., ICML 2018, where a fixed set of draws lets
    the attack overfit those draws); ``fresh_noise=False`` is their setting.
    """

    steps: int = 20
    samples: int = 32
    """noise draws ``m`` per gradient estimate (and per forward pass)"""
    step_factor: float = 2.0
    """the step is ``step_factor * eps / steps`` in the ball's norm"""
    restarts: int = 1
    """the first from the clean input, the others from uniform random points of the ball; the
    restart with the largest final loss is kept"""
    eot: int = 1
    """batches of ``samples`` draws whose gradients are averaged in each step"""
    fresh_noise: bool = True
    l1_sparsity: float = 0.99
    """l1 steps move the coordinates of ``|g|`` above this quantile (SLIDE's 99th percentile)"""
    evaluation_samples: int = 256
    """draws of the common noise on which the restarts' final points are compared and
    ``G(x')_y`` is reported (the same draws for every point of an input)"""

    @property
    def forward_equivalents(self) -> int:
        """What one input costs: the gradient steps (a backward pass counts as two forwards),
        the final evaluation of every restart and of the clean input."""
        gradients = STEP_COST * self.restarts * self.steps * self.eot * self.samples
        return gradients + (self.restarts + 1) * self.evaluation_samples


@dataclass(frozen=True)
class AuditConfig:
    """Settings of the audit search; the defaults are the audit's defaults.

    ``search`` holds the gradient search's settings (:class:`~ancer_cli.core.attack.AttackConfig`;
    each restart of each target gives one candidate). 50 steps rather than the attack's 20: a
    certified region can be wide (``g`` of 2 to 4 in ``u``) and the audit is a check, not a
    benchmark. At the defaults a certificate costs ``2 x 50 x 32 x 3 = 9,600`` forward-
    equivalents of gradient steps and ``19 x 256`` of evaluations, about 14,500: a seventh of
    certifying at ``N = 100,000``.
    """

    search: AttackConfig = AttackConfig(steps=50)
    targets: int = 2
    """runner-up classes searched towards, the most likely first"""
    boundary_points: int = 16

    def candidates(self, classes: int) -> int:
        """Candidates per certificate for a model of ``classes`` classes."""
        return min(self.targets, classes - 1) * self.search.restarts + self.boundary_points

    def forward_equivalents(self, classes: int) -> int:
        """What one certificate costs: the gradient steps (a backward pass counts as two
        forwards) and the evaluation of the centre and of every candidate."""
        search = self.search
        targets = min(self.targets, classes - 1)
        steps = STEP_COST * targets * search.restarts * search.steps * search.eot * search.samples
        return steps + (1 + self.candidates(classes)) * search.evaluation_samples
