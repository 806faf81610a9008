"""``ancer predict`` end to end: fixed sigma and per-input thetas, the file and its sidecar,
determinism, a stream of its own, resume, and ``ancer accuracy`` on what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.law import Noise
from ancer_cli.core.noise import Stream, input_generator
from ancer_cli.core.smoothing import predict
from ancer_cli.data import load_dataset
from ancer_cli.models import load_model
from tests.helpers import OPTIMIZED_INPUTS, assert_domain_error, invoke, ok, write_class_images

HEADER = "idx\tlabel\tpredict\tcorrect\ttime"
FAST = ("--N", "300", "--seed", "0", "--device", "cpu")


def rows(path: Path) -> list[list[str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER
    return [line.split("\t") for line in lines[1:]]


def without_time(path: Path) -> list[list[str]]:
    return [fields[:4] for fields in rows(path)]


def run(*args: object):
    return ok("predict", *FAST, *args)


@pytest.fixture(scope="module")
def fixed(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("predict") / "fixed.csv"
    result = run("--model", model_path, "--sigma", 0.25, "--skip", 3, "--max", 12,
                 "--out", out)  # fmt: skip
    return out, result


def test_fixed_sigma_rows_are_predict_of_each_input(fixed, model_path: Path) -> None:
    out, result = fixed
    found = rows(out)
    assert [int(f[0]) for f in found] == [0, 3, 6, 9]
    data = load_dataset("digits", "test")
    model = load_model(model_path, torch.device("cpu")).module
    for idx, label, prediction, correct, seconds in found:
        x, truth = data.dataset[int(idx)]
        generator = input_generator(0, int(idx), "cpu", Stream.predict)
        law = Noise(Norm.l2, 16).law(0.25, x.shape)  # sound noise on the digits' 1/16 grid
        expected = predict(model, x, law, 300, 0.001, 1000, generator)
        assert (int(label), int(prediction)) == (int(truth), expected)
        assert int(correct) == int(expected == int(truth) and expected != -1)
        assert float(seconds) >= 0 and ":" not in seconds
    assert f"{out}: 4 inputs, accuracy" in result.stdout
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["format"] == "ancer-predictions/1" and sidecar["complete"] is True
    arguments = sidecar["arguments"]
    assert arguments["method"] == "fixed" and arguments["sigma"] == 0.25
    assert (arguments["N"], arguments["alpha"], arguments["skip"], arguments["max"]) == (
        300, 0.001, 3, 12,
    )  # fmt: skip
    assert "N0" not in arguments and "memory" not in arguments
    assert sidecar["totals"]["inputs"] == 4


def test_same_seed_same_rows_other_seed_other_stream(fixed, model_path, tmp_path) -> None:
    out, _ = fixed
    args = ("--model", model_path, "--sigma", 0.25, "--skip", 3, "--max", 12)
    again = tmp_path / "again.csv"
    run(*args, "--out", again)
    assert without_time(again) == without_time(out)
    # near a decision, another seed may change an answer, never a label or an index
    other = tmp_path / "seed.csv"
    run(*args, "--seed", 5, "--out", other)
    assert [f[:2] for f in rows(other)] == [f[:2] for f in rows(out)]


def test_per_input_thetas_with_manifest_defaults(thetas_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ancer.csv"
    result = run("--thetas", thetas_dir, "--skip", 2, "--out", out)
    assert [int(f[0]) for f in rows(out)] == [0, 2, 4]
    assert "ancer thetas from" in result.stderr
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["arguments"]["method"] == "ancer"
    assert sidecar["arguments"]["dataset"] == "digits"
    iso = tmp_path / "iso.csv"
    run("--thetas", thetas_dir / "isotropic", "--out", iso)
    assert len(rows(iso)) == OPTIMIZED_INPUTS


def test_resume_and_force(fixed, model_path: Path, tmp_path: Path) -> None:
    reference, _ = fixed
    args = ("--model", model_path, "--sigma", 0.25, "--skip", 3, "--max", 12)
    out = tmp_path / "p.csv"
    text = reference.read_text()
    out.write_text(text[: text.index("\n", text.index("\n") + 1) + 4])  # header, row 0, a cut
    sidecar = json.loads(Path(f"{reference}.json").read_text())
    Path(f"{out}.json").write_text(json.dumps({**sidecar, "complete": False}))
    result = run(*args, "--out", out, "--resume")
    assert "1 rows kept" in result.stdout
    assert without_time(out) == without_time(reference)
    refused = invoke("predict", *FAST, *args, "--out", out)
    assert_domain_error(refused, str(out), "--force", "--resume")
    run(*args, "--out", out, "--force")
    assert without_time(out) == without_time(reference)


def test_resume_with_a_larger_max_extends_predictions(fixed, model_path: Path, tmp_path) -> None:
    reference, _ = fixed
    args = ("--model", model_path, "--sigma", 0.25, "--skip", 3)
    out = tmp_path / "grown.csv"
    run(*args, "--max", 5, "--out", out)  # indices 0 and 3
    result = run(*args, "--max", 12, "--out", out, "--resume")
    assert "2 rows kept" in result.stdout
    assert without_time(out) == without_time(reference)


def test_accuracy_reads_predictions(fixed, tmp_path: Path) -> None:
    out, _ = fixed
    found = rows(out)
    report = ok("accuracy", out, "--format", "json")
    entry = json.loads(report.stdout)["files"][out.name]
    assert entry["kind"] == "predictions" and entry["certified_accuracy"] == {}
    assert entry["clean_accuracy"] == sum(int(f[3]) for f in found) / len(found)
    assert entry["abstention_rate"] == sum(f[2] == "-1" for f in found) / len(found)
    assert entry["average_certified_radius"] is None and entry["inputs"] == len(found)
    assert "do not apply" in report.stderr
    table = ok("accuracy", out, "--format", "markdown").stdout
    assert "certified accuracy at" not in table and "average certified radius" not in table
    assert "| clean accuracy |" in table and "| abstention rate |" in table
    # Cohen et al.'s predict.py files (time as H:MM:SS.ffffff) read the same way
    cohen = tmp_path / "N_100"
    cohen.write_text(
        "idx\tlabel\tpredict\tcorrect\ttime\n0\t0\t0\t1\t0:00:01.737771\n"
        "100\t2\t2\t1\t0:00:00.158496\n200\t4\t395\t0\t0:00:00.149257\n"
        "1600\t32\t-1\t0\t0:00:00.150587\n"
    )
    entry = json.loads(ok("accuracy", cohen, "--format", "json").stdout)["files"]["N_100"]
    assert (entry["clean_accuracy"], entry["abstention_rate"]) == (0.5, 0.25)
    assert entry["median_time_seconds"] == pytest.approx(0.1545415)


def test_unlabeled_folder(colour_model: Path, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    write_class_images(root / "tmp", 4, 10, count=1)
    (root / "tmp" / "0.png").rename(root / "a.png")
    (root / "tmp").rmdir()
    out = tmp_path / "p.csv"
    result = run("--model", colour_model, "--dataset", "folder", "--data-root", root,
                 "--sigma", 0.1, "--out", out)  # fmt: skip
    assert rows(out)[0][:4] == ["0", "-1", "4", "0"]
    assert "no labels (accuracy not measured)" in result.stdout


def test_help_lists_every_option() -> None:
    text = ok("predict", "--help").stdout
    for option in ("--model", "--thetas", "--sigma", "--N", "--alpha", "--batch-size",
                   "--skip", "--max", "--classes", "--resume", "--force", "--device",
                   "--seed", "--out"):  # fmt: skip
        assert option in text
    assert "--N0" not in text and "--memory" not in text
