"""One rule for every output option: missing parent folders are created; a folder that cannot be
made is one ``error:`` line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CERTIFY_FAST, OPTIMIZE_FAST, assert_domain_error, invoke, ok, train_model

RESULTS = (
    "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
    "0\t3\t3\t0.412\t0.953\t1\t0.25\t0:00:02.512345\n"
    "1\t8\t1\t0.6\t0.7\t0\t0.2\t0:00:02.450000\n"
)


@pytest.fixture(scope="module")
def nested_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits model trained one epoch into folders that did not exist."""
    path = tmp_path_factory.mktemp("train") / "new" / "deeper" / "model.pt"
    train_model(path, epochs=1)
    return path


def test_train_creates_the_folder_of_out(nested_model: Path) -> None:
    assert nested_model.is_file()


def test_optimize_creates_the_folders_of_out(nested_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "thetas"
    ok("optimize", "--model", nested_model, "--out", out, "--max", 1, *OPTIMIZE_FAST)
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("command", ["certify", "predict"])
def test_certify_and_predict_create_the_folder_of_out(
    nested_model: Path, tmp_path: Path, command: str
) -> None:
    out = tmp_path / "new" / "deeper" / "rows.tsv"
    fast = CERTIFY_FAST if command == "certify" else ("--N", 100, "--device", "cpu")
    ok(command, "--model", nested_model, "--sigma", 0.25, "--max", 2, "--out", out, *fast)
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("option", ["--plot", "--hist"])
def test_accuracy_creates_the_folder_of_its_pictures(tmp_path: Path, option: str) -> None:
    results = tmp_path / "results.tsv"
    results.write_text(RESULTS)
    picture = tmp_path / "new" / "deeper" / "figure.png"
    ok("accuracy", results, option, picture)
    assert picture.is_file()


def test_show_creates_the_folder_of_out(tmp_path: Path) -> None:
    values = tmp_path / "sigmas.pt"
    torch.save(torch.linspace(0.1, 0.6, 500), values)
    out = tmp_path / "new" / "deeper" / "thetas.png"
    ok("show", "--thetas", values, "--dataset", "digits", "-i", 3, "--out", out)
    assert out.is_file()


def test_a_file_in_the_way_is_one_error_line(tmp_path: Path) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker / "deeper" / "model.pt"
    result = invoke("train", "--epochs", 1, "--device", "cpu", "--out", out)
    assert_domain_error(result, f"cannot create folder {out.parent}")
    results = tmp_path / "results.tsv"
    results.write_text(RESULTS)
    result = invoke("accuracy", results, "--plot", out.with_suffix(".png"))
    assert_domain_error(result, "cannot create folder")
    assert blocker.read_text() == "not a folder"
