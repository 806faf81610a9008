"""The certified objective on a small l1 model trained on digits: the thetas it writes never
abstain under the law certification draws where the starting sigma certifies."""

import pytest
import torch

from ancer_cli.core.choices import Norm, Sampling, theta_from_sigma
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import InputStreams, Stream, input_generator
from ancer_cli.core.optimize.config import (
    CertifiedSearchConfig,
    GuardedAncerConfig,
    IsotropicSearchConfig,
)
from ancer_cli.core.optimize.search import optimize_certified
from ancer_cli.core.smoothing import ABSTAIN, certify_many
from ancer_cli.data import load_dataset
from ancer_cli.models import load_model
from ancer_cli.settings import TrainConfig, Training
from ancer_cli.train import train

SIGMA = 0.5
INDICES = [0, 3, 7, 8]
"""inputs whose ANCER thetas, scored on float noise, grow to l1 half-widths of hundreds"""
CONFIG = CertifiedSearchConfig(  # the default schedule with fewer votes per decision
    IsotropicSearchConfig(samples=256), GuardedAncerConfig(samples=32, guard_samples=512)
)


@pytest.fixture(scope="module")
def l1_model(tmp_path_factory) -> torch.nn.Module:
    """RS4A's l1 recipe (stability training at sigma 0.5), 3 epochs."""
    out = tmp_path_factory.mktemp("l1") / "model.pt"
    config = TrainConfig(
        arch="cnn", training=Training.stability, norm=Norm.l1, sigma=SIGMA, epochs=3
    )
    train_data, test_data = load_dataset("digits", "train"), load_dataset("digits", "test")
    for _ in train(config, train_data, test_data, torch.device("cpu"), out):
        pass
    return load_model(out, torch.device("cpu")).module


def _certify(model, x, thetas):
    """CERTIFY with the default, sound noise (the digits' 1/16 grid), as ``ancer certify``."""
    sound = Noise(Norm.l1, 16)
    laws = [sound.law(theta, x.shape[1:]) for theta in thetas]
    generators = [input_generator(1, i, "cpu", Stream.certify) for i in INDICES]
    sampling = Sampling(n_selection=100, n_estimation=1000, batch_size=1000)
    return [c.prediction for c in certify_many(model, x, laws, sampling, generators)]


@pytest.mark.parametrize(
    ("scored_under", "abstains"), [pytest.param(None, True, id="float"), (16, False)]
)
def test_l1_thetas_never_abstain_where_the_start_certifies(l1_model, scored_under, abstains):
    data = load_dataset("digits", "test")
    x = torch.stack([data.dataset[i][0] for i in INDICES])
    start = torch.full((len(INDICES),), theta_from_sigma(SIGMA, Norm.l1))
    fixed = _certify(l1_model, x, list(start))
    assert ABSTAIN not in fixed
    noise = Noise(Norm.l1, scored_under)
    found = optimize_certified(l1_model, x, start, noise, CONFIG, InputStreams(0, INDICES))
    assert found.theta is not None
    predictions = _certify(l1_model, x, list(found.theta))
    # scored on float noise (grid None, as optimize did before it scored on certify's law) the
    # guard keeps thetas whose float votes come from pixels the sound sampler clips away
    assert (ABSTAIN in predictions) == abstains
    if not abstains:
        assert predictions == fixed
        assert found.ancer is not None and bool(found.ancer.guard.accepted.any())
