"""The training losses on toy batches: a linear model in float64 with fixed weights and noise
drawn from a seeded generator, each loss against the same quantity computed by hand in numpy;
exact values where the mathematics gives them (a model that ignores its input has identical
predictions on every noisy copy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax, ndtri, softmax
from torch import nn

from ancer_cli.core.choices import Norm
from ancer_cli.core.training import (
    MACER_PROBABILITY_FLOOR,
    consistency_loss,
    consistency_terms,
    draw_noise,
    macer_loss,
    macer_terms,
    noise_loss,
    smoothadv_attack,
    smoothadv_loss,
    soft_smoothed_nll,
    stability_loss,
)

BATCH, CLASSES, SHAPE = 6, 3, (1, 2, 2)


def linear_model(seed: int = 0, scale: float = 2.0) -> nn.Module:
    """``x -> W x + b`` on flattened 2x2 images, float64, fixed random weights."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, CLASSES)).double()
    with torch.no_grad():
        model[1].weight.mul_(scale)
    return model


def weights(model: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return model[1].weight.detach().numpy(), model[1].bias.detach().numpy()


def batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((BATCH, *SHAPE), generator=generator, dtype=torch.float64)
    y = torch.arange(BATCH) % CLASSES
    return x, y


def generator(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hand_logits(model: nn.Module, x: torch.Tensor, noise: torch.Tensor, copies: int) -> np.ndarray:
    """Logits ``(copies, B, K)`` of ``x + noise`` computed in numpy."""
    w, b = weights(model)
    noisy = np.tile(x.numpy(), (copies, 1, 1, 1)) + noise.numpy()
    return (noisy.reshape(copies, BATCH, -1) @ w.T + b).reshape(copies, BATCH, CLASSES)


def hand_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy over copies and inputs of logits ``(m, B, K)``."""
    log_p = log_softmax(logits, axis=-1)
    return float(-np.mean(np.take_along_axis(log_p, y[None, :, None], axis=-1)))


# ---------------------------------------------------------------------------------------------
# noise and stability: the losses the training loop had before these functions existed


def test_noise_loss_is_the_cross_entropy_on_one_draw_of_all_copies() -> None:
    # Pins the draws of `--training noise`: one draw of shape (copies * B, C, H, W), copy-major,
    # x + theta * eps, cross-entropy against the repeated labels.
    model, (x, y) = linear_model().float(), batch()
    x = x.float()
    for norm, copies in ((Norm.l2, 1), (Norm.l1, 3)):
        loss, logits = noise_loss(model, x, y, 0.4, norm, generator(), copies)
        eps = torch.empty((copies * BATCH, *SHAPE))
        if norm is Norm.l2:
            eps.normal_(generator=generator())
        else:
            eps.uniform_(-1.0, 1.0, generator=generator())
        expected = model(x.repeat(copies, 1, 1, 1) + 0.4 * eps)
        assert torch.equal(loss, F.cross_entropy(expected, y.repeat(copies)))
        assert torch.equal(logits, expected[:BATCH])


def test_stability_loss_adds_the_kl_from_the_first_copy_to_the_others() -> None:
    model, (x, y) = linear_model(), batch()
    copies, theta, weight = 3, 0.5, 6.0
    loss, logits = stability_loss(model, x, y, theta, Norm.l2, generator(), weight, copies)
    noise = draw_noise(x, copies, theta, Norm.l2, generator())
    hand = hand_logits(model, x, noise, copies)
    log_p = log_softmax(hand, axis=-1)
    kl = np.mean(np.sum(np.exp(log_p[0]) * (log_p[0] - log_p[1:]), axis=-1))
    expected = hand_cross_entropy(hand, y.numpy()) + weight * kl
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert np.allclose(logits.detach().numpy(), hand[0], rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# consistency (Jeong & Shin 2020)


def test_consistency_loss_against_numpy() -> None:
    model, (x, y) = linear_model(), batch()
    copies, theta, weight, eta = 3, 0.5, 10.0, 0.5
    loss, logits = consistency_loss(model, x, y, theta, Norm.l2, generator(), copies, weight, eta)
    noise = draw_noise(x, copies, theta, Norm.l2, generator())
    hand = hand_logits(model, x, noise, copies)
    p = softmax(hand, axis=-1)  # (m, B, K)
    p_hat = p.mean(axis=0)
    kl = np.mean(np.sum(p_hat * (np.log(p_hat) - np.log(p)), axis=-1))  # mean over i and b
    entropy = np.mean(-np.sum(p_hat * np.log(p_hat), axis=-1))
    assert kl > 1e-3 and entropy > 1e-3  # the toy batch exercises both terms
    expected = hand_cross_entropy(hand, y.numpy()) + weight * kl + eta * entropy
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert np.allclose(logits.detach().numpy(), hand[0], rtol=1e-12)


def test_consistency_terms_of_identical_predictions() -> None:
    # A model that ignores its input predicts p = softmax(b) on every copy: the KL term is 0
    # (to rounding), the entropy is H(softmax(b)) and the cross-entropy -log softmax(b)_y.
    bias = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    logits = bias.expand(4, BATCH, CLASSES)
    y = torch.arange(BATCH) % CLASSES
    cross_entropy, kl, entropy = consistency_terms(logits, y)
    p = softmax(bias.numpy())
    assert kl.item() == pytest.approx(0.0, abs=1e-15)
    assert entropy.item() == pytest.approx(-np.sum(p * np.log(p)), rel=1e-14)
    assert cross_entropy.item() == pytest.approx(-np.mean(np.log(p[y.numpy()])), rel=1e-14)


def test_consistency_works_with_uniform_noise() -> None:
    model, (x, y) = linear_model(), batch()
    loss, _ = consistency_loss(model, x, y, 0.5, Norm.l1, generator(), 2, 10.0, 0.5)
    noise = draw_noise(x, 2, 0.5, Norm.l1, generator())
    assert float(noise.abs().max()) <= 0.5  # uniform on [-theta, theta]
    hand = hand_logits(model, x, noise, 2)
    p = softmax(hand, axis=-1)
    p_hat = p.mean(axis=0)
    kl = np.mean(np.sum(p_hat * (np.log(p_hat) - np.log(p)), axis=-1))
    entropy = np.mean(-np.sum(p_hat * np.log(p_hat), axis=-1))
    expected = hand_cross_entropy(hand, y.numpy()) + 10.0 * kl + 0.5 * entropy
    assert loss.item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# MACER (Zhai et al. 2020)


def hand_macer(
    hand: np.ndarray, y: np.ndarray, sigma: float, beta: float, margin: float
) -> tuple[float, float, int]:
    """Classification and robustness sums and the number of active hinges, in numpy."""
    z = softmax(hand, axis=-1).mean(axis=0)
    classification = -np.sum(np.log(z[np.arange(len(y)), y] + MACER_PROBABILITY_FLOOR))
    soft = softmax(beta * hand, axis=-1).mean(axis=0)
    robustness, active = 0.0, 0
    for b, label in enumerate(y):
        if np.argmax(soft[b]) != label:
            continue
        runner_up = np.max(np.delete(soft[b], label))
        xi = ndtri(soft[b, label]) - ndtri(runner_up)
        if xi <= margin:
            robustness += sigma / 2 * (margin - xi)
            active += 1
    return classification, robustness, active


def test_macer_loss_against_numpy() -> None:
    model, (x, y) = linear_model(scale=1.0), batch()
    copies, sigma, weight, beta, margin = 16, 0.25, 12.0, 2.0, 8.0
    loss, logits = macer_loss(model, x, y, sigma, generator(), copies, weight, beta, margin)
    hand = hand_logits(model, x, draw_noise(x, copies, sigma, Norm.l2, generator()), copies)
    classification, robustness, active = hand_macer(hand, y.numpy(), sigma, beta, margin)
    assert 0 < active < BATCH  # some inputs correct with an active hinge, some not
    expected = (classification + weight * robustness) / BATCH
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert np.allclose(logits.detach().numpy(), hand[0], rtol=1e-12)


def test_macer_hinge_of_known_scores() -> None:
    # Every copy gives the same logits, so the soft scores are softmax(beta * logits) exactly.
    # Input 0: right, xi = 2 Phi^-1(0.8) < margin -- the hinge counts sigma/2 (margin - xi);
    # input 1: wrong -- nothing; input 2: right but xi > margin -- nothing.
    scores = np.array([[0.8, 0.2, 0.0], [0.3, 0.6, 0.1], [0.98, 0.01, 0.01]])
    beta, sigma, margin = 1.0, 0.5, 3.0
    logits = torch.tensor(np.log(scores + 1e-300)).expand(5, 3, 3)
    y = torch.tensor([0, 0, 0])
    classification, robustness = macer_terms(logits, y, sigma, beta, margin)
    xi = ndtri(0.8) - ndtri(0.2)
    assert xi == pytest.approx(2 * ndtri(0.8))
    assert ndtri(0.98) - ndtri(0.01) > margin
    assert robustness.item() == pytest.approx(sigma / 2 * (margin - xi), rel=1e-12)
    expected = -np.log(0.8 + 1e-10) - np.log(0.3 + 1e-10) - np.log(0.98 + 1e-10)
    assert classification.item() == pytest.approx(expected, rel=1e-12)


def test_macer_leaves_out_saturated_scores_and_keeps_gradients_finite() -> None:
    # beta * logits saturates the softmax: z_y = 1 and z_c = 0 exactly, xi = inf (an infinite
    # radius): the input adds nothing and no infinite derivative of Phi^-1 reaches the model.
    logits = torch.tensor([[[200.0, 0.0, 0.0], [0.1, 0.0, 0.05]]], dtype=torch.float64)
    logits = logits.expand(2, 2, 3).clone().requires_grad_(True)
    y = torch.tensor([0, 0])
    classification, robustness = macer_terms(logits, y, 0.25, 16.0, 8.0)
    soft = F.softmax(16.0 * logits.detach(), dim=2).mean(0)
    xi = ndtri(float(soft[1, 0])) - ndtri(float(soft[1, 2]))
    assert robustness.item() == pytest.approx(0.25 / 2 * (8.0 - xi), rel=1e-12)
    (classification + robustness).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_a_gradient_step_on_the_macer_hinge_lowers_it() -> None:
    # One gradient step on the robustness term alone widens the soft margins xi of the inputs
    # whose hinge is active: the term decreases (its sign is right).
    model, (x, y) = linear_model(scale=1.0), batch()
    noise = draw_noise(x, 16, 0.25, Norm.l2, generator())

    def hinge() -> tuple[torch.Tensor, float]:
        logits = model(x.repeat(16, 1, 1, 1) + noise).view(16, BATCH, -1)
        _, robustness = macer_terms(logits, y, 0.25, 2.0, 8.0)
        return robustness, robustness.item()

    robustness, before = hinge()
    robustness.backward()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.05 * parameter.grad
    _, after = hinge()
    assert 0 < after < before


# ---------------------------------------------------------------------------------------------
# SmoothAdv (Salman et al. 2019)


def test_one_smoothadv_step_is_the_normalised_gradient_scaled_to_eps() -> None:
    # With one step of size 2 eps, x in the middle of [0, 1] and a small eps, neither clip binds
    # and the projection on the ball returns x + eps * g / ||g||: g the gradient of -log G(x)_y.
    model, (_, y) = linear_model(), batch()
    x = torch.full((BATCH, *SHAPE), 0.5, dtype=torch.float64)
    noise = draw_noise(x, 4, 0.1, Norm.l2, generator())
    eps = 0.05
    adversarial = smoothadv_attack(model, x, y, noise, eps, steps=1)
    start = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(soft_smoothed_nll(model, start, y, noise).sum(), [start])
    norms = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(adversarial, x + eps * grad / norms, rtol=0, atol=1e-14)


def test_smoothadv_attack_stays_in_the_ball_and_the_pixel_range_and_raises_the_loss() -> None:
    model, (x, y) = linear_model(), batch()
    noise = draw_noise(x, 4, 0.25, Norm.l2, generator())
    eps = 0.5
    model.train()
    adversarial = smoothadv_attack(model, x, y, noise, eps, steps=5)
    assert model.training  # the mode is restored
    assert not adversarial.requires_grad
    assert float(adversarial.min()) >= 0.0 and float(adversarial.max()) <= 1.0
    distances = (adversarial - x).flatten(1).norm(dim=1)
    assert float(distances.max()) <= eps * (1 + 1e-12)
    assert float(distances.min()) > eps / 2  # the attack went somewhere
    with torch.no_grad():
        before = soft_smoothed_nll(model, x, y, noise)
        after = soft_smoothed_nll(model, adversarial, y, noise)
    assert bool((after > before).all()), (before, after)


def test_smoothadv_loss_is_the_cross_entropy_on_the_attack_plus_the_same_draws() -> None:
    model, (x, y) = linear_model(), batch()
    loss, logits = smoothadv_loss(model, x, y, 0.25, Norm.l2, generator(), 3, 0.5, 4)
    noise = draw_noise(x, 3, 0.25, Norm.l2, generator())
    adversarial = smoothadv_attack(model, x, y, noise, 0.5, 4)
    hand = hand_logits(model, adversarial, noise, 3)
    assert loss.item() == pytest.approx(hand_cross_entropy(hand, y.numpy()), rel=1e-12)
    assert np.allclose(logits.detach().numpy(), hand[0], rtol=1e-12)
