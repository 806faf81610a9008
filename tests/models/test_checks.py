"""The check that a base classifier is a function of one input: per-input models pass (several
architectures, TorchScript, bf16 autocast), models that read their batch are refused (the
batch-mean reader that forged two certificates, BatchNorm in training mode, an output that
depends on the batch size), and the check is deterministic."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.core.precision import AutocastClassifier
from ancer_cli.data import load_dataset
from ancer_cli.errors import ModelError
from ancer_cli.models import build_model
from ancer_cli.models.checks import BatchCheck, check_inputs, check_per_input
from tests.models.fakes import CIFAR, DIGITS, trained_like
from tests.toys import ColourClassifier, Constant, TinyClassifier, ZeroLogits

NOT_PER_INPUT = r"^model .* is not a function of one input: .* ancer certifies per-input"

SIDE, WATCHED = 28, 600


class BatchMeanReader(nn.Module):
    """Class 1 iff the *batch's* mean over the watched pixels exceeds half a grey level: on a
    batch of noisy copies of one input that mean is the clean value to within 0.001, so x0
    (watched pixels black) and x1 (at 1/255), 0.166 apart, get classes 0 and 1 with pA = 1."""

    def __init__(self, watched: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("watched", watched)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.flatten(1)[:, self.watched].mean()
        hit = (mean > 0.5 / 255).float().expand(x.shape[0])
        return torch.stack([1.0 - hit, hit], dim=1)


class BatchCentred(nn.Module):
    """A linear classifier of ``x - mean(batch)``: the logits of one input alone are the bias."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return self.linear(flat - flat.mean(dim=0, keepdim=True))


class BatchSized(nn.Module):
    """A per-input linear classifier plus a bonus for class 0 that grows with the batch size."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x.flatten(1))
        bonus = torch.zeros_like(logits)
        bonus[:, 0] = 0.05 * x.shape[0]
        return logits + bonus


class Dropped(nn.Module):
    """Dropout left in training mode: the same batch twice gives other logits."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.drop, self.linear = nn.Dropout(0.5), nn.Linear(features, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(x.flatten(1)))


class Bfloat16Inside(nn.Module):
    """``model`` under bf16 autocast inside its own forward: the check cannot undo it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return self.model(x).float()


class OneRow(nn.Module):
    """One row of logits whatever the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((1, 3))


def scripted(module: nn.Module, path: Path) -> nn.Module:
    """``module`` saved as a TorchScript archive and loaded back: a black box, as users give."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        torch.jit.save(torch.jit.script(module), str(path))
        return torch.jit.load(str(path))


def seeded(arch: str, info, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, info)


@pytest.fixture(scope="module")
def digits_inputs() -> torch.Tensor:
    return check_inputs(load_dataset("digits", "test"))


@pytest.fixture(scope="module")
def cifar_inputs() -> torch.Tensor:
    return torch.rand((2, 3, 32, 32), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def forged_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """x0 (600 black pixels on grey 128, all channels) and x1 (the same pixels at 1/255), and
    the watched coordinates."""
    order = torch.randperm(SIDE * SIDE, generator=torch.Generator().manual_seed(7))[:WATCHED]
    x0 = torch.full((SIDE * SIDE,), 128 / 255)
    x0[order] = 0.0
    x1 = x0.clone()
    x1[order] = 1 / 255
    channels = torch.arange(3).repeat_interleave(WATCHED) * SIDE * SIDE
    watched = channels + order.repeat(3)
    pair = torch.stack([x.reshape(1, SIDE, SIDE).expand(3, -1, -1) for x in (x0, x1)])
    return pair, watched


def test_per_input_models_pass(digits_inputs, cifar_inputs, tmp_path: Path) -> None:
    cnn = seeded("cnn", DIGITS).eval()
    for name, model, inputs in [
        ("cnn", cnn, digits_inputs),
        ("cnn bf16", AutocastClassifier(cnn, torch.bfloat16), digits_inputs),
        ("cnn bf16 inside", Bfloat16Inside(cnn), digits_inputs),
        ("resnet20", seeded("resnet20", CIFAR).eval(), cifar_inputs),
        ("tiny, eval", TinyClassifier().eval(), digits_inputs),
        ("colour", scripted(ColourClassifier(10), tmp_path / "colour.pt"), cifar_inputs),
        ("constant", Constant([0.0, 2.0, 1.0]), digits_inputs),
        ("zeros", ZeroLogits(4), digits_inputs),
    ]:
        found = check_per_input(model, inputs, name)
        assert isinstance(found, BatchCheck)
        assert found.forward_passes == 2 + 8 + 2 + 2 and found.items == 32 * 2 + 8 + 32 + 2 * 64
        limit = 0.005 if "inside" in name else 1e-5  # float noise, below 0.02 (bf16: 2^-8)
        assert found.deviation <= limit, (name, found.deviation)


def test_the_batch_mean_reader_is_refused_at_every_seed(forged_pair, tmp_path: Path) -> None:
    pair, watched = forged_pair
    model = scripted(BatchMeanReader(watched), tmp_path / "mean.pt")
    # what certify sees: copies of one input, whatever the batch size, say one class with pA 1
    for x, label in zip(pair, (0, 1), strict=True):
        copies = x + 0.25 * torch.randn((400, *x.shape), generator=torch.Generator().manual_seed(1))
        assert bool((model(copies).argmax(dim=1) == label).all())
    for seed in range(5):
        with pytest.raises(ModelError, match=NOT_PER_INPUT):
            check_per_input(model, pair, "mean.pt", seed=seed)
        with pytest.raises(ModelError, match=NOT_PER_INPUT):
            check_per_input(model, pair[:1], "mean.pt", seed=seed)  # one real input suffices


@pytest.mark.parametrize("seed", range(3))
def test_batchnorm_in_training_mode_is_refused(digits_inputs, cifar_inputs, seed: int) -> None:
    for model, inputs in [
        (TinyClassifier().train(), digits_inputs),
        (seeded("resnet20", CIFAR, seed).train(), cifar_inputs),
        (trained_like(seeded("resnet20", CIFAR), seed).train(), cifar_inputs),
    ]:
        with pytest.raises(ModelError, match=NOT_PER_INPUT) as caught:
            check_per_input(model, inputs, "bn", seed=seed)
        assert "(BatchNorm in training mode or batch statistics?)" in str(caught.value)


def test_models_that_read_the_batch_are_refused(digits_inputs) -> None:
    features = 64
    torch.manual_seed(0)
    for model in (BatchCentred(features), BatchSized(features)):
        with pytest.raises(ModelError, match=NOT_PER_INPUT) as caught:
            check_per_input(model, digits_inputs, "batchy.pt")
        assert "\n" not in str(caught.value)


def test_randomness_and_broken_batches_are_refused(digits_inputs) -> None:
    torch.manual_seed(0)
    with pytest.raises(ModelError, match=r"different logits for the same batch twice .*dropout"):
        check_per_input(Dropped(64).train(), digits_inputs, "dropout.pt")
    one_item = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8)).train()
    with pytest.raises(ModelError, match=r"fails on a batch of 1 input\(s\)"):
        check_per_input(one_item, digits_inputs, "bn1d.pt")
    with pytest.raises(ModelError, match=r"returns \(1, 3\) for a batch of 32 inputs"):
        check_per_input(OneRow(), digits_inputs, "one-row.pt")


def test_the_check_is_deterministic(digits_inputs) -> None:
    model = seeded("cnn", DIGITS).eval()
    first, second = (check_per_input(model, digits_inputs, "cnn") for _ in range(2))
    assert (first.forward_passes, first.items, first.deviation) == (
        second.forward_passes,
        second.items,
        second.deviation,
    )
    centred, messages = BatchCentred(64), []
    for _ in range(2):
        with pytest.raises(ModelError) as caught:
            check_per_input(centred, digits_inputs, "centred")
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
