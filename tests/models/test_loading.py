"""Black-box model files: TorchScript archives and torch.export programs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ancer_cli.artifacts import sha256_file
from ancer_cli.errors import ModelError
from ancer_cli.models import (
    load_model,
    read_checkpoint,
)
from tests.models.fakes import CPU, trained_like
from tests.toys import TinyClassifier

# ---------------------------------------------------------------------------------------------
# TorchScript and torch.export


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.save` is deprecated:FutureWarning")
def test_torchscript_model(tmp_path: Path, digits_batch: torch.Tensor) -> None:
    model = trained_like(TinyClassifier())
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path, CPU)
    assert loaded.kind == "torchscript" and loaded.arch is None and loaded.checkpoint is None
    assert loaded.sha256 == sha256_file(path)
    assert not loaded.module.training
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))
    with pytest.raises(ModelError, match="TorchScript archive, which carries its own architecture"):
        load_model(path, CPU, arch="cnn")
    with pytest.raises(ModelError, match="is a TorchScript archive, not an ancer checkpoint"):
        read_checkpoint(path)


def test_torch_export_model(tmp_path: Path, digits_batch: torch.Tensor) -> None:
    model = trained_like(TinyClassifier())
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (digits_batch,), dynamic_shapes=({0: batch},))
    path = tmp_path / "exported.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(path, CPU)
    assert loaded.kind == "export" and loaded.input_shape == (1, 8, 8)
    loaded.module.eval()  # exported graphs refuse eval(); the wrapper must not
    assert all(not parameter.requires_grad for parameter in loaded.module.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.module(digits_batch), model(digits_batch))
        assert loaded.module(digits_batch[:1]).shape == (1, 4)


def test_torch_export_with_fixed_batch_is_refused(tmp_path: Path) -> None:
    program = torch.export.export(TinyClassifier().eval(), (torch.rand(2, 1, 8, 8),))
    path = tmp_path / "static.pt2"
    torch.export.save(program, str(path))
    with pytest.raises(ModelError, match="fixed batch size of 2; .*re-export with dynamic_shapes"):
        load_model(path, CPU)
