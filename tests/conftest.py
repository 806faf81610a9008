"""Fixtures and hooks of the whole suite: a tiny digits model and ANCER thetas, made through the
CLI once per session; the helpers they use live in ``tests/helpers.py``.

Everything runs on the CPU with tiny sample counts, so the whole CLI suite stays fast. Tests
marked ``cuda`` run on a CUDA device (``bash benchmarks/gpu_check.sh`` runs them all) and are
skipped without one. This file and the modules with ``cuda`` tests import nothing beyond the
package's run-time dependencies and pytest (no matplotlib, no hypothesis), so that they run
on a bare GPU machine.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer.testing
from typer.main import get_command

from tests.helpers import (
    OPTIMIZE_FAST,
    OPTIMIZED_INPUTS,
    Trained,
    ok,
    on_device,
    save_colour_model,
    train_model,
)

# The models here are tiny: one thread is as fast as two on an idle machine and many times
# faster when other processes compete for the cores (OpenMP threads spin while they wait).
# Results that must be bit-identical are compared at equal threads per process: float reductions
# depend on the thread count on some CPUs, so every process the tests start (the CLI, torchrun's
# workers) inherits one thread unless a test sets another on purpose.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def one_click_command_per_app() -> Iterator[None]:
    """CliRunner.invoke(app, ...) builds the click command of a Typer app anew on every call, from
    the signature of every command function: about 0.15 s for ancer's app, a quarter of the time
    of the CLI tests. Build it once per app (the commands are registered on import)."""
    built = {}

    def command(app: typer.Typer):
        if app not in built:
            built[app] = get_command(app)
        return built[app]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(typer.testing, "_get_command", command)
        yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A digits ``cnn`` trained 3 epochs with the defaults (seed 0, l2, sigma 0.25), and the run."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return Trained(path, train_model(path))


@pytest.fixture(scope="session")
def model_path(trained: Trained) -> Path:
    """The session's trained digits model file."""
    return trained.path


@pytest.fixture(scope="session")
def thetas_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """ANCER thetas (and the isotropic stage) of the first 6 digits test inputs."""
    path = tmp_path_factory.mktemp("thetas") / "thetas"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        path,
        "--max",
        OPTIMIZED_INPUTS,
        *OPTIMIZE_FAST,
    )
    return path


@pytest.fixture
def thetas_copy(tmp_path: Path, thetas_dir: Path) -> Path:
    """A private, writable copy of the session's thetas folder."""
    copy = tmp_path / "thetas"
    shutil.copytree(thetas_dir, copy)
    return copy


@pytest.fixture(scope="session")
def cuda_thetas_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """ANCER thetas (and the isotropic stage) of the first 6 digits test inputs, optimized on
    CUDA (for ``cuda`` tests only)."""
    path = tmp_path_factory.mktemp("cuda-thetas") / "thetas"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        path,
        "--max",
        OPTIMIZED_INPUTS,
        *on_device(OPTIMIZE_FAST, "cuda"),
    )
    return path


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class black-box model (like a CIFAR-10 classifier) of :class:`ColourClassifier`."""
    return save_colour_model(tmp_path_factory.mktemp("colour") / "colour10.pt", 10)
