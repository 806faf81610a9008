"""Theta sources and the theta-folder format: one run reads a folder's manifest once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ancer_cli import theta_sources
from ancer_cli.analysis.pictures import read_input_thetas
from ancer_cli.certify import CertifyRequest, plan_certify
from ancer_cli.core.choices import Sampling
from ancer_cli.distributed import SINGLE, Session
from ancer_cli.predict import PredictRequest, plan_predict
from ancer_cli.run.spec import InputsSpec
from ancer_cli.settings import CertifyConfig, PredictConfig

CPU = Session(SINGLE, torch.device("cpu"))


@pytest.fixture
def manifest_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders whose manifest is read from now on, one entry per read."""
    reads: list[Path] = []
    read = theta_sources.read_manifest

    def counting(folder: Path) -> dict | None:
        reads.append(Path(folder))
        return read(folder)

    monkeypatch.setattr(theta_sources, "read_manifest", counting)
    return reads


def test_a_certify_run_reads_the_manifest_once(
    thetas_dir: Path, tmp_path: Path, manifest_reads: list[Path]
) -> None:
    """Planning (defaults from the manifest, then opening the thetas), certifying and the
    memory pass together read ``manifest.json`` once."""
    request = CertifyRequest(
        out=tmp_path / "r.csv",
        inputs=InputsSpec(thetas=thetas_dir, max_index=3),
        config=CertifyConfig(Sampling(20, 200)),
    )
    outcome = plan_certify(request, CPU).execute(CPU)
    assert outcome is not None
    summary = outcome.totals
    assert summary.certified == 3 and summary.memory is not None
    assert manifest_reads == [thetas_dir]


def test_a_predict_run_reads_the_manifest_once(
    thetas_dir: Path, tmp_path: Path, manifest_reads: list[Path]
) -> None:
    request = PredictRequest(
        out=tmp_path / "p.csv",
        inputs=InputsSpec(thetas=thetas_dir, max_index=3),
        config=PredictConfig(num=200),
    )
    summary = plan_predict(request, CPU).execute(CPU)
    assert summary is not None and summary.predicted == 3
    assert manifest_reads == [thetas_dir]


def test_reading_inputs_with_their_thetas_reads_the_manifest_once(
    thetas_dir: Path, manifest_reads: list[Path]
) -> None:
    chosen = read_input_thetas(thetas_dir, [0, 2])
    assert [item.index for item in chosen.inputs] == [0, 2]
    assert manifest_reads == [thetas_dir]
