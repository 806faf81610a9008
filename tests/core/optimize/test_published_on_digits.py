"""ANCER against isotropic data-dependent smoothing on a small model trained on digits."""

from pathlib import Path

import pytest
import torch

from ancer_cli.certify import certify_dataset
from ancer_cli.core.choices import Norm, Sampling
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.optimize.config import AncerConfig, IsotropicConfig
from ancer_cli.core.optimize.published import optimize_ancer, optimize_isotropic
from ancer_cli.data import load_dataset
from ancer_cli.inputs import in_memory_inputs
from ancer_cli.models import load_model
from ancer_cli.settings import CertifyConfig
from ancer_cli.train import TrainConfig, train


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "model.pt"
    train_data, test_data = load_dataset("digits", "train"), load_dataset("digits", "test")
    config = TrainConfig(arch="cnn", epochs=4)
    for _ in train(config, train_data, test_data, torch.device("cpu"), out):
        pass
    return out


@pytest.mark.slow
def test_ancer_proxy_radius_beats_isotropic_radius(digits_model):
    device = torch.device("cpu")
    model = load_model(digits_model, device).module
    data = load_dataset("digits", "test")
    indices = list(range(12))
    x = torch.stack([data.dataset[i][0] for i in indices])
    gens = [input_generator(0, i, device, Stream.isotropic) for i in indices]
    theta_iso = optimize_isotropic(
        model, x, torch.full((12,), 0.25), Norm.l2, IsotropicConfig(iterations=30, samples=32), gens
    )
    gens = [input_generator(0, i, device, Stream.ancer) for i in indices]
    theta = optimize_ancer(
        model, x, theta_iso, Norm.l2, AncerConfig(iterations=30, samples=32), gens
    )
    config = CertifyConfig(Sampling(n_estimation=2000, batch_size=1000))
    seeds = dict.fromkeys(indices, 0)

    def rows(thetas):  # float noise, as the published algorithms were measured
        inputs = in_memory_inputs(model, data, thetas, indices=indices, sound=False)
        return list(certify_dataset(inputs, indices, config, seeds, device, None))

    iso_rows = rows(lambda i: theta_iso[i])
    ancer_rows = rows(lambda i: theta[i])
    iso_radius = sum(r.radius * r.correct for r in iso_rows) / len(indices)
    ancer_proxy = sum(r.radius_proxy * r.correct for r in ancer_rows) / len(indices)
    iso_accuracy = sum(r.correct for r in iso_rows) / len(indices)
    ancer_accuracy = sum(r.correct for r in ancer_rows) / len(indices)
    print(
        f"isotropic: mean radius {iso_radius:.4f}, accuracy@0 {iso_accuracy:.3f}; "
        f"ancer: mean radius_proxy {ancer_proxy:.4f}, accuracy@0 {ancer_accuracy:.3f}"
    )
    assert ancer_proxy > iso_radius
    assert ancer_accuracy >= iso_accuracy - 2 / len(indices)
    # ANCER never shrinks a coordinate below the isotropic start
    assert all((theta[i] >= theta_iso[i]).all() for i in range(12))
