"""User architectures given as package.module:factory."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from ancer_cli.errors import ModelError
from ancer_cli.models import (
    build_model,
    load_model,
    save_checkpoint,
)
from tests.models.fakes import CPU, DIGITS, trained_like

# ---------------------------------------------------------------------------------------------
# user factories


USER_MODULE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


def make(num_classes=3):
    return Net(num_classes)


def make_fixed():
    return Net(5)


def not_a_module():
    return 42
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "ancer_test_user_arch"
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    yield name
    sys.modules.pop(name, None)


def test_factory_architecture(tmp_path: Path, user_module: str, digits_batch: torch.Tensor) -> None:
    arch = f"{user_module}:make"
    model = trained_like(build_model(arch, DIGITS))
    assert not isinstance(model, nn.Sequential)  # the user's module normalizes by itself
    assert model.state_dict()["linear.weight"].shape == (10, 64)

    plain = tmp_path / "user_weights.pt"
    torch.save(model.state_dict(), plain)
    loaded = load_model(plain, CPU, arch=arch, info=DIGITS)
    assert loaded.kind == "factory" and loaded.arch == arch
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))

    checkpoint = tmp_path / "user_checkpoint.pt"
    save_checkpoint(
        checkpoint,
        model=model,
        arch=arch,
        info=DIGITS,
        norm="l2",
        sigma=0.5,
        epoch=0,
        optimizer_state=None,
    )
    from_checkpoint = load_model(checkpoint, CPU)
    assert from_checkpoint.kind == "checkpoint" and from_checkpoint.arch == arch
    with torch.no_grad():
        assert torch.equal(from_checkpoint.module(digits_batch), model(digits_batch))


def test_factory_without_num_classes(tmp_path: Path, user_module: str) -> None:
    model = build_model(f"{user_module}:make_fixed", DIGITS)
    assert model.state_dict()["linear.weight"].shape == (5, 64)
    path = tmp_path / "fixed.pt"
    torch.save(model.state_dict(), path)
    assert load_model(path, CPU, arch=f"{user_module}:make_fixed").kind == "factory"


def test_factory_errors(user_module: str) -> None:
    with pytest.raises(
        ModelError, match=r"cannot import module no_such_pkg_xyz\.models \(ModuleNotFoundError"
    ):
        build_model("no_such_pkg_xyz.models:make", DIGITS)
    with pytest.raises(ModelError, match="has no attribute missing"):
        build_model(f"{user_module}:missing", DIGITS)
    with pytest.raises(ModelError, match="returned a int, expected a torch.nn.Module"):
        build_model(f"{user_module}:not_a_module", DIGITS)
    with pytest.raises(ModelError, match="must look like package.module:factory"):
        build_model(":make", DIGITS)
