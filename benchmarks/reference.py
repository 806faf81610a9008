"""Faithful re-implementations of the reference algorithms, the baseline of ``bench.py``.

* :class:`CohenSmooth` -- Cohen, Rosenfeld and Kolter's ``Smooth`` (locuslab/smoothing,
  ``code/core.py``): for every batch the input is repeated ``batch`` times, the noise is drawn out
  of place and added out of place, the predictions are copied to the host and counted there by a
  Python loop over the predictions (``_count_arr``). Generalized, as the ANCER package did, to a
  per-pixel theta (repeated per batch as well) and to uniform (l1) noise.
* :func:`optimize_ancer` -- the original ANCER optimization (Eiras et al., ``ancer`` package):
  inputs and thetas repeated per sample, the soft classifier ``softmax(f)`` as a module, the model's
  weights left requiring gradients (so every backward pass also computes weight gradients), the
  geometric mean as ``prod(theta ** (1/d))``, Adam and the projection ``max(theta, theta_iso)``.

The code is kept deliberately as the reference wrote it; only the device is taken from the input
instead of a hard-coded ``"cuda"``, and an optional ``generator`` (certify) or ``sample_noise``
(optimize) lets the benchmark inject the very noise the package draws, to show that both produce
identical votes and thetas. Without them the global random stream is used, as in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.stats
import torch
from torch import nn
from torch.distributions.normal import Normal

ABSTAIN = -1


class CohenSmooth:
    """Cohen et al.'s ``Smooth`` with ``sigma`` generalized to ``theta`` (number or ``(C, H, W)``)."""

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        theta: float | torch.Tensor,
        norm: str = "l2",
        generator: torch.Generator | None = None,
    ) -> None:
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.theta = theta
        self.norm = norm
        self.generator = generator

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int
    ) -> tuple[int, float, np.ndarray, np.ndarray]:
        """CERTIFY; returns ``(prediction, gap, selection counts, estimation counts)``."""
        self.base_classifier.eval()
        counts_selection = self._sample_noise(x, n0, batch_size)
        c_a_hat = int(counts_selection.argmax().item())
        counts_estimation = self._sample_noise(x, n, batch_size)
        n_a = int(counts_estimation[c_a_hat].item())
        p_a_bar = self._lower_confidence_bound(n_a, n, alpha)
        if p_a_bar < 0.5:
            return ABSTAIN, 0.0, counts_selection, counts_estimation
        gap = float(scipy.stats.norm.ppf(p_a_bar)) if self.norm == "l2" else 2 * p_a_bar - 1
        return c_a_hat, gap, counts_selection, counts_estimation

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size: int) -> np.ndarray:
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            for _ in range(math.ceil(num / batch_size)):
                this_batch_size = min(batch_size, num)
                num -= this_batch_size

                batch = x.repeat((this_batch_size, 1, 1, 1))
                theta = self.theta
                if isinstance(theta, torch.Tensor):
                    theta = theta.repeat((this_batch_size, 1, 1, 1))
                noise = self._noise_like(batch) * theta
                predictions = self.base_classifier(batch + noise).argmax(1)
                counts += self._count_arr(predictions.cpu().numpy(), self.num_classes)
            return counts

    def _noise_like(self, batch: torch.Tensor) -> torch.Tensor:
        """``randn_like`` (l2) or ANCER's ``2 (rand_like - 0.5)`` (l1), from ``generator``."""
        if self.norm == "l2":
            return torch.randn(
                batch.shape, dtype=batch.dtype, device=batch.device, generator=self.generator
            )
        uniform = torch.rand(
            batch.shape, dtype=batch.dtype, device=batch.device, generator=self.generator
        )
        return 2 * (uniform - 0.5)

    @staticmethod
    def _count_arr(arr: np.ndarray, length: int) -> np.ndarray:
        counts = np.zeros(length, dtype=int)
        for idx in arr:
            counts[idx] += 1
        return counts

    @staticmethod
    def _lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
        # statsmodels' proportion_confint(NA, N, alpha=2*alpha, method="beta")[0]
        return float(scipy.stats.beta.ppf(alpha, n_a, n - n_a + 1)) if n_a > 0 else 0.0


NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``sample_noise(new_batch, theta_repeated)`` -> the noise to add (ANCER's ``Certificate``)."""


def sample_noise_l2(batch: torch.Tensor, repeated_theta: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(batch, device=batch.device) * repeated_theta


def sample_noise_l1(batch: torch.Tensor, repeated_theta: torch.Tensor) -> torch.Tensor:
    return 2 * (torch.rand_like(batch, device=batch.device) - 0.5) * repeated_theta


def optimize_ancer(
    model: nn.Module,
    batch: torch.Tensor,
    norm: str,
    learning_rate: float,
    isotropic_theta: torch.Tensor,
    iterations: int,
    samples: int,
    kappa: float,
    sample_noise: NoiseSampler | None = None,
) -> torch.Tensor:
    """The original ANCER optimization; ``model`` outputs probabilities (softmax included) and
    its weights still require gradients. ``isotropic_theta``: ``(B, C, H, W)``."""
    if sample_noise is None:
        sample_noise = sample_noise_l2 if norm == "l2" else sample_noise_l1
    device = batch.device
    normal = Normal(torch.tensor(0.0, device=device), torch.tensor(1.0, device=device))
    batch_size = batch.shape[0]
    img_size = int(np.prod(batch.shape[1:]))

    # define a variable, the optimizer, and the initial sigma values
    theta = isotropic_theta.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([theta], lr=learning_rate)
    initial_theta = theta.detach().clone()

    # reshape vectors to have ``samples`` per input in batch
    new_shape = [batch_size * samples]
    new_shape.extend(batch[0].shape)
    new_batch = batch.repeat((1, samples, 1, 1)).view(new_shape)

    # solve iteratively by projected gradient ascent
    for _ in range(iterations):
        optimizer.zero_grad()
        theta_repeated = theta.repeat(1, samples, 1, 1).view(new_shape)

        # reparameterization trick
        noise = sample_noise(new_batch, theta_repeated)
        out = model(new_batch + noise).reshape(batch_size, samples, -1).mean(dim=1)

        vals, _ = torch.topk(out, 2)
        if norm == "l2":
            gap = normal.icdf(vals[:, 0].clamp(0.001, 0.999)) - normal.icdf(
                vals[:, 1].clamp(0.001, 0.999)
            )
        else:
            gap = vals[:, 0] - vals[:, 1]

        prod = torch.prod((theta.reshape(batch_size, -1)) ** (1 / img_size), dim=1)
        proxy_radius = prod * gap

        radius_maximizer = -(
            proxy_radius.sum()
            + kappa * (torch.min(theta.view(batch_size, -1), dim=1).values * gap).sum()
        )
        radius_maximizer.backward()
        optimizer.step()

        # project to the initial theta
        with torch.no_grad():
            torch.max(theta, initial_theta, out=theta)

    return theta.detach()
