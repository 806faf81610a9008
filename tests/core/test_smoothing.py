"""CERTIFY and PREDICT against an analytic oracle; on CUDA, the same votes as on the CPU.

A linear two-class model ``class 1 iff w.x + b > 0`` under Gaussian noise ``theta * z`` has
``pA = Phi(|m| / ||theta * w||)`` with margin ``m = w.x + b``, and its smoothed classifier has
the same decision half-space. So an l2 certificate (ellipsoid ``||d / theta||_2 <= g``) is sound
iff ``g * ||theta * w||_2 <= |m|``, and an l1 certificate (``sum |d_i| / theta_i <= g``) is sound iff
``g * max_i theta_i |w_i| <= |m|``.
"""

import contextlib
import copy
import functools
import importlib.util
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binom, binomtest, norm
from torch import nn

import ancer_cli
from ancer_cli.core import noise as noise_module
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.law import Noise, NoiseLaw
from ancer_cli.core.noise import Stream, Theta, input_generator
from ancer_cli.core.sequential import SequentialPlan, cs_lower
from ancer_cli.core.smoothing import (
    ABSTAIN,
    MAX_INPUTS_PER_GROUP,
    _forward_passes,
    certify,
    certify_many,
    certify_sequential_many,
    chunk_sizes,
    inputs_per_group,
    predict,
    predict_many,
    sample_counts,
    sample_counts_many,
)
from ancer_cli.data import dataset_info, load_dataset
from ancer_cli.models import build_model
from tests.toys import Constant, Linear2

SHAPE = (1, 8, 8)


def _problem(count: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(SHAPE, generator=g) / 8
    xs = torch.rand((count, *SHAPE), generator=g)
    b = -float((w * 0.5).sum())
    margins = (xs.flatten(1) @ w.flatten()) + b
    return Linear2(w, b), w, xs, margins


def _law(
    theta: Theta, norm_name: str = "l2", sound: int | None = None, shape: tuple[int, ...] = SHAPE
) -> NoiseLaw:
    """The noise law of an input of ``shape`` with ``theta``: float noise, or on the
    ``1 / sound`` grid."""
    return Noise(Norm(norm_name), sound).law(theta, shape)


def _anisotropic_theta(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.4 * torch.rand(SHAPE, generator=g)


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("anisotropic", [False, True])
def test_linear_oracle_certificates_are_sound(norm_name, anisotropic):
    count, alpha = 150, 0.01
    model, w, xs, margins = _problem(count)
    theta = _anisotropic_theta() if anisotropic else 0.25
    theta_t = theta if isinstance(theta, torch.Tensor) else torch.full(SHAPE, theta)
    if norm_name == "l2":
        worst_case_rate = float(torch.linalg.vector_norm(theta_t * w))
    else:
        worst_case_rate = float((theta_t * w).abs().max())
    unsound = certified = 0
    for i in range(count):
        cert = certify(
            model,
            xs[i],
            _law(theta, norm_name),
            Sampling(100, 2000, alpha, 1000),
            input_generator(0, i, "cpu"),
        )
        if cert.prediction == ABSTAIN:
            continue
        certified += 1
        truth = int(margins[i] > 0)
        if cert.prediction != truth or cert.gap * worst_case_rate > abs(float(margins[i])):
            unsound += 1
    assert certified > count // 2
    # each certificate fails with probability <= alpha; allow what a 1e-4 test tolerates
    assert unsound <= binom.ppf(1 - 1e-4, certified, alpha)


@pytest.mark.slow
@pytest.mark.parametrize("anisotropic", [False, True])
def test_linear_oracle_bound_is_tight_for_large_n(anisotropic):
    model, w, xs, margins = _problem(40, seed=3)
    theta = _anisotropic_theta() if anisotropic else 0.25
    theta_t = theta if isinstance(theta, torch.Tensor) else torch.full(SHAPE, theta)
    scale = float(torch.linalg.vector_norm(theta_t * w))
    checked = 0
    for i in range(40):
        p_true = float(norm.cdf(abs(float(margins[i])) / scale))
        if not 0.6 < p_true < 0.99:
            continue
        cert = certify(
            model,
            xs[i],
            _law(theta),
            Sampling(100, 100_000, 0.001, 10_000),
            input_generator(0, i, "cpu"),
        )
        checked += 1
        assert cert.p_a_lower <= p_true + 1e-9
        assert cert.p_a_lower >= p_true - 0.008
        assert cert.radius == pytest.approx(float(theta_t.min()) * norm.ppf(cert.p_a_lower))
    assert checked >= 5


def test_radius_is_cohens_formula_for_fixed_sigma():
    model, _, xs, _ = _problem(3)
    cert = certify(
        model, xs[0], _law(0.5), Sampling(100, 1000, 0.001, 256), input_generator(0, 0, "cpu")
    )
    assert cert.radius == pytest.approx(0.5 * norm.ppf(cert.p_a_lower), rel=1e-12)
    assert cert.radius == cert.radius_proxy
    assert cert.min_theta == 0.5


def test_tensor_theta_of_ones_equals_scalar_theta():
    model, _, xs, _ = _problem(5)
    for i in range(5):
        for norm_name in ("l2", "l1"):
            sampling = Sampling(100, 3000, 0.001, 700)
            a = certify(model, xs[i], _law(0.3, norm_name), sampling, input_generator(7, i, "cpu"))
            b = certify(
                model,
                xs[i],
                _law(torch.full(SHAPE, 0.3), norm_name),
                sampling,
                input_generator(7, i, "cpu"),
            )
            # identical votes, bound and gap; theta differs only by its float32 rounding
            assert (a.prediction, a.n_a, a.p_a_lower, a.gap) == (
                b.prediction,
                b.n_a,
                b.p_a_lower,
                b.gap,
            )
            assert a.min_theta == pytest.approx(b.min_theta, rel=1e-7)


def test_anisotropic_radii():
    model, _, xs, _ = _problem(3)
    theta = _anisotropic_theta()
    cert = certify(
        model, xs[1], _law(theta), Sampling(100, 1000, 0.001, 500), input_generator(0, 1, "cpu")
    )
    geomean = float(torch.exp(torch.log(theta.double()).mean()))
    assert cert.radius == pytest.approx(float(theta.min()) * cert.gap)
    assert cert.radius_proxy == pytest.approx(geomean * cert.gap)
    assert cert.radius_proxy > cert.radius or cert.gap == 0


def test_certify_certain_and_coin_flip_classifiers():
    model = Linear2(torch.zeros(SHAPE), -1.0)  # always class 0, whatever the noise
    cert = certify(
        model,
        torch.zeros(SHAPE),
        _law(0.5),
        Sampling(10, 100, 0.001, 50),
        input_generator(0, 0, "cpu"),
    )
    assert cert.prediction == 0 and cert.n_a == 100  # a constant classifier is certain
    w = torch.zeros(SHAPE)
    w[0, 0, 0] = 1.0
    coin = Linear2(w, 0.0)  # at x = 0 the noise decides: pA = 1/2 exactly
    cert = certify(
        coin,
        torch.zeros(SHAPE),
        _law(0.5),
        Sampling(100, 10_000, 0.001, 1000),
        input_generator(0, 0, "cpu"),
    )
    assert cert.prediction == ABSTAIN and cert.radius == 0.0 and cert.gap == 0.0


def test_sample_counts_are_int64_and_sum_to_n():
    model, _, xs, _ = _problem(1)
    counts = sample_counts(model, xs[0], _law(0.25), 1234, 100, input_generator(0, 0, "cpu"))
    assert counts.dtype == torch.int64
    assert int(counts.sum()) == 1234 and counts.shape == (2,)


def test_predict():
    assert (
        predict(
            Constant([0.0, 3.0, 1.0]),
            torch.zeros(SHAPE),
            _law(0.25),
            100,
            0.001,
            64,
            input_generator(0, 0, "cpu"),
        )
        == 1
    )
    w = torch.zeros(SHAPE)
    w[0, 0, 0] = 1.0
    assert (
        predict(
            Linear2(w, 0.0),
            torch.zeros(SHAPE),
            _law(0.5),
            1000,
            0.001,
            256,
            input_generator(0, 0, "cpu"),
        )
        == ABSTAIN
    )


@pytest.mark.parametrize("anisotropic", [False, True])
def test_predict_far_from_the_boundary_never_abstains_and_is_right(anisotropic):
    """Inputs whose true pA = Phi(|m| / ||theta w||) exceeds 0.999: with N = 1000 the top
    class wins by far more than the binomial test at alpha = 0.001 needs, every time."""
    count = 400
    model, w, xs, margins = _problem(count, seed=6)
    theta = _anisotropic_theta(4) / 8 if anisotropic else 0.05
    theta_t = theta if isinstance(theta, torch.Tensor) else torch.full(SHAPE, theta)
    p_true = norm.cdf(margins.abs().numpy() / float(torch.linalg.vector_norm(theta_t * w)))
    far = [i for i in range(count) if p_true[i] > 0.999]
    assert len(far) >= 40
    predictions = predict_many(
        model,
        xs[far],
        [_law(theta)] * len(far),
        1000,
        0.001,
        2000,
        [input_generator(0, i, "cpu", Stream.predict) for i in far],
    )
    assert predictions == [int(margins[i] > 0) for i in far]


def _exact_level(n: int, alpha: float) -> float:
    """P(PREDICT answers) for two classes at pA = 1/2: the exact size of the two-sided binomial
    test of the top count at level alpha, under Binomial(n, 1/2)."""
    answers = [binomtest(max(k, n - k), n, 0.5).pvalue <= alpha for k in range(n + 1)]
    return float(sum(binom.pmf(k, n, 0.5) for k in range(n + 1) if answers[k]))


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_predict_on_the_boundary_answers_at_the_binomial_tests_level(alpha):
    """x on the decision boundary of the linear model (margin 0): every vote is a fair coin,
    pA = 1/2 exactly. PREDICT then answers (does not abstain) exactly when the binomial test
    rejects, with probability the test's exact level, and abstains otherwise."""
    n, repetitions = 100, 3000
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8))
    model = Linear2(w, 0.0)  # class 1 iff w.(x + noise) > 0; at x = 0 a fair coin
    xs = torch.zeros((repetitions, *SHAPE))
    generators = [input_generator(11, i, "cpu", Stream.predict) for i in range(repetitions)]
    predictions = np.array(
        predict_many(model, xs, [_law(0.3)] * repetitions, n, alpha, 10_000, generators)
    )
    level = _exact_level(n, alpha)
    assert 0.6 * alpha < level <= alpha  # the discrete test is a little conservative
    answered = int((predictions != ABSTAIN).sum())
    low, high = binom.ppf(1e-4 / 2, repetitions, level), binom.ppf(1 - 1e-4 / 2, repetitions, level)
    assert low <= answered <= high, (answered, repetitions * level)
    # the same check tells a wrong level apart: a test at twice the level would fail it
    assert not low <= repetitions * 2 * level <= high
    # answers are wrong half the time: both classes, in about equal numbers
    ones = int((predictions == 1).sum())
    assert binom.ppf(1e-4 / 2, answered, 0.5) <= ones <= binom.ppf(1 - 1e-4 / 2, answered, 0.5)


def test_predict_many_equals_one_at_a_time():
    model, _, xs, _ = _problem(5, seed=7)
    thetas = [0.3, _anisotropic_theta(2), 0.9, _anisotropic_theta(3), 2.0]
    laws = [_law(theta, "l1") for theta in thetas]
    one_by_one = [
        predict(model, xs[i], laws[i], 300, 0.01, 128, input_generator(3, i, "cpu"))
        for i in range(5)
    ]
    together = predict_many(
        model, xs, laws, 300, 0.01, 128, [input_generator(3, i, "cpu") for i in range(5)]
    )
    assert together == one_by_one
    assert ABSTAIN in one_by_one or len(set(one_by_one)) > 1  # not a trivial answer


@pytest.mark.cuda
def test_certify_on_cuda_matches_cpu_statistics():
    model, w, xs, margins = _problem(4)
    device = torch.device("cuda")
    model_cuda = Linear2(w.to(device), model.b)
    for i in range(4):
        cert = certify(
            model_cuda,
            xs[i].to(device),
            _law(torch.full(SHAPE, 0.25, device=device)),
            Sampling(100, 20_000, 0.001, 5000),
            input_generator(0, i, device),
        )
        scale = float(torch.linalg.vector_norm(0.25 * w))
        p_true = float(norm.cdf(abs(float(margins[i])) / scale))
        assert cert.p_a_lower <= p_true + 1e-9 or cert.prediction == ABSTAIN


# ---------------------------------------------------------------------------------------------
# several inputs per forward pass (certify_many / sample_counts_many)


class BatchSizes(nn.Module):
    """Wraps a model and records the batch size of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        return self.model(x)


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("batch_size", [64, 250, 1000, 5000])
def test_certify_many_equals_one_at_a_time(norm_name, batch_size):
    model, _, xs, _ = _problem(5, seed=4)
    thetas = [0.3, _anisotropic_theta(2), 0.5, _anisotropic_theta(3), 0.2]
    laws = [_law(theta, norm_name) for theta in thetas]
    sampling = Sampling(100, 1234, 0.001, batch_size)
    one_by_one = [
        certify(model, xs[i], laws[i], sampling, input_generator(9, i, "cpu")) for i in range(5)
    ]
    together = certify_many(
        model, xs, laws, sampling, [input_generator(9, i, "cpu") for i in range(5)]
    )
    assert together == one_by_one


def test_sample_counts_many_equals_sample_counts_stage_by_stage():
    model, _, xs, _ = _problem(3, seed=5)
    law = _law(_anisotropic_theta())
    counts = sample_counts_many(
        model,
        xs,
        [law] * 3,
        (37, 501),
        128,
        [input_generator(1, i, "cpu") for i in range(3)],
    )
    assert counts.shape == (3, 2, 2) and counts.dtype == torch.int64
    for i in range(3):
        stream = input_generator(1, i, "cpu")
        first = sample_counts(model, xs[i], law, 37, 128, stream)
        second = sample_counts(model, xs[i], law, 501, 128, stream, 2)
        assert torch.equal(counts[i, 0], first) and torch.equal(counts[i, 1], second)


def test_short_chunks_of_several_inputs_share_forward_passes():
    model, _, xs, _ = _problem(10, seed=6)
    recorder = BatchSizes(model)
    sampling = Sampling(100, 1000, 0.001, 1000)
    certify_many(
        recorder, xs, [_law(0.25)] * 10, sampling, [input_generator(0, i, "cpu") for i in range(10)]
    )
    # the ten selection stages fill one pass; each estimation stage is a full pass of its own
    assert recorder.sizes == [1000] * 11
    recorder.sizes.clear()
    certify(recorder, xs[0], _law(0.25), sampling, input_generator(0, 0, "cpu"))
    assert recorder.sizes == [100, 1000]  # one input alone: as before


def test_forward_passes_keep_each_inputs_chunks_in_order():
    for count, nums, batch in [(7, (100, 2345), 300), (3, (10, 10, 999), 64), (4, (1000,), 1000)]:
        passes = _forward_passes(count, nums, batch)
        assert all(sum(c.size for c in chunks) <= batch for chunks in passes)
        for item in range(count):
            seen = [(c.stage, c.size) for chunks in passes for c in chunks if c.item == item]
            expected = [(s, size) for s, num in enumerate(nums) for size in chunk_sizes(num, batch)]
            assert seen == expected


def test_chunk_sizes_and_group_size():
    assert chunk_sizes(2345, 1000) == [1000, 1000, 345]
    assert chunk_sizes(100, 1000) == [100]
    assert chunk_sizes(0, 1000) == []
    assert inputs_per_group(100, 10_000, 1000) == 10  # ten selection stages fill a pass
    assert inputs_per_group(100, 100_000, 1000) == 1  # 1 short pass in 101: not worth a group
    assert inputs_per_group(1000, 2000, 1000) == 1  # every chunk is already a full pass
    assert inputs_per_group(100, 1000, 10_000) == 10
    assert inputs_per_group(1, 1, 10**6) == MAX_INPUTS_PER_GROUP


def test_certify_many_of_no_inputs():
    model, _, _, _ = _problem(1)
    sampling = Sampling(10, 10, 0.001, 8)
    assert certify_many(model, torch.empty((0, *SHAPE)), [], sampling, []) == []
    with pytest.raises(ValueError, match="one law and one generator per input"):
        certify_many(model, torch.zeros((2, *SHAPE)), [_law(0.25)], sampling, [])


# ---------------------------------------------------------------------------------------------
# sequential certification


def _sequential_plan(cap: int, alpha: float, radius_mode: bool) -> SequentialPlan:
    return SequentialPlan(cap=cap, alpha=alpha, p_needed=(0.5,) if radius_mode else None)


def _exact_gap(norm_name: str, margin: float, theta_w: torch.Tensor) -> float:
    """The largest gap whose region lies on the input's side of the decision plane."""
    rate = (
        float(torch.linalg.vector_norm(theta_w))
        if norm_name == "l2"
        else float(theta_w.abs().max())
    )
    return abs(margin) / rate


@pytest.mark.slow
@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("radius_mode", [True, False], ids=["radius", "adaptive"])
def test_sequential_certificates_are_never_larger_than_exact_beyond_alpha(norm_name, radius_mode):
    # A large alpha and inputs crowded near the decision threshold make false certificates
    # frequent enough to count: their rate must stay within a binomial test of alpha.
    count, alpha, theta = 400, 0.1, 0.25
    g = torch.Generator().manual_seed(5)
    w = torch.randn(SHAPE, generator=g) / 8
    scale = float(torch.linalg.vector_norm(theta * w))
    xs = torch.rand((count, *SHAPE), generator=g)
    base = xs.flatten(1) @ w.flatten()
    # margins such that pA sits around the probability radius 0.25 needs, for l2
    wanted = torch.linspace(0.8, 1.4, count) * scale
    b_shift = wanted - base
    plan = _sequential_plan(4000, alpha, radius_mode)
    false, certified = 0, 0
    for i in range(count):
        model = Linear2(w, float(b_shift[i]))
        margin = float(wanted[i])
        needed = None
        if radius_mode:
            r = 0.25
            p = norm.cdf(r / theta) if norm_name == "l2" else (1 + r / theta) / 2
            needed = np.array([[0.5, p]])
        [cert] = certify_sequential_many(
            model, xs[i : i + 1], [_law(theta, norm_name)], Sampling(n_selection=50, batch_size=1000),
            plan, [input_generator(0, i, "cpu")], needed,
        )  # fmt: skip
        assert cert.stop is not None and cert.n_estimation <= 4000
        if cert.prediction == ABSTAIN:
            continue
        certified += 1
        truth = int(margin > 0)
        if cert.prediction != truth or cert.gap > _exact_gap(norm_name, margin, theta * w):
            false += 1
    assert certified > count // 4
    assert false <= binom.ppf(1 - 1e-4, certified, alpha), (false, certified)


def test_sequential_group_equals_one_at_a_time_and_is_deterministic():
    model, _, xs, _ = _problem(12, seed=7)
    laws = [_law(0.25)] * 6 + [_law(_anisotropic_theta(2))] * 6
    plan = _sequential_plan(20_000, 0.001, radius_mode=False)
    sampling = Sampling(n_selection=100, batch_size=700)  # the cap and alpha come from the plan

    def generators():
        return [input_generator(3, i, "cpu") for i in range(12)]

    group = certify_sequential_many(model, xs, laws, sampling, plan, generators())
    alone = [
        certify_sequential_many(model, xs[i : i + 1], [law], sampling, plan, [generators()[i]])[0]
        for i, law in enumerate(laws)
    ]
    assert group == alone
    assert certify_sequential_many(model, xs, laws, sampling, plan, generators()) == group


def test_sequential_radius_mode_stops_early_and_reports_its_bound():
    # a far input (pA ~ 1) is certified at the first sufficient look; its radius is exactly
    # sigma * Phi^-1 of the reported bound, which the confidence sequence gives for its counts
    model, w, xs, margins = _problem(40, seed=3)
    far = int(margins.abs().argmax())
    plan = _sequential_plan(100_000, 0.001, radius_mode=True)
    needed = np.array([[0.5, norm.cdf(0.25 / 0.25)]])
    [cert] = certify_sequential_many(
        model, xs[far : far + 1], [_law(0.25)], Sampling(n_selection=100, batch_size=1000), plan,
        [input_generator(0, far, "cpu")], needed,
    )  # fmt: skip
    assert cert.stop == "certified" and cert.n_estimation < 1000
    assert cert.p_a_lower == pytest.approx(cs_lower(cert.n_a, cert.n_estimation, 0.001), abs=0)
    assert cert.radius == pytest.approx(0.25 * norm.ppf(cert.p_a_lower), rel=1e-12)
    assert cert.radius >= 0.25


# CUDA (benchmarks/gpu_check.sh runs these; skipped without a CUDA device)


class Linear64(nn.Module):
    """A 3-class linear classifier computed in float64.

    The noisy input is the same fp32 tensor on every device (elementwise fp32 ops are correctly
    rounded everywhere); the logits then differ between devices only by float64 summation
    order, ~1e-16, far below the gaps between logits of continuous noise: the argmax -- the vote
    -- is the same on the CPU and on CUDA.
    """

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        self.register_buffer("w", torch.randn(3, 64, generator=generator, dtype=torch.float64))
        self.register_buffer("b", torch.randn(3, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double().flatten(1) @ self.w.T + self.b


@pytest.fixture
def host_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every generator's noise is drawn on the host by a CPU twin seeded like it and copied to
    the generator's device: the very same noise on the CPU and on CUDA, consumed in the
    package's own chunks."""
    draw = noise_module.draw_base_noise_
    twins: dict[int, tuple[torch.Generator, torch.Generator]] = {}  # keeps generators alive

    def from_host(out: torch.Tensor, norm_name: str, generator: torch.Generator) -> torch.Tensor:
        if id(generator) not in twins:
            twin = torch.Generator().manual_seed(generator.initial_seed())
            twins[id(generator)] = (generator, twin)
        host = torch.empty(out.shape, dtype=out.dtype)
        draw(host, norm_name, twins[id(generator)][1])
        return out.copy_(host)

    monkeypatch.setattr(noise_module, "draw_base_noise_", from_host)


def _on(device: torch.device, theta):
    return theta.to(device) if isinstance(theta, torch.Tensor) else theta


@pytest.mark.cuda
@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("anisotropic", [False, True])
def test_cuda_votes_equal_cpu_votes_with_the_same_noise(host_noise, norm_name, anisotropic):
    xs = torch.rand((4, *SHAPE), generator=torch.Generator().manual_seed(8))
    theta = _anisotropic_theta() if anisotropic else 0.3
    cuda = torch.device("cuda")

    def votes(device: torch.device) -> torch.Tensor:
        model = Linear64().to(device)
        streams = [input_generator(3, i, device) for i in range(4)]
        law = _law(_on(device, theta), norm_name)
        counts = sample_counts_many(model, xs.to(device), [law] * 4, (100, 2345), 500, streams)
        return counts.cpu()

    def certificates(device: torch.device):
        model = Linear64().to(device)
        streams = [input_generator(3, i, device) for i in range(4)]
        law = _law(_on(device, theta), norm_name)
        return certify_many(
            model, xs.to(device), [law] * 4, Sampling(100, 2345, 0.001, 500), streams
        )

    on_cpu = votes(torch.device("cpu"))
    mixed = (on_cpu[:, 1] > 0).sum(dim=1) >= 2  # inputs whose votes went to several classes
    assert int(mixed.sum()) >= 2, "noise too weak to mix the classes: a vacuous comparison"
    assert torch.equal(votes(cuda), on_cpu)
    for a, b in zip(certificates(torch.device("cpu")), certificates(cuda), strict=True):
        assert (a.prediction, a.n_a, a.p_a_lower, a.gap, a.min_theta) == (
            b.prediction,
            b.n_a,
            b.p_a_lower,
            b.gap,
            b.min_theta,
        )
        # exp(mean(log theta)): a float64 reduction, its order differs between devices
        assert a.geomean_theta == pytest.approx(b.geomean_theta, rel=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("batch_size", [64, 1000])
def test_certify_many_equals_one_at_a_time_on_cuda(norm_name, batch_size):
    cuda = torch.device("cuda")
    model = Linear64().to(cuda)
    xs = torch.rand((5, *SHAPE), generator=torch.Generator().manual_seed(4)).to(cuda)
    thetas = [0.3, _anisotropic_theta(2), 0.5, _anisotropic_theta(3), 0.2]
    laws = [_law(_on(cuda, theta), norm_name) for theta in thetas]
    sampling = Sampling(100, 1234, 0.001, batch_size)
    one_by_one = [
        certify(model, xs[i], laws[i], sampling, input_generator(9, i, cuda)) for i in range(5)
    ]
    together = certify_many(
        model, xs, laws, sampling, [input_generator(9, i, cuda) for i in range(5)]
    )
    assert together == one_by_one
    assert len({cert.n_a for cert in together}) > 1  # the inputs really differ


@contextlib.contextmanager
def synchronizations() -> Iterator[list[str]]:
    """Collects a message for each synchronizing CUDA operation (copies to the host, ``.item()``,
    stream waits) run inside the block, through ``torch.cuda.set_sync_debug_mode("warn")``."""
    found: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))


@pytest.mark.cuda
def test_sampling_loop_never_waits_for_the_device_and_certify_waits_once():
    cuda = torch.device("cuda")
    model = Linear64().to(cuda)
    xs = torch.rand((8, *SHAPE), generator=torch.Generator().manual_seed(5)).to(cuda)
    theta_map = _anisotropic_theta().to(cuda)
    warm_up = Sampling(100, 1000, 0.001, 100)
    certify(model, xs[0], _law(0.25), warm_up, input_generator(0, 0, cuda))

    # the loop itself: 2 x 101 forward passes, and any host synchronization raises
    streams = [input_generator(0, i, cuda) for i in range(2)]
    torch.cuda.set_sync_debug_mode("error")
    try:
        counts = sample_counts_many(
            model, xs[:2], [_law(0.25), _law(theta_map)], (100, 10_000), 100, streams
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert counts.sum().item() == 2 * 10_100

    def waits(n_estimation: int, batch_size: int, theta) -> int:
        stream = input_generator(0, 1, cuda)
        with synchronizations() as found:
            sampling = Sampling(100, n_estimation, 0.001, batch_size)
            certify(model, xs[1], _law(theta), sampling, stream)
        return len(found)

    # the count does not grow with the number of batches: 2 passes vs 201 passes
    few, many = waits(1000, 1000, 0.25), waits(20_000, 100, 0.25)
    assert few == many == 1  # the votes' one copy to the host
    # a per-pixel theta adds its min and geometric mean, once per input, not per batch
    few_map, many_map = waits(1000, 1000, theta_map), waits(20_000, 100, theta_map)
    assert few_map == many_map <= 3

    # a group of inputs sharing forward passes: one wait for the whole group
    streams = [input_generator(0, i, cuda) for i in range(8)]
    with synchronizations() as found:
        certify_many(model, xs, [_law(0.25)] * 8, Sampling(100, 1000, 0.001, 1000), streams)
    assert len(found) == 1


def test_sampling_and_optimization_code_never_hard_codes_cuda():
    """Devices come from the inputs and ``--device``; a ``.cuda()`` would pin work to GPU 0."""
    package = Path(ancer_cli.__file__).parent
    for path in [
        *sorted((package / "core").glob("*.py")),
        package / "certify.py",
        package / "optimize.py",
        package / "train.py",
    ]:
        assert ".cuda(" not in path.read_text(), f"{path} hard-codes .cuda()"


# The package against the faithful reference loop (benchmarks/reference.py, Cohen et al.'s
# certify loop): identical votes with the same noise, the same certified accuracy with free seeds

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(scope="module")
def reference():
    """``benchmarks/reference.py``, loaded from its file (the benchmarks are no package)."""
    spec = importlib.util.spec_from_file_location("reference", BENCHMARKS / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Linear3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 64, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_reference_and_package_give_identical_votes_with_the_same_noise(
    reference, norm_name, per_pixel
):
    model = Linear3()
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1)) - 0.5
    theta = torch.linspace(0.1, 0.9, 64).view(1, 8, 8) if per_pixel else 0.4
    smooth = reference.CohenSmooth(model, 3, theta, norm_name, input_generator(0, 7, "cpu"))
    prediction, gap, selection, estimation = smooth.certify(x, 30, 777, 0.001, 100)
    stream = input_generator(0, 7, "cpu")
    law = _law(theta, norm_name)
    assert np.array_equal(selection, sample_counts(model, x, law, 30, 100, stream).numpy())
    assert np.array_equal(estimation, sample_counts(model, x, law, 777, 100, stream).numpy())
    cert = certify(model, x, law, Sampling(30, 777, 0.001, 100), input_generator(0, 7, "cpu"))
    assert (cert.prediction, cert.gap) == (prediction, pytest.approx(gap, rel=1e-12))


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _random_net(arch: str, dataset: str) -> tuple[nn.Module, int, tuple[int, ...]]:
    """A benchmarked architecture with seeded random weights; its classes and input shape."""
    info = dataset_info(dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, info)
    return _frozen(model), info.num_classes, tuple(info.input_shape)


@functools.cache
def _trained_digits_cnn(device_name: str, epochs: int) -> nn.Module:
    """A digits cnn trained under noise (sigma 0.25) for a few epochs: seconds on a CPU."""
    device = torch.device(device_name)
    data = load_dataset("digits", "train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("cnn", data.info).to(device)
    images = torch.stack([data.dataset[i][0] for i in range(len(data.dataset))]).to(device)
    labels = torch.tensor([data.dataset[i][1] for i in range(len(data.dataset))], device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), device=device, generator=generator)
        for start in range(0, len(order), 64):
            chosen = order[start : start + 64]
            noise = torch.randn(images[chosen].shape, device=device, generator=generator)
            loss = nn.functional.cross_entropy(model(images[chosen] + 0.25 * noise), labels[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return _frozen(model)


def _exact_dtype(device: torch.device) -> torch.dtype:
    """float32 on the CPU; float64 on CUDA, where a packed pass of another batch size may pick
    another convolution algorithm (TF32 included): float64 keeps the logits' rounding far below
    the gaps between them, so the votes stay comparable bit for bit."""
    return torch.float64 if device.type == "cuda" else torch.float32


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize(
    ("model_name", "n0", "n", "batch"),
    [
        ("cnn", 10, 50, 16),
        ("resnet20", 4, 12, 8),
        pytest.param("trained cnn", 20, 200, 64, marks=pytest.mark.slow),
    ],
)
def test_votes_equal_the_reference_loop_on_the_benchmarked_nets(
    reference, model_name, n0, n, batch, device_name
):
    """The reference, ``certify``, ``sample_counts`` and ``sample_counts_many`` fed the same
    per-input streams give identical vote counts (and certificates), for scalar and per-pixel
    theta, l2 and l1: the benchmark's cnn (digits) and resnet20 (CIFAR) with random weights, and
    a cnn trained on digits."""
    device = torch.device(device_name)
    dtype = _exact_dtype(device)
    if model_name == "trained cnn":
        model, num_classes, shape = copy.deepcopy(_trained_digits_cnn(device_name, 2)), 10, SHAPE
    else:
        model, num_classes, shape = _random_net(
            model_name, "digits" if model_name == "cnn" else "cifar10"
        )
    model = model.to(device=device, dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(1)
    xs = torch.rand((3, *shape), device=device, generator=generator, dtype=dtype)
    theta_map = 0.1 + 0.4 * torch.rand(shape, device=device, generator=generator, dtype=dtype)
    for label, theta, norm_name in (
        ("l2 scalar", 0.25, "l2"),
        ("l2 per-pixel", theta_map, "l2"),
        ("l1 per-pixel", theta_map, "l1"),
    ):
        expected = []
        law = _law(theta, norm_name, shape=shape)
        for i, x in enumerate(xs):
            smooth = reference.CohenSmooth(
                model, num_classes, theta, norm_name, input_generator(0, i, device)
            )
            prediction, gap, selection, estimation = smooth.certify(x, n0, n, 0.001, batch)
            expected.append((selection, estimation))
            stream = input_generator(0, i, device)
            ours = sample_counts(model, x, law, n0, batch, stream, num_classes)
            assert np.array_equal(selection, ours.cpu().numpy()), label
            ours = sample_counts(model, x, law, n, batch, stream, num_classes)
            assert np.array_equal(estimation, ours.cpu().numpy()), label
            sampling = Sampling(n0, n, 0.001, batch)
            cert = certify(model, x, law, sampling, input_generator(0, i, device))
            assert cert.prediction == prediction, label
            assert cert.gap == pytest.approx(gap, rel=1e-12), label
        many = sample_counts_many(
            model,
            xs,
            [law] * len(xs),
            (n0, n),
            batch,
            [input_generator(0, i, device) for i in range(len(xs))],
        ).cpu()
        for i, (selection, estimation) in enumerate(expected):
            assert np.array_equal(selection, many[i, 0].numpy()), label
            assert np.array_equal(estimation, many[i, 1].numpy()), label


@pytest.mark.slow
@pytest.mark.parametrize("device_name", DEVICES)
def test_certified_accuracy_with_free_seeds_agrees_with_the_reference(reference, device_name):
    """Each with its own random stream (the package seeded per input, the reference the global
    one), the package and the reference certify the same trained digits cnn on the same test
    inputs to the same certified accuracy within sampling error (two-proportion z under 3)."""
    device = torch.device(device_name)
    inputs, n, sigma = 20, 200, 0.25
    model = _trained_digits_cnn(device_name, 2)
    test = load_dataset("digits", "test")
    radii = (0.0, 0.25, 0.5)
    hits = {"reference": np.zeros(len(radii)), "ancer": np.zeros(len(radii))}
    xs = torch.stack([test.dataset[i][0] for i in range(inputs)]).to(device)
    labels = [int(test.dataset[i][1]) for i in range(inputs)]
    certificates = certify_many(
        model,
        xs,
        [_law(sigma)] * inputs,
        Sampling(100, n, 0.001, 1000),
        [input_generator(0, i, device) for i in range(inputs)],
    )
    smooth = reference.CohenSmooth(model, 10, sigma, "l2")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(12345)  # the reference's global stream
        for i in range(inputs):
            prediction, gap, _, _ = smooth.certify(xs[i], 100, n, 0.001, 1000)
            for k, radius in enumerate(radii):
                hits["reference"][k] += prediction == labels[i] and sigma * gap >= radius
                cert = certificates[i]
                hits["ancer"][k] += cert.prediction == labels[i] and cert.radius >= radius
    z = []
    for k in range(len(radii)):
        p1, p2 = hits["reference"][k] / inputs, hits["ancer"][k] / inputs
        pooled = (p1 + p2) / 2
        se = math.sqrt(max(2 * pooled * (1 - pooled) / inputs, 1e-12))
        z.append((p2 - p1) / se)
    assert all(abs(value) < 3 for value in z), (hits, z)


# ---------------------------------------------------------------------------------------------
# sound sampling (ancer_cli.core.sound): the certificate pays the noise's budget tau


def _grid_problem(count: int, seed: int = 0):
    model, _, xs, _ = _problem(count, seed)
    return model, torch.round(xs * 255) / 255


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("anisotropic", [False, True])
def test_sound_certificates_pay_the_budget(norm_name, anisotropic):
    from ancer_cli.core.bounds import clopper_pearson_lower, gap_from_p_lower
    from ancer_cli.core.radii import min_theta
    from ancer_cli.core.sound import sound_theta, total_variation_budget

    model, xs = _grid_problem(4)
    theta = _anisotropic_theta() if anisotropic else 0.25
    alpha, n = 0.001, 500
    generators = [input_generator(0, i, "cpu") for i in range(len(xs))]
    law, sampling = _law(theta, norm_name, 255), Sampling(50, n, alpha, 128)
    group = certify_many(model, xs, [law] * 4, sampling, generators)
    stated = sound_theta(theta, norm_name, 255)
    tau = total_variation_budget(stated, norm_name, 255, SHAPE)
    assert (tau > 0) == (norm_name == "l2")
    for i, certificate in enumerate(group):
        assert certificate.tau == tau
        plain = clopper_pearson_lower(certificate.n_a, n, alpha)
        assert certificate.p_a_lower == max(0.0, plain - tau)
        assert certificate.min_theta == min_theta(stated)
        if not certificate.abstained:
            assert certificate.gap == gap_from_p_lower(plain - tau, norm_name)
        # one at a time: the same noise, the same certificate
        alone = certify(model, xs[i], law, sampling, input_generator(0, i, "cpu"))
        assert alone == certificate
    off_grid = xs[0] + 0.1 / 255
    with pytest.raises(ValueError, match="grid"):
        certify(model, off_grid, law, Sampling(10, 10, alpha, 8), generators[0])


def test_sound_sequential_certificates_pay_the_budget():
    from ancer_cli.core.sound import total_variation_budget

    _, xs = _grid_problem(3)
    model = Constant([0.0, 1.0])
    plan = SequentialPlan(cap=2000, alpha=0.001)
    runs = {}
    for sound in (None, 255):
        generators = [input_generator(0, i, "cpu") for i in range(len(xs))]
        laws = [_law(0.25, "l2", sound)] * 3
        sampling = Sampling(n_selection=20, batch_size=256)
        runs[sound] = certify_sequential_many(model, xs, laws, sampling, plan, generators)
    tau = total_variation_budget(0.25, "l2", 255, SHAPE)
    for plain, sound in zip(runs[None], runs[255], strict=True):
        assert sound.tau == tau and plain.tau == 0.0
        assert (sound.n_a, sound.n_estimation, sound.stop) == (
            plain.n_a,
            plain.n_estimation,
            plain.stop,
        )
        assert sound.p_a_lower == pytest.approx(plain.p_a_lower - tau, abs=1e-15)


def test_sound_predict_draws_on_the_grid():
    model, xs = _grid_problem(3)
    generators = [input_generator(0, i, "cpu", Stream.predict) for i in range(len(xs))]
    law = _law(0.25, "l2", 255)
    grouped = predict_many(model, xs, [law] * 3, 200, 0.001, 64, generators)
    for i, prediction in enumerate(grouped):
        generator = input_generator(0, i, "cpu", Stream.predict)
        assert predict(model, xs[i], law, 200, 0.001, 64, generator) == prediction
